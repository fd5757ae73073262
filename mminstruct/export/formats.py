"""Exports of a generated-data file: one registry of formats (``FORMATS``), used by the Review page
(through ``review.export_reviewed``) and by the command line::

    python -m mminstruct.export --generated_file F --format mmgen|llava|sharegpt --output OUT \\
        [--absolute_paths | --image_root DIR] [--rejected review.json] [--overwrite]

Formats:

* ``mmgen`` — MM-Gen's generated-data JSON (the header kept, ``len_samples`` updated);
  ``image_folder`` says where the ``image_1`` paths resolve from the file's folder.
* ``llava`` — LLaVA JSON: ``[{id, image, conversations: [{from: human|gpt, value}]}]``; ``image``
  (absent for text-only samples) is relative to an image folder — the export's folder by default,
  ``--image_root`` (pass it to the trainer as ``--image_folder``), or absolute.
* ``sharegpt`` — LLaMA-Factory's ShareGPT JSON: ``[{messages: [{role: user|assistant, content}],
  images: [path]}]``.
* ``hf`` — a Hugging Face dataset folder (``--output`` is the folder): Parquet shards with the
  images embedded and a dataset card; ``datasets.load_dataset(OUT_DIR)`` reads it, ``hf upload``
  publishes it (``export_hf``).

Rules every exported record follows (what LLaVA's and LLaMA-Factory's loaders check):

* exactly one ``<image>`` token per image, all in the first user turn (LLaVA: ``<image>\\n`` first);
  text-only records have none. A sample whose text holds a literal ``<image>`` the model wrote (a
  token in a later turn, or more tokens than images) is left out and listed in the report
  (``flagged``), never exported with a count LLaMA-Factory's ``mm_plugin`` would refuse.
* roles alternate user/assistant (human/gpt), starting with the user and ending with the
  assistant; other samples are flagged.
* image paths resolve from where the file is written (relative to its folder, or to
  ``image_root``), or are absolute.
* ``dataset_info.json`` beside the export (merged into an existing one) gets an entry for every
  LLaVA and ShareGPT export: no ``images`` column when no row has an image; ``images: []`` in
  text-only rows of a mixed ShareGPT file; a mixed LLaVA file's text-only rows have no ``image``
  key (LLaVA's rule), which ``datasets`` — LLaMA-Factory's reader — reads as None. LLaMA-Factory joins relative paths to its
  ``media_dir`` training argument, which defaults to ``dataset_dir``: train with
  ``dataset_dir`` = the export's folder (or ``media_dir`` = ``image_root``) — the report's
  ``llamafactory_args`` says which.
* an existing file is never overwritten unless asked (``overwrite=True``, ``--overwrite``);
  ``next_free_name`` gives the name the app offers instead.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mminstruct.cache import atomic_write_json, atomic_writer
from mminstruct.cli import OneLineParser, run_cli
from mminstruct.errors import ConfigError, DataFileError, InputError, choices_message
from mminstruct.generate.output import iter_output, output_header, write_samples_file

IMAGE_TOKEN = "<image>"
DATASET_INFO = "dataset_info.json"
USER_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")


class ExportExistsError(InputError):
    """The export's destination exists and overwriting was not asked for."""


# ----------------------------------------------------------------------------------------------
# Names


def next_free_name(path: str | os.PathLike) -> Path:
    """``path`` if nothing is there, else ``stem_2.json``, ``stem_3.json``, … — the first free one."""
    p = Path(path)
    if not p.exists():
        return p
    stem, suffix = p.name[: -len(p.suffix)] if p.suffix else p.name, p.suffix
    k = 2
    while (cand := p.with_name(f"{stem}_{k}{suffix}")).exists():
        k += 1
    return cand


def export_name(output_path: str | os.PathLike, fmt: str) -> str:
    """The default file name of an export of ``output_path``."""
    return Path(output_path).stem + get_format(fmt).default_name


# ----------------------------------------------------------------------------------------------
# One sample → one record


@dataclass
class Prepared:
    """A sample's turns checked and normalised: (role, text) with the image tokens taken out, and
    its images as absolute paths."""

    id: Any
    turns: list[tuple[str, str]]
    images: list[Path]


class Flagged(Exception):
    """Internal: this sample cannot be exported as is (the reason is the message)."""


