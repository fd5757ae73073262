"""Step 1: a data file + a candidate image pool + keywords → an MM-Gen task file.

``TaskFileConfig`` is the validated configuration (the command line and the app build one);
``build_task_file(config)`` does the work and returns a ``TaskBuild`` (the ``TaskFile``, both
partitions and a report of everything skipped and why); ``generate_task_file(config)`` also writes
``OUTPUT/{output_prefix}_{YYYY_mm_dd_HH:MM:SS}.json`` and returns its path.

What it does: load the data file (``records.load_data_file``; bad records are skipped and reported),
embed each record's first image (records without one stay in ``samples`` but join no subgroup),
collect the candidate pool (``candidate_folder``, recursive, and/or ``candidate_file``: a text file
of paths, one per line, or a LLaVA data file), embed it the same way, and partition both by the
keywords: argmax (``min_similarity`` sends low scorers to "unassigned"), or for the candidates with
``candidates_per_keyword`` K, the K most similar per keyword. The file has exactly MM-Gen's keys;
extras sit beside them (per subgroup ``reference_scores`` / ``reference_margins`` /
``candidate_scores``, and a top-level ``mminstruct`` block), so an MM-Gen reader still works.

Relative paths given in the config (data file, candidate folder/file) are looked up in the input
folder first, then in the current folder. Candidate paths in the task file are relative to the
input folder; entries outside it are refused unless ``allow_outside_paths``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from mminstruct import __version__
from mminstruct.cli import Setting, setting, settings_of
from mminstruct.embed.clip import (DEFAULT_CLIP_MODEL, ModelSpec, check_precision, embed_keywords, parse_model_spec,
                   parse_templates, resolve_device)
from mminstruct.errors import ConfigError, DataFileError, ImageError, InputError, UnsafePathError
from mminstruct.embed.image_embed import embed_images
from mminstruct.data.formats import (RecordSamples, Subgroup, TaskFile, check_file_prefix,
                                     save_task_file)
from mminstruct.data.records import DataFile, load_data_file
from mminstruct.data.images import list_image_files, resolve_image_path
from mminstruct.partition.assign import Partition, TopK, assign_keywords, normalise_keywords, top_k_per_keyword

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (stage, done, total)


def _int_field(name: str, value: Any, minimum: int, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


@dataclass(kw_only=True)
class TaskFileConfig:
    """Everything step 1 needs. Validated on construction (``ConfigError`` naming the bad value)."""

    data_file: str | os.PathLike
    keywords: Sequence[str]
    input_folder: str | os.PathLike | None = None  # default: the data file's folder
    output_folder: str | os.PathLike = "."
    output_prefix: str = setting("task_file", section="mmgen", help="file name prefix: "
                                 "OUTPUT/{prefix}_{YYYY_mm_dd_HH:MM:SS}.json")
    clip_model: str = setting(  # MM-Gen's flag: --model_name
        DEFAULT_CLIP_MODEL, section="mmgen", flag="model_name",
        help="open_clip model: ARCH:TAG, ARCH:/path/checkpoint.pt, CONFIG.json:/path/checkpoint.pt, "
        "hf-hub:ORG/NAME or demo-charts (default %(default)s)")
    batch_size: int = setting(64, section="mmgen", min=1, help="images per batch (default "
                              "%(default)s)")
    gpu: int | None = setting(0, section="mmgen", min=-1,  # None or negative: CPU
                              help="CUDA device number; the CPU is used when it does not exist "
                              "(-1: CPU)")
    image_folder: str | None = None  # default: the data file's own image_folder key
    candidate_folder: str | os.PathLike | None = None
    candidate_file: str | os.PathLike | None = None
    candidates_per_keyword: int | None = setting(
        None, section="new", min=1, metavar="K", ui_max=1_000_000,
        help="take the K most similar candidates per keyword instead of the argmax")
    #: the app's slider starts at ``ui_default`` and shows from ``ui_min``
    min_similarity: float | None = setting(
        None, section="new", min=-1.0, max=1.0, ui_min=-0.2, ui_step=0.005, ui_default=0.2,
        help="images less similar than this to every keyword are left unassigned")
    templates: Sequence[str] = ()
    allow_outside_paths: bool = False
    cache_dir: str | os.PathLike | None = None  # default: $MMINSTRUCT_CACHE_DIR or ~/.cache/mminstruct
    num_workers: int | None = setting(
        None, section="new", min=0,
        help="image decoding workers (default: with the model on a GPU, CPU cores − 1; on the "
        "CPU, cores − 1 up to 4, none on 2 cores)")
    #: Image embedding precision: fp32, bf16, int8 (CPU) or auto (see ``image_embed.encode_batch``).
    precision: str = "auto"
    #: Embed the candidate pool on Ray (``local``, ``auto`` or ``HOST:PORT``): callers hand the
    #: config to ``mminstruct.distributed.embed.generate_task_file``; None embeds here.
    ray_address: str | None = None
    spec: ModelSpec = field(init=False, repr=False)  # clip_model, parsed

    def __post_init__(self) -> None:
        if not isinstance(self.data_file, (str, os.PathLike)) or not str(self.data_file).strip():
            raise ConfigError("data_file is required (a LLaVA-format JSON or JSONL file)")
        self.keywords = self._check_keywords(self.keywords)
        check_file_prefix(self.output_prefix, "output_prefix")
        low = {n: int(s.min) for n, s in TASK_SETTINGS.items()  # type: ignore[arg-type]
               if s.kind == "int" and s.min is not None}  # the declarations' minimums
        self.batch_size = _int_field("batch_size", self.batch_size, low["batch_size"])
        if self.gpu is not None:
            self.gpu = _int_field("gpu", self.gpu, low["gpu"])
        self.candidates_per_keyword = _int_field("candidates_per_keyword",
                                                 self.candidates_per_keyword,
                                                 low["candidates_per_keyword"], optional=True)
        self.num_workers = _int_field("num_workers", self.num_workers, low["num_workers"],
                                      optional=True)
        if not isinstance(self.precision, str):
            raise ConfigError(f"precision must be a string, got {self.precision!r}")
        self.precision = check_precision(self.precision.strip().lower())
        if self.min_similarity is not None:
            v = self.min_similarity
            test, what = TASK_SETTINGS["min_similarity"].rule()  # type: ignore[misc]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) \
                    or not test(v):
                raise ConfigError(f"min_similarity must be a number {what}, got {v!r}")
            self.min_similarity = float(v)
        if isinstance(self.templates, str):
            self.templates = [self.templates]
        self.templates = parse_templates(self.templates)
        if self.ray_address is not None:
            if not isinstance(self.ray_address, str):
                raise ConfigError(f"ray_address must be a string, got {self.ray_address!r}")
            self.ray_address = self.ray_address.strip() or None
        self.spec = parse_model_spec(self.clip_model)

    @staticmethod
    def _check_keywords(keywords: Any) -> list[str]:
        out = normalise_keywords(keywords)
        if not out:
            raise ConfigError("the keyword list is empty; give at least one keyword "
                              "(e.g. --keywords 'bar chart' 'pie chart')")
        return out



#: Step 1's declared settings (``mminstruct.cli.Setting``), by name: the command line's flags,
#: ``TaskFileConfig``'s checks and, with ``PARTITION_SETTINGS``, the app's partition fields.
TASK_SETTINGS: dict[str, Setting] = settings_of(TaskFileConfig)

#: The app's partition fields: step 1's minimum similarity and K, and the app's own
#: low-margin flag (``PartitionSettings`` and the Partition page read them).
PARTITION_SETTINGS: dict[str, Setting] = {
    "min_similarity": TASK_SETTINGS["min_similarity"],
    "candidates_per_keyword": TASK_SETTINGS["candidates_per_keyword"],
    "low_margin": Setting(name="low_margin", kind="float", default=0.01, ui_min=0.0, ui_max=0.2,
                          ui_step=0.001, help="an image whose best keyword beats the runner-up "
                          "by less than this is flagged as uncertain"),
}


def partition_widget(name: str) -> dict[str, Any]:
    """The Partition page's field for ``name``: ``min_value``, ``max_value`` (and ``step`` for a
    slider)."""
    return PARTITION_SETTINGS[name].widget()

@dataclass
class BuildReport:
    """What was used, skipped and why; ``summary()`` is what the command line prints."""

    data_summary: str = ""
    no_image: list[int] = field(default_factory=list)  # sample indices without an image
    reference_failures: list[tuple[int, str]] = field(default_factory=list)  # (sample idx, reason)
    #: sample idx → "record N (id …)", how every other bad record of the data file is named
    record_labels: dict[int, str] = field(default_factory=dict)
    candidate_problems: list[tuple[str, str]] = field(default_factory=list)  # (entry, reason)
    unassigned_reference: list[int] = field(default_factory=list)
    unassigned_candidates: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self, limit: int = 10) -> str:
        lines = [self.data_summary] if self.data_summary else []

        def block(title: str, items: Sequence[Any]) -> None:
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines.extend(f"  {x}" for x in items[:limit])
                if len(items) > limit:
                    lines.append(f"  … and {len(items) - limit} more")

        block("samples without an image (kept in samples, in no subgroup)",
              [f"sample {i}" for i in self.no_image])
        block("reference images that could not be embedded (in no subgroup)",
              [f"{self.record_labels.get(i, f'sample {i}')}: {why}"
               for i, why in self.reference_failures])
        block("candidate images skipped", [f"{e}: {why}" for e, why in self.candidate_problems])
        block("reference samples under min_similarity (unassigned)",
              [f"sample {i}" for i in self.unassigned_reference])
        block("candidate images under min_similarity (unassigned)", self.unassigned_candidates)
        lines.extend(self.notes)
        return "\n".join(lines)


@dataclass
class TaskBuild:
    task: TaskFile
    data: DataFile
    reference: Partition  # rows: reference_rows
    reference_rows: list[int]  # sample index of each partition row
    candidate_paths: list[str]  # as written in the task file, one per candidate row
    candidates: Partition | None
    candidate_topk: TopK | None
    report: BuildReport


# ----------------------------------------------------------------------------------------------
# Paths


def _locate(value: str | os.PathLike, input_root: Path, what: str, want_dir: bool = False) -> Path:
    p = Path(value).expanduser()
    places = [p] if p.is_absolute() else [input_root / p, Path.cwd() / p]
    for cand in places:
        if cand.is_dir() if want_dir else cand.is_file():
            return cand.resolve()
    kind = "folder" if want_dir else "file"
    where = " or ".join(str(c) for c in dict.fromkeys(places))
    raise DataFileError(f"{what} {str(value)!r} not found (no {kind} at {where})")


def _relative(path: Path, input_root: Path, allow_outside: bool) -> str:
    full = path.resolve()
    if full.is_relative_to(input_root):
        return full.relative_to(input_root).as_posix()
    if allow_outside:
        return str(full)
    raise UnsafePathError(f"{full} is outside the input folder {input_root} "
                          "(pass --allow_outside_paths to allow it)")


def collect_candidates(config: TaskFileConfig, input_root: Path
                       ) -> tuple[list[str], list[Path], list[tuple[str, str]]]:
    """The candidate pool: (task-file paths, absolute paths, problems), de-duplicated in order."""
    entries: list[tuple[str, Path]] = []
    problems: list[tuple[str, str]] = []
    allow = config.allow_outside_paths
    if config.candidate_folder is not None:
        folder = _locate(config.candidate_folder, input_root, "candidate folder", want_dir=True)
        if not allow and not folder.is_relative_to(input_root):
            raise UnsafePathError(f"candidate folder {folder} is outside the input folder {input_root} "
                                  "(pass --allow_outside_paths to allow it)")
        files = list_image_files(folder)
        if not files:
            problems.append((str(folder), "no image files in the candidate folder"))
        for f in files:
            try:
                entries.append((_relative(f, input_root, allow), f))
            except UnsafePathError as e:  # a symlink pointing outside
                problems.append((str(f), str(e)))
    if config.candidate_file is not None:
        cf = _locate(config.candidate_file, input_root, "candidate file")
        if cf.suffix.lower() in (".json", ".jsonl", ".ndjson"):
            data = load_data_file(cf, input_folder=input_root, allow_outside_paths=allow)
            problems += [(f"{cf.name} {p.index}" if p.id is None else f"{cf.name} {p.index} (id {p.id!r})",
                          p.reason) for p in data.report.problems]
            raw = [(img, data.image_root) for rec in data.records for img in rec.images]
        else:
            try:
                text = cf.read_text(encoding="utf-8-sig")
            except (OSError, UnicodeDecodeError) as e:
                raise DataFileError(f"candidate file {cf} cannot be read as UTF-8 text: {e}") from e
            raw = [(ln.strip(), input_root) for ln in text.splitlines()
                   if ln.strip() and not ln.lstrip().startswith("#")]
            if not raw:
                problems.append((str(cf), "the candidate file lists no paths"))
        for entry, root in raw:
            try:
                full = resolve_image_path(root, entry, allow_outside=allow)
                entries.append((_relative(full, input_root, allow), full))
            except (UnsafePathError, ImageError) as e:
                problems.append((entry, str(e)))
    seen: set[Path] = set()
    rel_out: list[str] = []
    abs_out: list[Path] = []
    for rel, full in entries:
        if full not in seen:
            seen.add(full)
            rel_out.append(rel)
            abs_out.append(full)
    return rel_out, abs_out, problems


# ----------------------------------------------------------------------------------------------
# Building


def _round(xs: np.ndarray | Sequence[float]) -> list[float]:
    return [round(float(x), 4) for x in xs]


def build_task_file(config: TaskFileConfig, progress: Progress | None = None) -> TaskBuild:
    """Load, embed, partition and assemble the task file (not written; see generate_task_file).
    ``progress(stage, done, total)`` is called with stage "reference images" / "candidate images"."""
    if config.input_folder is not None and str(config.input_folder).strip():
        input_root = Path(config.input_folder).expanduser().resolve()
        if not input_root.is_dir():
            raise DataFileError(f"input folder {str(config.input_folder)!r} does not exist")
    else:
        input_root = None
    data_path = _locate(config.data_file, input_root or Path.cwd(), "data file")
    input_root = input_root or data_path.parent
    data = load_data_file(data_path, input_folder=input_root, image_folder=config.image_folder,
                          allow_outside_paths=config.allow_outside_paths)
    report = BuildReport(data_summary=data.report.summary())
    if not data.records:
        raise DataFileError(f"{data_path}: no usable record ({data.report.skipped} skipped; "
                            f"first: {data.report.problems[0] if data.report.problems else 'none'})")
    cand_rel, cand_abs, report.candidate_problems = collect_candidates(config, input_root)

    device = resolve_device(config.gpu)
    common = dict(batch_size=config.batch_size, num_workers=config.num_workers,
                  cache=config.cache_dir, device=device, precision=config.precision)

    def stage(name: str) -> Callable[[int, int], None] | None:
        return (lambda done, total: progress(name, done, total)) if progress else None

    ref_rows = [i for i, r in enumerate(data.records) if r.images]
    report.no_image = [i for i, r in enumerate(data.records) if not r.images]
    ref = embed_images([data.image_path(data.records[i]) for i in ref_rows], config.spec,
                       progress=stage("reference images"), **common)
    report.reference_failures = [(ref_rows[j], why) for j, why in _failed_rows(ref)]
    report.record_labels = {i: data.records[i].label for i, _ in report.reference_failures}
    ref_rows = [ref_rows[j] for j in ref.ok.tolist()]
    if not ref_rows:
        raise DataFileError(f"{data_path}: no reference sample has an image that could be embedded "
                            f"({len(report.no_image)} without an image, "
                            f"{len(report.reference_failures)} unreadable)")
    cand = embed_images(cand_abs, config.spec, progress=stage("candidate images"), **common) \
        if cand_abs else None
    if cand is not None:
        report.candidate_problems += [(cand_rel[j], why) for j, why in _failed_rows(cand)]
        cand_rel = [cand_rel[j] for j in cand.ok.tolist()]
    kw_vecs = embed_keywords(config.keywords, config.spec, templates=config.templates,
                             cache=config.cache_dir, device=device)

    ref_part = assign_keywords(ref.vectors, kw_vecs, config.min_similarity, config.keywords)
    report.unassigned_reference = [ref_rows[j] for j in ref_part.unassigned().tolist()]
    cand_part = topk = None
    if cand is not None and len(cand_rel):
        cand_part = assign_keywords(cand.vectors, kw_vecs, config.min_similarity, config.keywords)
        if config.candidates_per_keyword:
            topk = select_top_k(cand.vectors, kw_vecs, config)
        else:
            report.unassigned_candidates = [cand_rel[j] for j in cand_part.unassigned().tolist()]

    subgroups = _subgroups(config, ref_part, ref_rows, cand_part, topk, cand_rel, report)
    if not cand_abs:
        report.notes.append("no candidate pool given: every subgroup has empty candidate_image_paths;"
                            " pass --candidate_folder or --candidate_file to feed the prompt step")
    ref_set = {data.image_path(data.records[i]).resolve() for i in ref_rows}
    overlap = sum(1 for p in cand_abs if p in ref_set)
    if overlap:
        report.notes.append(f"{overlap} candidate image(s) are also reference images")

    task = TaskFile(
        image_folder=config.image_folder if config.image_folder is not None else data.image_folder,
        dataset_description=data.dataset_description,
        subgroups=subgroups,
        samples=RecordSamples(data.records),  # each made as it is written
        extra={"mminstruct": _meta_block(config, data, input_root, report, ref.vectors.shape[1])},
    )
    return TaskBuild(task, data, ref_part, ref_rows, cand_rel, cand_part, topk, report)


#: From this many candidates on, top-K goes through a cached faiss index (mminstruct.partition.retrieval)
#: instead of one brute-force similarity matrix; both apply the same overlap rule.
FAISS_MIN_POOL = 100_000


def select_top_k(vectors: np.ndarray, kw_vecs: np.ndarray, config: TaskFileConfig,
                 faiss_min_pool: int = FAISS_MIN_POOL) -> TopK:
    """The K most similar candidates per keyword (``partition.resolve_overlaps`` for overlaps)."""
    k = int(config.candidates_per_keyword or 0)
    if len(vectors) < faiss_min_pool:
        return top_k_per_keyword(vectors, kw_vecs, k, config.keywords, config.min_similarity)
    from mminstruct.embed.clip import default_cache_dir
    from mminstruct.partition.retrieval import CandidateIndex
    from mminstruct.partition.retrieval import top_k_per_keyword as faiss_top_k

    index = CandidateIndex.build_or_load(vectors, Path(config.cache_dir or default_cache_dir()) / "faiss")
    log.info("top-%d per keyword from a %s index over %d candidates (%s)", k, index.kind,
             len(vectors), "cached" if index.from_cache else "built")
    return faiss_top_k(index, kw_vecs, k, keywords=config.keywords,
                       min_similarity=config.min_similarity, rerank_with=vectors)


def _failed_rows(result: Any) -> list[tuple[int, str]]:
    return [(j, why) for j, (_, why) in zip(result.failed, result.failures)]


def _subgroups(config: TaskFileConfig, ref_part: Partition, ref_rows: list[int],
               cand_part: Partition | None, topk: TopK | None, cand_rel: list[str],
               report: BuildReport) -> list[Subgroup]:
    out: list[Subgroup] = []
    ref_groups = ref_part.groups()
    cand_groups = cand_part.groups() if cand_part is not None else {}
    for j, kw in enumerate(config.keywords):
        rows = ref_groups[kw]
        extra: dict[str, Any] = {"reference_scores": _round(ref_part.scores[rows, j]),
                                 "reference_margins": _round(ref_part.margin[rows])}
        if topk is not None:
            c_rows, c_scores = topk.ids[j].tolist(), topk.scores[j]
        elif cand_part is not None:
            c_rows = cand_groups[kw]
            c_scores = cand_part.scores[c_rows, j]
        else:
            c_rows, c_scores = [], []
        extra["candidate_scores"] = _round(c_scores)
        out.append(Subgroup(kw, [ref_rows[r] for r in rows], [cand_rel[r] for r in c_rows], extra))
        if not rows:
            report.notes.append(f"keyword {kw!r} got no reference sample: the prompt step will plan "
                                "no prompt for it")
        if cand_part is not None and not c_rows:
            report.notes.append(f"keyword {kw!r} got no candidate image")
    if topk is not None and topk.short:
        short = ", ".join(f"{kw!r}: {n}" for kw, n in topk.short.items())
        report.notes.append(f"fewer than {topk.k} candidates for some keywords ({short})")
    return out


def task_metadata(*, source: str, model: str, keywords: Sequence[str], templates: Sequence[str],
                  min_similarity: float | None, candidates_per_keyword: int | None, data: DataFile,
                  input_root: str | os.PathLike, skipped_reference: list[dict[str, Any]],
                  skipped_candidates: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
    """The task file's ``mminstruct`` block — one layout for the command line and the app:
    what built it (``source``, model, keywords, templates, thresholds), from which files, what was
    skipped and why, plus what only one builder knows (``more``: the model identity, unassigned
    items, the app's exclusions and manual choices)."""
    return {
        "version": __version__,
        "created": datetime.now().isoformat(timespec="seconds"),
        "source": source,
        "model": model,
        "keywords": list(keywords),
        "templates": list(templates),
        "min_similarity": min_similarity,
        "candidates_per_keyword": candidates_per_keyword,
        "data_file": str(data.path),
        "input_folder": str(input_root),
        **more,
        "skipped": {
            "records": [{"index": p.index, "id": p.id, "reason": p.reason}
                        for p in data.report.problems],
            "samples_without_image": [i for i, r in enumerate(data.records) if not r.images],
            "reference_images": skipped_reference,
            "candidates": skipped_candidates,
        },
    }


def _meta_block(config: TaskFileConfig, data: DataFile, input_root: Path, report: BuildReport,
                dim: int) -> dict[str, Any]:
    return task_metadata(
        source="task_file_generator", model=config.spec.raw, keywords=config.keywords,
        templates=config.templates, min_similarity=config.min_similarity,
        candidates_per_keyword=config.candidates_per_keyword, data=data, input_root=input_root,
        skipped_reference=[{"sample_idx": i, "reason": why} for i, why in report.reference_failures],
        skipped_candidates=[{"path": e, "reason": why} for e, why in report.candidate_problems],
        model_identity=config.spec.identity(config.cache_dir), embedding_dim=int(dim),
        unassigned={"reference_sample_idx": report.unassigned_reference,
                    "candidate_image_paths": report.unassigned_candidates})


def generate_task_file(config: TaskFileConfig, progress: Progress | None = None,
                       now: datetime | None = None) -> Path:
    """Build the task file, log the report, and write it (atomically) to the output folder."""
    build = build_task_file(config, progress)
    for line in build.report.summary().splitlines():
        log.info("%s", line)
    counts = ", ".join(f"{s.keyword!r}: {len(s.reference_sample_idx)} ref / "
                       f"{len(s.candidate_image_paths)} cand" for s in build.task.subgroups)
    log.info("subgroups: %s", counts)
    try:
        path = save_task_file(build.task, config.output_folder, config.output_prefix, now)
    except OSError as e:
        raise InputError(f"cannot write the task file to {config.output_folder}: {e}") from e
    log.info("task file written to %s", path)
    return path
