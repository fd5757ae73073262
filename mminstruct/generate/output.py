"""Generated data: MM-Gen's output file from a run's log, the manifest, and merging shard outputs
(exports to other formats: ``mminstruct.export.formats``).

The output file keeps MM-Gen's keys — ``image_folder``, ``len_samples``, ``start_idx``,
``end_idx``, ``num_prompts``, ``samples`` — and adds ``mode``, ``model``, ``input_folder``,
``dataset_description``, ``prompt_file`` and ``run`` beside them. ``image_folder`` is "" and every
``image_1`` is relative to ``input_folder`` (the prompt file's convention), so
``records.load_data_file(path, input_folder=…)`` reads it back. ``end_idx`` is exclusive
(``start_idx + num_prompts``).

Samples per generated item, as MM-Gen builds them (the question suffixes are this project's):

* vqa, vqa_task_desc: two samples — the question asking for step-by-step reasoning, answered by
  the reasoning then the answer (``variant: "reasoning"``); and the question asking for a concise
  answer, answered by the answer alone (``variant: "concise"``);
* tqa: the same two, text-only: the imagined image's description stands before the question and
  there is no ``image_1`` (the model saw no image);
* vqa_nr: one sample, question → answer;
* descript, descript_task_desc: "describe this image as an expert in <dataset description>" →
  the description; generic: "describe this image" → the description.

A ``choices`` value the model split out of its question is put back under the question. Every
sample has a unique ``id``, ``icl_indices``, ``keyword`` and ``prompt_idx`` (its prompt's index
in the prompt file). Files are written through a temporary file and renamed (atomic), and
streamed, so 150,000 prompts never sit in memory at once.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mminstruct.cache import atomic_writer
from mminstruct.errors import DataFileError, MergeError
from mminstruct.data.modes import Mode
from mminstruct.generate.jsonstream import iter_object
from mminstruct.generate.runlog import latest_records

log = logging.getLogger(__name__)

REASONING_SUFFIX = "Think step by step and explain your reasoning, then give the answer."
CONCISE_SUFFIX = "Answer concisely."
MM_GEN_KEYS = ("image_folder", "len_samples", "start_idx", "end_idx", "num_prompts")
TWO_SAMPLE_MODES = (Mode.VQA, Mode.VQA_TASK_DESC, Mode.TQA)


def samples_per_item(mode: Mode) -> int:
    return 2 if mode in TWO_SAMPLE_MODES else 1


def samples_per_prompt(mode: Mode, items: int) -> int:
    """Samples a prompt whose answer has ``items`` items becomes: one multi-turn sample in the
    ``conversation`` mode, else ``items × samples_per_item``."""
    if mode.one_sample_per_prompt:
        return 1 if items else 0
    return items * samples_per_item(mode)


def conversation_sample(items: list[dict[str, str]], *, image: str | None, keyword: str,
                        icl_indices: list[int], prompt_idx: int) -> dict[str, Any]:
    """The ``conversation`` mode's one sample of a prompt: its items, in order, as the turns of one
    conversation (``<image>`` in the first question only)."""
    turns: list[dict[str, str]] = []
    for k, item in enumerate(items):
        tag = "<image>\n" if image and k == 0 else ""
        turns += _turns(f"{tag}{item['Q']}", item["A"])
    sample: dict[str, Any] = {}
    if image:
        sample["image_1"] = image
    sample.update(conversations=turns, icl_indices=list(icl_indices), keyword=keyword,
                  prompt_idx=prompt_idx)
    return sample


def describe_question(mode: Mode, dataset_description: str) -> str:
    desc = dataset_description.strip().rstrip(".")
    if mode is Mode.GENERIC or not desc:
        return "Describe this image in detail."
    return f"Describe this image in detail as an expert in {desc}."


def _turns(human: str, gpt: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]


def item_samples(mode: Mode, item: dict[str, str], *, image: str | None, keyword: str,
                 icl_indices: list[int], prompt_idx: int, dataset_description: str = ""
                 ) -> list[dict[str, Any]]:
    """The MM-Gen samples of one generated item (without ``id``)."""
    choices = f"\n{item['choices']}" if item.get("choices") else ""
    tag = "<image>\n" if image and mode is not Mode.TQA else ""
    convs: list[tuple[list[dict[str, str]], str | None]] = []
    if mode in (Mode.VQA, Mode.VQA_TASK_DESC, Mode.TQA):
        stem = (f"{item['I']}\n" if mode is Mode.TQA else "") + item["Q"] + choices
        convs.append((_turns(f"{tag}{stem}\n{REASONING_SUFFIX}", f"{item['R']}\n{item['A']}"),
                      "reasoning"))
        convs.append((_turns(f"{tag}{stem}\n{CONCISE_SUFFIX}", item["A"]), "concise"))
    elif mode is Mode.VQA_NR:
        convs.append((_turns(f"{tag}{item['Q']}{choices}", item["A"]), None))
    else:
        convs.append((_turns(f"{tag}{describe_question(mode, dataset_description)}",
                             item["A"]), None))
    out = []
    for conversations, variant in convs:
        sample: dict[str, Any] = {}
        if image and mode is not Mode.TQA:
            sample["image_1"] = image
        sample["conversations"] = conversations
        sample["icl_indices"] = list(icl_indices)
        sample["keyword"] = keyword
        sample["prompt_idx"] = prompt_idx
        if variant:
            sample["variant"] = variant
        out.append(sample)
    return out


def record_samples(mode: Mode, rec: dict[str, Any], dataset_description: str
                   ) -> list[dict[str, Any]]:
    if mode.one_sample_per_prompt:
        items = rec.get("items", [])
        return [conversation_sample(items, image=rec.get("image"), keyword=rec.get("keyword", ""),
                                    icl_indices=rec.get("icl_indices", []),
                                    prompt_idx=rec["prompt_idx"])] if items else []
    out: list[dict[str, Any]] = []
    for item in rec.get("items", []):
        out.extend(item_samples(mode, item, image=rec.get("image"), keyword=rec.get("keyword", ""),
                                icl_indices=rec.get("icl_indices", []),
                                prompt_idx=rec["prompt_idx"],
                                dataset_description=dataset_description))
    return out


# ----------------------------------------------------------------------------------------------
# Atomic streaming writes


def _dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def write_samples_file(path: Path, header: dict[str, Any], samples: Iterator[dict[str, Any]]
                       ) -> None:
    """``{header…, "samples": [one sample a line]}``; ``header`` must already hold len_samples."""
    with atomic_writer(path, "w") as f:
        f.write("{\n")
        for k, v in header.items():
            f.write(f"{_dump(k)}: {_dump(v)},\n")
        f.write('"samples": [')
        first = True
        for s in samples:
            f.write("\n" if first else ",\n")
            f.write(_dump(s))
            first = False
        f.write("\n]\n}\n")


# ----------------------------------------------------------------------------------------------
# Run log → output file


@dataclass
class OutputSummary:
    path: Path
    len_samples: int
    prompts_ok: int
    prompts_failed: int
    items: int


def write_output(log_path: Path, path: Path, *, mode: Mode, dataset_description: str,
                 start_idx: int, num_prompts: int, extra: dict[str, Any]) -> OutputSummary:
    """Write MM-Gen's output file from a run log: each prompt's latest record once, in prompt
    order; failures contribute no samples (they are in the manifest)."""
    latest = latest_records(log_path)
    ok = sorted(i for i, r in latest.items() if r.ok and start_idx <= i < start_idx + num_prompts)
    n_items = sum(latest[i].n_items for i in ok)
    n_samples = sum(samples_per_prompt(mode, latest[i].n_items) for i in ok)
    header = {"image_folder": "", "len_samples": n_samples,
              "start_idx": start_idx, "end_idx": start_idx + num_prompts,
              "num_prompts": num_prompts, **extra}

    def samples() -> Iterator[dict[str, Any]]:
        n = 0
        with open(log_path, "rb") as f:
            for idx in ok:
                f.seek(latest[idx].offset)
                rec = json.loads(f.readline())
                for s in record_samples(mode, rec, dataset_description):
                    yield {"id": n, **s}
                    n += 1

    write_samples_file(path, header, samples())
    failed = sum(1 for i, r in latest.items() if not r.ok)
    return OutputSummary(path, header["len_samples"], len(ok), failed, n_items)


# ----------------------------------------------------------------------------------------------
# Reading outputs


@dataclass
class GeneratedData:
    path: Path
    header: dict[str, Any]
    samples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def input_folder(self) -> str | None:
        return self.header.get("input_folder")


def load_output(path: str | os.PathLike) -> GeneratedData:
    """A whole output file (for viewing); use ``iter_output`` for large ones."""
    header: dict[str, Any] = {}
    samples: list[dict[str, Any]] = []
    for key, value, is_item in iter_object(path, "samples"):
        if key == "samples":
            if is_item:
                samples.append(value)
        else:
            header[key] = value
    return GeneratedData(Path(path), header, samples)


def output_header(path: str | os.PathLike) -> dict[str, Any]:
    return {k: v for k, v, is_item in iter_object(path, "samples") if k != "samples"}


def iter_output(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    for key, value, is_item in iter_object(path, "samples"):
        if key == "samples" and is_item:
            if not isinstance(value, dict):
                raise DataFileError(f"{path}: a sample is a {type(value).__name__}, not an object")
            yield value


# ----------------------------------------------------------------------------------------------
# Merging shard outputs


@dataclass
class MergeSummary:
    path: Path
    len_samples: int
    files: int
    duplicates_dropped: int
    warnings: list[str]


def merge_outputs(paths: list[Path], out_path: Path) -> MergeSummary:
    """Merge output files into one: samples in file order, ids renumbered, and a prompt whose
    samples appear in several files kept once (from the first file holding it)."""
    if not paths:
        raise MergeError("nothing to merge: no output files given")
    headers = [output_header(p) for p in paths]
    warnings: list[str] = []
    for key in ("mode", "input_folder"):
        values = {h.get(key) for h in headers if h.get(key) is not None}
        if len(values) > 1:
            raise MergeError(f"cannot merge outputs with different {key}s: "
                             + ", ".join(sorted(map(str, values))))
    seen: set[int] = set()
    keep: list[set[int] | None] = []
    total = 0
    dropped = 0
    for p in paths:
        mine: set[int] = set()
        count = 0
        for s in iter_output(p):
            idx = s.get("prompt_idx")
            if isinstance(idx, int):
                if idx in seen:
                    dropped += 1
                    continue
                mine.add(idx)
            count += 1
        seen |= mine
        keep.append(mine)
        total += count
    if dropped:
        warnings.append(f"{dropped} sample(s) of prompts already merged from an earlier file "
                        "were dropped")
    ranges = sorted((h.get("start_idx", 0), h.get("end_idx", 0), str(p))
                    for h, p in zip(headers, paths))
    for (s1, e1, p1), (s2, e2, p2) in zip(ranges, ranges[1:]):
        if s2 > e1:
            warnings.append(f"prompts {e1}–{s2 - 1} are in no file (gap between {p1} and {p2})")
        elif s2 < e1:
            warnings.append(f"prompt ranges of {p1} and {p2} overlap ({s2}–{e1 - 1})")
    first = headers[0]
    header = {"image_folder": first.get("image_folder", ""), "len_samples": total,
              "start_idx": min(r[0] for r in ranges), "end_idx": max(r[1] for r in ranges),
              "num_prompts": sum(int(h.get("num_prompts", 0)) for h in headers)}
    for k, v in first.items():
        if k not in header and k not in ("run",):
            header[k] = v
    header["merged_from"] = [p.name for p in paths]

    def samples() -> Iterator[dict[str, Any]]:
        n = 0
        for p, mine in zip(paths, keep):
            for s in iter_output(p):
                idx = s.get("prompt_idx")
                if isinstance(idx, int) and idx not in mine:
                    continue
                yield {**s, "id": n}
                n += 1

    write_samples_file(out_path, header, samples())
    for w in warnings:
        log.warning("merge: %s", w)
    return MergeSummary(out_path, total, len(paths), dropped, warnings)