def _sample_images(sample: dict[str, Any], input_folder: Path) -> list[Path]:
    """MM-Gen's ``image_1``, ``image_2``, … or LLaVA's ``image`` (a path or a list), as paths."""
    imgs: list[str] = []
    if "image_1" in sample:
        k = 1
        while isinstance(sample.get(f"image_{k}"), str) and sample[f"image_{k}"]:
            imgs.append(sample[f"image_{k}"])
            k += 1
    elif isinstance(sample.get("image"), str) and sample["image"]:
        imgs = [sample["image"]]
    elif isinstance(sample.get("image"), list):
        imgs = [x for x in sample["image"] if isinstance(x, str) and x]
    return [Path(i) if Path(i).is_absolute() else input_folder / i for i in imgs]


def prepare(sample: dict[str, Any], input_folder: Path) -> Prepared:
    """Check a sample against the rules (module docstring); raises ``Flagged`` with the reason."""
    images = _sample_images(sample, input_folder)
    convs = sample.get("conversations")
    if not isinstance(convs, list) or not convs:
        raise Flagged("no conversations")
    turns: list[tuple[str, str]] = []
    for k, t in enumerate(convs):
        if not isinstance(t, dict) or not isinstance(t.get("value"), str):
            raise Flagged(f"turn {k} is not {{from, value}}")
        role = t.get("from")
        want = USER_ROLES if k % 2 == 0 else ASSISTANT_ROLES
        if role not in want:
            raise Flagged(f"turn {k} is {role!r}; roles must alternate user/assistant, "
                          "starting with the user")
        turns.append(("user" if k % 2 == 0 else "assistant", t["value"]))
    if len(turns) % 2:
        raise Flagged("the last turn is the user's; it must be the assistant's")
    first = turns[0][1].count(IMAGE_TOKEN)
    later = [k for k, (_, text) in enumerate(turns) if k and IMAGE_TOKEN in text]
    if later:
        raise Flagged(f"a literal {IMAGE_TOKEN} in turn {later[0]} (the model's text)")
    if first not in (0, len(images)):
        raise Flagged(f"{first} {IMAGE_TOKEN} token(s) in the first turn for {len(images)} "
                      "image(s): a literal one in the model's text")
    text0 = re.sub(r"<image>[ \t]*\n?", "", turns[0][1]).strip() if first else turns[0][1]
    turns[0] = ("user", text0)
    return Prepared(sample.get("id"), turns, images)


# ----------------------------------------------------------------------------------------------
# Paths


@dataclass(frozen=True)
class PathPolicy:
    """How image paths are written: absolute, or relative to ``base`` (the export's folder or
    ``image_root``)."""

    absolute: bool
    base: Path

    def write(self, image: Path) -> str:
        image = Path(os.path.abspath(image))
        if self.absolute:
            return str(image)
        return Path(os.path.relpath(image, self.base)).as_posix()


# ----------------------------------------------------------------------------------------------
# The formats


@dataclass(frozen=True)
class ExportFormat:
    name: str
    label: str
    to_record: Callable[[Prepared, PathPolicy], dict[str, Any]] | None  # None: its own writer
    dataset_info: Callable[[str, bool], dict[str, Any]] | None  # (file name, with images)
    folder: bool = False  # the export is a folder (hf), not one file

    @property
    def default_name(self) -> str:
        """What ``export_name`` appends to the generated file's stem."""
        return f".reviewed.{self.name}" + ("" if self.folder else ".json")


def _llava_record(p: Prepared, paths: PathPolicy) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": p.id}
    turns = list(p.turns)
    if p.images:
        if len(p.images) == 1:
            rec["image"] = paths.write(p.images[0])
        else:
            rec["image"] = [paths.write(i) for i in p.images]
        turns[0] = ("user", (IMAGE_TOKEN + "\n") * len(p.images) + turns[0][1])
    rec["conversations"] = [{"from": "human" if r == "user" else "gpt", "value": t}
                            for r, t in turns]
    return rec


def _sharegpt_record(p: Prepared, paths: PathPolicy) -> dict[str, Any]:
    turns = list(p.turns)
    if p.images:
        turns[0] = ("user", IMAGE_TOKEN * len(p.images) + turns[0][1])
    rec: dict[str, Any] = {"messages": [{"role": r, "content": t} for r, t in turns]}
    rec["images"] = [paths.write(i) for i in p.images]
    return rec


