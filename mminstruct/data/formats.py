"""MM-Gen's task files and prompt files: load, validate, save — their schemas kept exactly.

Extra keys are only ever added beside MM-Gen's, so a reader that knows MM-Gen's keys alone still
works. LLaVA data files and their records are in ``records.py``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mminstruct.cache import atomic_writer
from mminstruct.errors import ConfigError, DataFileError
from mminstruct.data.images import is_image_path
from mminstruct.data.modes import Mode, parse_mode
from mminstruct.data.records import Problem, Record, paused_gc, read_json_file, validate_record

# ----------------------------------------------------------------------------------------------
# Task files (MM-Gen schema)


@dataclass
class Subgroup:
    keyword: str
    reference_sample_idx: list[int]
    candidate_image_paths: list[str]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"keyword": self.keyword, "reference_sample_idx": list(self.reference_sample_idx),
                "candidate_image_paths": list(self.candidate_image_paths), **self.extra}


@dataclass
class TaskFile:
    """MM-Gen's task file. ``samples`` are relative to ``image_folder``; candidate paths and the
    prompt file's image paths are relative to the input folder."""

    image_folder: str
    dataset_description: str
    subgroups: list[Subgroup]
    samples: Sequence[dict[str, Any]]  # a list, or RecordSamples (made as written)
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {"image_folder": self.image_folder, "dataset_description": self.dataset_description,
                "subgroups": [s.to_json() for s in self.subgroups], "samples": self.samples,
                **self.extra}


TASK_KEYS = ("image_folder", "dataset_description", "subgroups", "samples")


class RecordSamples(Sequence[dict[str, Any]]):
    """Records as task-file samples, each made when read (``Record.to_sample``): a task file of
    150,000 samples is written without a list of 150,000 dicts held beside the records (~120 MiB
    at the peak of the app's Save). Read-only; equal to the list of the same samples."""

    def __init__(self, records: Sequence[Record]):
        self._records = records

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [r.to_sample() for r in self._records[i]]
        return self._records[i].to_sample()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (r.to_sample() for r in self._records)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, (list, RecordSamples)) and len(self) == len(other) \
            and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]  # (a sequence compared by value)


def task_file_from_json(obj: Any, where: str = "task file") -> TaskFile:
    if not isinstance(obj, dict):
        raise DataFileError(f"{where}: top-level JSON is {type(obj).__name__}, expected an object")
    missing = [k for k in ("subgroups", "samples") if k not in obj]
    if missing:
        raise DataFileError(f"{where}: not a task file: missing {', '.join(repr(k) for k in missing)}")
    samples, subgroups = obj["samples"], obj["subgroups"]
    if not isinstance(samples, list):
        raise DataFileError(f"{where}: 'samples' is a {type(samples).__name__}, expected a list")
    if not isinstance(subgroups, list):
        raise DataFileError(f"{where}: 'subgroups' is a {type(subgroups).__name__}, expected a list")
    out: list[Subgroup] = []
    for n, sg in enumerate(subgroups):
        name = f"{where}: subgroup {n}"
        if not isinstance(sg, dict) or not isinstance(sg.get("keyword"), str):
            raise DataFileError(f"{name}: expected an object with a string 'keyword'")
        idx = sg.get("reference_sample_idx", [])
        cands = sg.get("candidate_image_paths", [])
        if not isinstance(idx, list) or not all(isinstance(i, int) and not isinstance(i, bool)
                                                for i in idx):
            raise DataFileError(f"{name} ({sg['keyword']!r}): 'reference_sample_idx' must be a list of ints")
        bad = [i for i in idx if not 0 <= i < len(samples)]
        if bad:
            raise DataFileError(f"{name} ({sg['keyword']!r}): reference_sample_idx {bad[0]} is out of "
                                f"range for {len(samples)} samples")
        if not isinstance(cands, list) or not all(isinstance(c, str) for c in cands):
            raise DataFileError(f"{name} ({sg['keyword']!r}): 'candidate_image_paths' must be a list of strings")
        extra = {k: v for k, v in sg.items()
                 if k not in ("keyword", "reference_sample_idx", "candidate_image_paths")}
        out.append(Subgroup(sg["keyword"], idx, cands, extra))
    image_folder = obj.get("image_folder") or ""
    description = obj.get("dataset_description") or obj.get("skill") or ""
    if not isinstance(image_folder, str) or not isinstance(description, str):
        raise DataFileError(f"{where}: 'image_folder' and 'dataset_description' must be strings")
    extra = {k: v for k, v in obj.items() if k not in TASK_KEYS}
    return TaskFile(image_folder, description, out, samples, extra)