def sharegpt_dataset_info(file_name: str, with_images: bool) -> dict[str, Any]:
    """The ``dataset_info.json`` entry of a ``sharegpt`` export."""
    columns = {"messages": "messages", **({"images": "images"} if with_images else {})}
    return {"file_name": file_name, "formatting": "sharegpt", "columns": columns,
            "tags": {"role_tag": "role", "content_tag": "content",
                     "user_tag": "user", "assistant_tag": "assistant"}}


def llava_dataset_info(file_name: str, with_images: bool) -> dict[str, Any]:
    """The ``dataset_info.json`` entry of a ``llava`` export (LLaMA-Factory reads LLaVA JSON as
    ShareGPT with from/value human/gpt, its defaults)."""
    columns = {"messages": "conversations", **({"images": "image"} if with_images else {})}
    return {"file_name": file_name, "formatting": "sharegpt", "columns": columns}


FORMATS: dict[str, ExportFormat] = {
    "mmgen": ExportFormat("mmgen", "MM-Gen JSON", None, None),
    "llava": ExportFormat("llava", "LLaVA JSON", _llava_record, llava_dataset_info),
    "sharegpt": ExportFormat("sharegpt", "LLaMA-Factory ShareGPT JSON", _sharegpt_record,
                             sharegpt_dataset_info),
    "hf": ExportFormat("hf", "Hugging Face dataset (Parquet + card)", None, None, folder=True),
}
EXPORT_FORMATS: tuple[str, ...] = tuple(sorted(FORMATS))
#: The format offered first (the Review page's choice until the person picks another).
DEFAULT_EXPORT_FORMAT = "llava"
EXPORT_LABELS: dict[str, str] = {k: f.label for k, f in FORMATS.items()}


def get_format(name: str) -> ExportFormat:
    if name not in FORMATS:
        raise ConfigError(choices_message("format", name, EXPORT_FORMATS))
    return FORMATS[name]


# ----------------------------------------------------------------------------------------------
# Exporting a file


@dataclass
class ExportReport:
    dest: Path
    format: str
    written: int
    rejected: int
    flagged: list[tuple[Any, str]] = field(default_factory=list)
    with_images: bool = False
    paths: str = "relative"  # relative | absolute
    base: Path | None = None  # what relative image paths are relative to
    dataset_info: Path | None = None
    dataset_name: str | None = None
    note: str = ""

    @property
    def llamafactory_args(self) -> dict[str, str]:
        """LLaMA-Factory training arguments that load this export (empty for mmgen)."""
        if self.dataset_name is None:
            return {}
        args = {"dataset": self.dataset_name,
                "dataset_dir": str(self.dest if self.format == "hf" else self.dest.parent)}
        if self.with_images and self.paths == "relative" and self.base is not None:
            args["media_dir"] = str(self.base)
        return args

    def summary(self) -> str:
        parts = [f"wrote {self.written:,} {self.format} record(s) to {self.dest}"]
        if self.rejected:
            parts.append(f"{self.rejected:,} rejected in review left out")
        if self.flagged:
            ids = ", ".join(str(i) for i, _ in self.flagged[:5])
            more = f", … ({len(self.flagged) - 5} more)" if len(self.flagged) > 5 else ""
            parts.append(f"{len(self.flagged):,} flagged and left out (ids {ids}{more}; "
                         f"first: {self.flagged[0][1]})")
        if self.with_images:
            parts.append({"absolute": "image paths absolute", "embedded": "images embedded"}.get(
                self.paths, f"image paths relative to {self.base}"))
        if self.note:
            parts.append(self.note)
        if self.dataset_info is not None:
            args = " ".join(f"{k}={v}" for k, v in self.llamafactory_args.items())
            parts.append(f"LLaMA-Factory: entry {self.dataset_name!r} in {self.dataset_info}; "
                         f"train with {args}")
        return "; ".join(parts)


def _write_json_list(dest: Path, records: Iterator[dict[str, Any]]) -> int:
    n = 0
    with atomic_writer(dest, "w") as f:
        f.write("[")
        for r in records:
            f.write("\n" if n == 0 else ",\n")
            f.write(json.dumps(r, ensure_ascii=False))
            n += 1
        f.write("\n]\n")
    return n


def _dataset_name(dest: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", dest.name[: -len(".json")] if dest.name.endswith(
        ".json") else dest.name)