def load_task_file(path: str | os.PathLike) -> TaskFile:
    p = Path(path)
    task = task_file_from_json(read_json_file(p), str(p))
    task.path = p
    return task


def task_file_name(prefix: str, now: datetime | None = None) -> str:
    return f"{prefix}_{(now or datetime.now()).strftime('%Y_%m_%d_%H:%M:%S')}.json"


def save_task_file(task: TaskFile, output_folder: str | os.PathLike, prefix: str,
                   now: datetime | None = None) -> Path:
    """Write ``OUTPUT/{prefix}_{YYYY_mm_dd_HH:MM:SS}.json`` atomically, as MM-Gen names it
    (the text: ``task_file_lines``)."""
    path = Path(output_folder) / task_file_name(prefix, now)
    with atomic_writer(path, "w") as f:
        for batch in _batches(task_file_lines(task.to_json())):
            f.write("".join(batch))
    task.path = path
    return path


#: texts joined into one write by the streaming writers: few large writes, a few MB held
WRITE_BATCH = 4096


def _batches(texts: Iterable[str], size: int = WRITE_BATCH) -> Iterator[list[str]]:
    """``texts`` in lists of ``size`` (the last one shorter; none when ``texts`` is empty)."""
    it = iter(texts)
    while batch := list(itertools.islice(it, size)):
        yield batch


def task_file_lines(obj: dict[str, Any]) -> Iterable[str]:
    """A task file's text, line by line: each top-level key on a line of its own, and each
    subgroup and each sample on a line of its own, every value encoded by ``json_text``
    (``json.dumps``'s C encoder; ``indent=`` runs the pure-Python one: 1.05 s against 3.21 s for
    150,000 samples on 2 cores). ``json.loads`` of the text is ``obj``."""
    yield "{\n"
    last = len(obj) - 1
    for k, (key, value) in enumerate(obj.items()):
        head, end = f" {json_text(key)}: ", (",\n" if k < last else "\n")
        if isinstance(value, RecordSamples):
            value = value if len(value) else []  # (its samples are dicts: not checked, not made twice)
        if isinstance(value, RecordSamples) or \
                isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            yield head + "[\n"
            n = len(value) - 1
            for i, item in enumerate(value):
                yield "  " + json_text(item) + (",\n" if i < n else "\n")
            yield " ]" + end
        else:
            yield head + json_text(value) + end
    yield "}\n"


@paused_gc()
def task_records(task: TaskFile) -> tuple[dict[int, Record], list[Problem]]:
    """Parse the task file's samples as records: valid ones by index, and the problems."""
    ok: dict[int, Record] = {}
    problems: list[Problem] = []
    for i, raw in enumerate(task.samples):
        result = validate_record(i, raw)
        if isinstance(result, Problem):
            problems.append(result)
        else:
            ok[i] = result
    return ok, problems


# ----------------------------------------------------------------------------------------------
# Prompt files (MM-Gen schema)


@dataclass
class PromptEntry:
    keyword: str
    prompt: list[str]
    icl_indices: list[int]

    def to_json(self) -> dict[str, Any]:
        return {"keyword": self.keyword, "prompt": self.prompt, "icl_indices": self.icl_indices}