def _update_dataset_info(folder: Path, name: str, entry: dict[str, Any]) -> tuple[Path, str]:
    """Add ``entry`` to ``folder/dataset_info.json`` (created if absent); an entry of the same name
    for another file gets a new name, never replaced."""
    path = folder / DATASET_INFO
    info: dict[str, Any] = {}
    if path.exists():
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DataFileError(f"{path}: cannot read it to add the export's entry: {e}") from e
        if not isinstance(info, dict):
            raise DataFileError(f"{path}: a {type(info).__name__}, not an object of dataset entries")
    base, k = name, 2
    while name in info and info[name].get("file_name") != entry["file_name"]:
        name, k = f"{base}_{k}", k + 1
    info[name] = entry
    atomic_write_json(path, info)
    return path, name


def load_rejected(path: str | os.PathLike, generated_file: str | os.PathLike) -> set[int]:
    """Sample ids rejected in review, from ``path``: a JSON list of ids; an object mapping output
    file names to id lists (the workspace's ``rejected``); or an object with such a ``rejected``."""
    p = Path(path)
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DataFileError(f"{p}: file not found") from e
    except (OSError, ValueError) as e:
        raise DataFileError(f"{p}: not readable JSON: {e}") from e
    if isinstance(obj, dict) and "rejected" in obj:
        obj = obj["rejected"]
    if isinstance(obj, dict):
        name = Path(generated_file).name
        obj = obj.get(name, [])
    if not isinstance(obj, list) or not all(isinstance(i, int) and not isinstance(i, bool)
                                            for i in obj):
        raise DataFileError(f"{p}: expected a list of sample ids (integers), or an object "
                            f"mapping output file names to such lists")
    return set(obj)


def export_file(src: str | os.PathLike, dest: str | os.PathLike, fmt: str, *,
                rejected: Iterable[int] = (), absolute_paths: bool = False,
                image_root: str | os.PathLike | None = None, overwrite: bool = False,
                dataset_info: bool = True, license: str | None = None,
                scores: str | os.PathLike | None = None, rejected_file: str | None = None,
                ) -> ExportReport:
    """Export the kept samples of the generated-data file ``src`` to ``dest`` in ``fmt``
    (``license``, ``scores``: the ``hf`` format's; ``rejected_file``: named in its card)."""
    spec = get_format(fmt)
    src, dest = Path(src), Path(os.path.abspath(dest))
    if absolute_paths and image_root is not None:
        raise ConfigError("choose absolute image paths or an image root, not both")
    if not spec.folder and (license is not None or scores is not None):
        raise ConfigError(f"--license and --scores are the hf format's; {fmt} has no card")
    if not src.is_file():
        raise DataFileError(f"{src}: file not found")
    if dest.exists() and not overwrite and not (spec.folder and dest.is_dir()
                                                and not any(dest.iterdir())):
        raise ExportExistsError(f"{dest} exists; pass --overwrite to replace it, or write to "
                                f"{next_free_name(dest).name}")
    if dest.is_dir() and not spec.folder:
        raise ConfigError(f"{dest} is a folder; give the export's file name")
    if dest.is_file() and spec.folder:
        raise ConfigError(f"{dest} is a file; the {fmt} export is a folder")
    header = output_header(src)
    input_folder = Path(header.get("input_folder") or src.parent)
    base = Path(os.path.abspath(image_root)) if image_root is not None else dest.parent
    paths = PathPolicy(absolute_paths, base)
    rej = {int(i) for i in rejected}

    # Pass 1: which samples go out, and whether any has an image (the declared columns).
    flagged: list[tuple[Any, str]] = []
    kept_ids: set[int] = set()
    with_images = False
    text_only = False
    n_rejected = 0
    for pos, s in enumerate(iter_output(src)):
        if s.get("id") in rej:
            n_rejected += 1
            continue
        try:
            p = prepare(s, input_folder)
        except Flagged as e:
            flagged.append((s.get("id", pos), str(e)))
            continue
        kept_ids.add(pos)
        with_images = with_images or bool(p.images)
        text_only = text_only or not p.images

    def kept() -> Iterator[tuple[dict[str, Any], Prepared]]:
        for pos, s in enumerate(iter_output(src)):
            if pos in kept_ids:
                yield s, prepare(s, input_folder)

    dest.parent.mkdir(parents=True, exist_ok=True)
    if spec.folder:
        return _export_hf(src, dest, header, input_folder, kept, n_rejected, flagged,
                          overwrite=overwrite, license=license, scores=scores,
                          rejected_file=rejected_file, with_images=with_images,
                          dataset_info=dataset_info)
    if spec.to_record is None:  # MM-Gen: image_folder (from the file's folder) + image_1, …
        root = base if image_root is not None else input_folder.resolve()
        if absolute_paths:
            folder = str(root)
        else:
            folder = Path(os.path.relpath(root, dest.parent)).as_posix()
        out_header = {**header, "image_folder": folder, "len_samples": len(kept_ids),
                      "rejected_in_review": n_rejected, "flagged_in_export": len(flagged)}
        within = PathPolicy(False, root)

        def mmgen_samples() -> Iterator[dict[str, Any]]:
            for s, p in kept():
                if image_root is not None and "image_1" in s:  # re-rooted under image_root
                    s = {**s, **{f"image_{k + 1}": within.write(i) for k, i in enumerate(p.images)}}
                yield s
        write_samples_file(dest, out_header, mmgen_samples())
        written = len(kept_ids)
        base = root
    else:
        to_record = spec.to_record

        def records() -> Iterator[dict[str, Any]]:
            for _s, p in kept():
                rec = to_record(p, paths)
                if fmt == "sharegpt" and not with_images:
                    rec.pop("images", None)
                yield rec
        written = _write_json_list(dest, records())
    report = ExportReport(dest, fmt, written, n_rejected, flagged, with_images,
                          "absolute" if absolute_paths else "relative", base)
    if fmt == "llava" and with_images and text_only:
        report.note = ("text-only rows have no 'image' key (LLaVA's rule); LLaMA-Factory reads "
                       "them as rows without images")
    if dataset_info and spec.dataset_info is not None:
        entry = spec.dataset_info(dest.name, with_images)
        report.dataset_info, report.dataset_name = _update_dataset_info(
            dest.parent, _dataset_name(dest), entry)
    return report