@dataclass
class PromptFile:
    task_desc_path: str
    dataset_description: str
    num_icl_samples: int
    mode: Mode
    min_gen_per_candidate: int
    total_gen: int
    prompts: list[PromptEntry]
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def header_json(self) -> dict[str, Any]:
        return {"task_desc_path": self.task_desc_path,
                "dataset_description": self.dataset_description,
                "num_icl_samples": self.num_icl_samples, "mode": self.mode.value,
                "min_gen_per_candidate": self.min_gen_per_candidate, "total_gen": self.total_gen,
                **self.extra}

    def to_json(self) -> dict[str, Any]:
        return {**self.header_json(), "prompts": [p.to_json() for p in self.prompts]}


PROMPT_HEADER_KEYS = ("task_desc_path", "dataset_description", "num_icl_samples", "mode",
                      "min_gen_per_candidate", "total_gen")


def is_prompt_image(part: str) -> bool:
    """Whether an element of a prompt list is an image path (MM-Gen marks them by extension only;
    text parts are multi-line or start with 'Q:' / 'Example')."""
    return ("\n" not in part and is_image_path(part) and not part.startswith(("Q:", "Example ")))


def prompt_file_from_json(obj: Any, where: str = "prompt file") -> PromptFile:
    if not isinstance(obj, dict):
        raise DataFileError(f"{where}: top-level JSON is {type(obj).__name__}, expected an object")
    missing = [k for k in ("mode", "prompts") if k not in obj]
    if missing:
        raise DataFileError(f"{where}: not a prompt file: missing {', '.join(repr(k) for k in missing)}")
    try:
        mode = parse_mode(obj["mode"])
    except Exception as e:
        raise DataFileError(f"{where}: {e}") from e
    prompts: list[PromptEntry] = []
    if not isinstance(obj["prompts"], list):
        raise DataFileError(f"{where}: 'prompts' must be a list")
    for n, pe in enumerate(obj["prompts"]):
        if (not isinstance(pe, dict) or not isinstance(pe.get("prompt"), list)
                or not all(isinstance(x, str) for x in pe["prompt"])):
            raise DataFileError(f"{where}: prompt {n}: expected an object with a 'prompt' list of strings")
        prompts.append(PromptEntry(str(pe.get("keyword", "")), pe["prompt"],
                                   [int(i) for i in pe.get("icl_indices", [])]))
    ints = {}
    for key, default in (("num_icl_samples", 0), ("min_gen_per_candidate", 1), ("total_gen", 0)):
        v = obj.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise DataFileError(f"{where}: {key!r} is {v!r}, expected a non-negative int")
        ints[key] = v
    if ints["min_gen_per_candidate"] < 1:
        raise DataFileError(f"{where}: 'min_gen_per_candidate' must be ≥ 1")
    extra = {k: v for k, v in obj.items() if k not in PROMPT_HEADER_KEYS + ("prompts",)}
    return PromptFile(str(obj.get("task_desc_path", "")), str(obj.get("dataset_description", "")),
                      ints["num_icl_samples"], mode, ints["min_gen_per_candidate"],
                      ints["total_gen"], prompts, extra)


def load_prompt_file(path: str | os.PathLike) -> PromptFile:
    p = Path(path)
    pf = prompt_file_from_json(read_json_file(p), str(p))
    pf.path = p
    return pf