def _export_hf(src: Path, dest: Path, header: dict[str, Any], input_folder: Path,
               kept: Callable[[], Iterator[tuple[dict[str, Any], Prepared]]], n_rejected: int,
               flagged: list[tuple[Any, str]], *, overwrite: bool, license: str | None,
               scores: str | os.PathLike | None, rejected_file: str | None,
               with_images: bool, dataset_info: bool = True) -> ExportReport:
    """The ``hf`` folder (``export_hf``): built beside ``dest``, then renamed into place."""
    import shutil
    import tempfile

    from mminstruct.export import hf as hf
    from mminstruct.generate.manifest import find_manifest
    from mminstruct.quality.report import report_path_for
    from mminstruct.data.records import read_json_file

    license = (license or hf.DEFAULT_LICENSE).strip()
    if not license or any(c.isspace() for c in license):
        raise ConfigError(f"--license {license!r} is not a licence id (e.g. cc-by-4.0, mit, other)")
    scores_path = Path(scores) if scores is not None else hf.scores_path_for(src)
    by_id = hf.read_scores(scores_path) if scores_path is not None else {}
    aspects = sorted({a for r in by_id.values() for a in (r.get("scores") or {})})
    run = str(header.get("run") or src.stem)
    mode = str(header.get("mode") or "")
    multi: list[tuple[Any, str]] = []

    def rows() -> Iterator[tuple[dict[str, Any], Path | None, Any]]:
        for s, p in kept():
            if len(p.images) > 1:
                multi.append((p.id, f"{len(p.images)} images: the hf export holds one per row"))
                continue
            llava = _llava_record(p, PathPolicy(True, input_folder))
            share = _sharegpt_record(p, PathPolicy(True, input_folder))
            row: dict[str, Any] = {
                "id": str(p.id), "conversations": llava["conversations"],
                "messages": share["messages"], "subgroup": str(s.get("keyword") or ""),
                "mode": mode, "source_run": run,
                "prompt_idx": s.get("prompt_idx") if isinstance(s.get("prompt_idx"), int) else None}
            if aspects:
                line = by_id.get(str(p.id)) or {}
                sc = line.get("scores") or {}
                row["scores"] = {a: (int(sc[a]) if a in sc else None) for a in aspects}
                overall = line.get("overall")
                row["overall"] = float(overall) if isinstance(overall, (int, float)) else None
            yield row, (p.images[0] if p.images else None), p.id

    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        result = hf.write_hf(rows(), tmp, aspects)
        result.scores = scores_path
        left_out = flagged + multi + result.unreadable
        manifest_path = find_manifest(src)
        manifest = read_json_file(manifest_path) if manifest_path is not None else None
        qpath = report_path_for(src)
        quality = None
        if qpath.is_file():
            try:
                with open(qpath, encoding="utf-8") as f:
                    quality = json.load(f).get("summary")
            except (OSError, ValueError) as e:
                raise DataFileError(f"{qpath}: the quality report cannot be read: {e}") from e
        command = hf.canonical_command(src, dest, rejected_file=rejected_file, license=license,
                                       scores=scores_path)
        card = hf.card_text(rows=result.rows, result=result, license=license, header=header,
                            manifest=manifest if isinstance(manifest, dict) else None,
                            quality=quality, per_subgroup=result.per_subgroup,
                            rejected=n_rejected, flagged=len(left_out), command=command,
                            scores_summary=result.score_means(), pretty_name=dest.name)
        (tmp / hf.CARD).write_text(card, encoding="utf-8")
        name = _dataset_name(dest)
        if dataset_info:
            atomic_write_json(tmp / DATASET_INFO, {name: hf.llamafactory_entry()})
        os.chmod(tmp, 0o755)
        hf.place(tmp, dest, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report = ExportReport(dest, "hf", result.rows, n_rejected, left_out, with_images, "embedded",
                          None, dest / DATASET_INFO if dataset_info else None,
                          name if dataset_info else None)
    report.note = (f"{len(result.shards)} Parquet shard(s) and a dataset card; publish with: "
                   f"hf upload USER/NAME {dest} --repo-type dataset")
    return report


# ----------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m mminstruct.export",
                      description="Export a generated-data file (rejected samples left out) to "
                                  "MM-Gen, LLaVA or LLaMA-Factory ShareGPT JSON, with a "
                                  "dataset_info.json entry for LLaMA-Factory beside it, or to a "
                                  "Hugging Face dataset folder (hf: Parquet + dataset card).")
    p.add_argument("--generated_file", required=True, help="an output of data_generator")
    p.add_argument("--format", required=True, help=f"one of: {', '.join(EXPORT_FORMATS)}")
    p.add_argument("--output", required=True, help="the export file to write (hf: the folder)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--absolute_paths", action="store_true", help="write absolute image paths")
    where.add_argument("--image_root", help="write image paths relative to this folder (the "
                       "trainer's image folder / media_dir); default: the output's folder")
    p.add_argument("--rejected", help="JSON with the sample ids to leave out: a list, or the "
                   "workspace's {output file name: [ids]}")
    p.add_argument("--scores", default=None,
                   help="a judge's scores file (python -m mminstruct.judge): for --min_score and, "
                        "with hf, added as columns; default: manifests/<run>.scores.jsonl beside "
                        "the run, if there")
    p.add_argument("--min_score", type=float, help="leave out the samples the judge scored "
                   "below this overall score (unjudged samples are kept)")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--no_dataset_info", action="store_true",
                   help="do not write the dataset_info.json entry")
    hf = p.add_argument_group("hf (a Hugging Face dataset folder: --output is the folder)")
    hf.add_argument("--license", default=None,
                    help="the dataset card's licence id (Hub ids: cc-by-4.0, mit, …; default other)")
    p.add_argument("--debug", action="store_true", help="debug logging")
    return p


def run(args: argparse.Namespace) -> int:
    get_format(args.format)
    rejected = load_rejected(args.rejected, args.generated_file) if args.rejected else set()
    if args.min_score is not None:  # a filter before any format: the low scores join the rejected
        if not args.scores:
            raise ConfigError("--min_score needs --scores (the judge's scores file)")
        from mminstruct.quality.scores import below, read_scores

        low = below(read_scores(args.scores), args.min_score)
        print(f"{len(low)} sample(s) scored below {args.min_score:g} left out", file=sys.stderr)
        rejected |= set(low)
    report = export_file(args.generated_file, args.output, args.format, rejected=rejected,
                         absolute_paths=args.absolute_paths, image_root=args.image_root,
                         overwrite=args.overwrite, dataset_info=not args.no_dataset_info,
                         license=args.license,
                         scores=args.scores if get_format(args.format).folder else None,
                         rejected_file=args.rejected)
    print(report.summary(), file=sys.stderr)
    print(report.dest)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