#: The one rule for a name that begins file and folder names (a prompt file's prefix, a run's
#: name, a task file's prefix): ASCII letters, digits, '.', '_' and '-', starting with a letter or
#: digit, not ending with '_' or '.'. The app's prefix field, the command lines and the runs all
#: check it with ``check_file_prefix``, so a prefix the field accepts is one every run accepts.
FILE_PREFIX_MAX = 120
#: names composed from a prefix by the code (a shard's ``{prefix}_shard_01_of_03``, a subgroup
#: run's ``{prefix}-{keywords}``) may be this long
FILE_NAME_MAX = 200
_FILE_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_file_prefix(prefix: Any, what: str = "file prefix", max_len: int = FILE_PREFIX_MAX) -> str:
    """``prefix`` when it follows the file-name rule above, else a ``ConfigError`` naming the
    characters that are not allowed."""
    if not isinstance(prefix, str) or not _FILE_PREFIX.fullmatch(prefix) \
            or prefix.endswith(("_", ".")) or len(prefix) > max_len:
        text = prefix if isinstance(prefix, str) else ""
        bad = sorted({c for c in text if not (c.isascii() and (c.isalnum() or c in "._-"))})
        why = (f": {', '.join(repr(c) for c in bad)} not allowed" if bad else
               f": longer than {max_len} characters" if len(text) > max_len else "")
        raise ConfigError(f"{what} {prefix!r} cannot begin a file name{why} (use 1–{max_len} "
                          "ASCII letters, digits, '.', '_' or '-', starting with a letter or digit "
                          "and not ending with '_' or '.')")
    return prefix


PROMPTS_DIR = "generated_prompts"  # MM-Gen: OUTPUT/generated_prompts/{prefix}_prompts_{stamp}.json
GENERATED_DIR = "generated_data"  # MM-Gen: OUTPUT/generated_data/{prefix}_{stamp}.json


def prompts_dir(folder: str | os.PathLike) -> Path:
    """Where step 2 writes prompt files under an output folder (and step 3 looks for them)."""
    return Path(folder) / PROMPTS_DIR


def generated_dir(folder: str | os.PathLike) -> Path:
    """Where step 3 writes generated data under an output folder."""
    return Path(folder) / GENERATED_DIR


def prompt_file_name(prefix: str, now: datetime | None = None) -> str:
    return f"{prefix}_prompts_{(now or datetime.now()).strftime('%Y%m%d_%H%M%S')}.json"


def json_text(value: Any) -> str:
    """One value as the prompt file encodes it (``json.dumps``, UTF-8 kept, no indent)."""
    return json.dumps(value, ensure_ascii=False)


def prompt_entry_text(keyword_json: str, prompt_json: Sequence[str], icl_indices: Sequence[int]) -> str:
    """One prompt entry's text from its parts already encoded by ``json_text``: exactly
    ``json_text(PromptEntry(...).to_json())``, without re-encoding parts shared by many prompts."""
    return (f'{{"keyword": {keyword_json}, "prompt": [{", ".join(prompt_json)}], '
            f'"icl_indices": [{", ".join(map(str, icl_indices))}]}}')


def write_prompt_file(path: str | os.PathLike, header: PromptFile, entries: Iterable[str]) -> int:
    """Stream a prompt file to ``path`` atomically: ``header``'s keys (its ``prompts`` are not
    read), then each entry text of ``entries`` (``prompt_entry_text``) as it comes, so the whole
    list is never held. The bytes are those of ``json_text(pf.to_json()) + "\n"`` for the same
    prompts. Returns the number of entries written; if ``entries`` raises, ``path`` is untouched."""
    head = json_text(header.header_json())
    n = 0
    with atomic_writer(path, "w") as f:
        f.write(head[:-1] + (', "prompts": [' if len(head) > 2 else '"prompts": ['))
        for batch in _batches(entries):
            f.write((", " if n else "") + ", ".join(batch))
            n += len(batch)
        f.write("]}\n")
    return n


def save_prompt_file(pf: PromptFile, output_folder: str | os.PathLike, prefix: str,
                     now: datetime | None = None) -> Path:
    """Write ``OUTPUT/generated_prompts/{prefix}_prompts_{YYYYmmdd_HHMMSS}.json`` atomically."""
    path = prompts_dir(output_folder) / prompt_file_name(prefix, now)
    write_prompt_file(path, pf, (json_text(e.to_json()) for e in pf.prompts))
    pf.path = path
    return path
