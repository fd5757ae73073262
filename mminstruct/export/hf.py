"""The ``hf`` export: a folder that ``datasets.load_dataset(OUT_DIR)`` reads and ``hf upload`` publishes.

::

    OUT_DIR/
      README.md                        the dataset card: YAML header + provenance
      data/train-00000-of-00002.parquet  ≤ ``SHARD_BYTES`` each, images embedded
      dataset_info.json                LLaMA-Factory's entry (``dataset_dir=OUT_DIR``)

Rows (``features``): ``id``, ``image`` (``datasets.Image()``, the file's bytes embedded; None for
text-only samples), ``conversations`` (LLaVA: from/value, ``<image>\\n`` first in the first human
turn), ``messages`` (chat template: role/content, ``<image>`` first in the first user turn, as
LLaMA-Factory's ShareGPT loader counts it), ``subgroup`` (the keyword), ``mode`` (the prompt
mode), ``source_run``, ``prompt_idx``, and — when a judge's scores file is given or lies beside
the run (``scores_path_for``) — ``scores`` (one int per rubric aspect) and ``overall``. Samples
rejected in review are left out; samples the export rules flag (``export.prepare``), or whose
image cannot be read, are left out and listed in the report.

The card's YAML header declares ``configs`` (data files), ``dataset_info`` (features, split
sizes), ``license`` (``license=``; Hub licence ids), ``task_categories``, ``size_categories``,
``tags``; its body records where the data came from: the generator model, the prompt mode, the
keywords and samples per subgroup, the quality summary (``manifests/<run>.quality.json``), the
judge's means, and the command that made it. The folder is built beside ``OUT_DIR`` and renamed
into place, so a failed export leaves nothing half-written; an existing ``OUT_DIR`` is replaced
only with ``overwrite``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mminstruct.errors import ConfigError

#: Largest Parquet shard, in bytes (the Hub's guidance for dataset files; images dominate).
SHARD_BYTES = 500 * 10**6
#: Rows per Parquet row group: small groups keep image datasets quick to stream from the Hub.
ROW_GROUP_ROWS = 100
DATA_DIR = "data"
SPLIT = "train"
CARD = "README.md"
#: The Hub's licence ids are the card's ``license``; ``other`` until the owner picks one.
DEFAULT_LICENSE = "other"
SCORES_SUFFIX = ".scores.jsonl"

_TASKS = {True: ["image-to-text", "image-text-to-text"],  # descriptions
          False: ["visual-question-answering", "image-text-to-text"]}
_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
          (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"))


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` value for ``n`` rows."""
    return next((name for limit, name in _SIZES if n < limit), "n>1T" if n >= 10**12 else "10M<n<100M")


def scores_path_for(generated_file: str | os.PathLike) -> Path | None:
    """A judge's scores file beside the run, if there is one: ``manifests/<stem>.scores.jsonl``
    (the sidecar folder) or ``<stem>.scores.jsonl`` next to the generated file."""
    from mminstruct.generate.manifest import sidecar_path

    p = Path(generated_file)
    for cand in (sidecar_path(p, SCORES_SUFFIX), p.with_name(p.stem + SCORES_SUFFIX)):
        if cand.is_file():
            return cand
    return None


def read_scores(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """A judge's JSONL scores as id (a string, as the rows' ``id`` column) → line: the one reader,
    ``quality.scores.read_scores`` (a bad line is one error naming it)."""
    from mminstruct.quality.scores import read_scores as read

    return {str(k): v for k, v in read(path).items()}


def features(aspects: list[str]) -> Any:
    """The rows' ``datasets.Features`` (with ``scores``/``overall`` when ``aspects``)."""
    from datasets import Features, Image, List, Value

    cols: dict[str, Any] = {
        "id": Value("string"),
        "image": Image(),
        "conversations": List({"from": Value("string"), "value": Value("string")}),
        "messages": List({"role": Value("string"), "content": Value("string")}),
        "subgroup": Value("string"),
        "mode": Value("string"),
        "source_run": Value("string"),
        "prompt_idx": Value("int64"),
    }
    if aspects:
        cols["scores"] = {a: Value("int64") for a in aspects}
        cols["overall"] = Value("float64")
    return Features(cols)


def llamafactory_entry() -> dict[str, Any]:
    """LLaMA-Factory's ``dataset_info.json`` entry for the folder (the Parquet files of ``data/``;
    the ``messages`` column, images decoded by ``datasets``)."""
    return {"file_name": DATA_DIR, "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "image"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                     "assistant_tag": "assistant"}}


@dataclass
class HFResult:
    rows: int
    shards: list[Path]
    bytes: int
    aspects: list[str]
    scores: Path | None
    unreadable: list[tuple[Any, str]]
    per_subgroup: Counter = field(default_factory=Counter)
    score_sums: dict[str, list[float]] = field(default_factory=dict)  # aspect → [sum, count]

    def score_means(self) -> dict[str, float]:
        return {k: s / n for k, (s, n) in self.score_sums.items() if n}


class _ShardWriter:
    """Parquet shards of at most ``limit`` bytes (estimated from what goes in), written with the
    features in the schema metadata (what ``datasets`` reads back as ``Image()``)."""

    def __init__(self, folder: Path, feats: Any, limit: int):
        import pyarrow as pa

        self.folder, self.feats, self.limit = folder, feats, limit
        meta = {"huggingface": json.dumps({"info": {"features": feats.to_dict()}})}
        self.schema = pa.schema(feats.arrow_schema, metadata=meta)
        self.writer: Any = None
        self.paths: list[Path] = []
        self.size = 0
        self.total = 0
        self.batch: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any], nbytes: int) -> None:
        if self.writer is not None and self.size + nbytes > self.limit:
            self._flush()
            self.writer.close()
            self.writer = None
        if self.writer is None:
            import pyarrow.parquet as pq

            path = self.folder / f"{SPLIT}-{len(self.paths):05d}.parquet"
            self.paths.append(path)
            self.writer = pq.ParquetWriter(path, self.schema)
            self.size = 0
        self.batch.append(self.feats.encode_example(row))
        self.size += nbytes
        self.total += nbytes
        if len(self.batch) >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self.batch:
            self.writer.write_table(pa.Table.from_pylist(self.batch, schema=self.schema))
            self.batch = []

    def close(self) -> list[Path]:
        """Close the last shard and name them ``train-KKKKK-of-NNNNN.parquet``."""
        if self.writer is not None:
            self._flush()
            self.writer.close()
        n = len(self.paths)
        final = []
        for k, p in enumerate(self.paths):
            dest = p.with_name(f"{SPLIT}-{k:05d}-of-{n:05d}.parquet")
            p.rename(dest)
            final.append(dest)
        return final


def write_hf(rows: Any, folder: Path, aspects: list[str], *, shard_bytes: int | None = None
             ) -> HFResult:
    """Write ``rows`` — (row dict without image bytes, image path or None, sample id) — as
    Parquet shards under ``folder/data``; an unreadable image leaves its row out (reported)."""
    feats = features(aspects)
    data = folder / DATA_DIR
    data.mkdir(parents=True)
    w = _ShardWriter(data, feats, shard_bytes or SHARD_BYTES)
    unreadable: list[tuple[Any, str]] = []
    per_subgroup: Counter = Counter()
    sums: dict[str, list[float]] = {}
    n = 0
    for row, image, sid in rows:
        nbytes = sum(len(m["value"]) for m in row["conversations"]) * 2 + 200
        if image is not None:
            try:
                blob = image.read_bytes()
            except OSError as e:
                unreadable.append((sid, f"image {image} cannot be read: {e.strerror or e}"))
                continue
            row["image"] = {"bytes": blob, "path": image.name}
            nbytes += len(blob)
        else:
            row["image"] = None
        w.add(row, nbytes)
        n += 1
        per_subgroup[row["subgroup"]] += 1
        judged = {**(row.get("scores") or {}), "overall": row.get("overall")} if aspects else {}
        for k, v in judged.items():
            if v is not None:
                acc = sums.setdefault(k, [0.0, 0])
                acc[0] += v
                acc[1] += 1
    shards = w.close()
    return HFResult(n, shards, w.total, aspects, None, unreadable, per_subgroup, sums)


def card_text(*, rows: int, result: HFResult, license: str, header: dict[str, Any],
              manifest: dict[str, Any] | None, quality: dict[str, Any] | None,
              per_subgroup: Counter, rejected: int, flagged: int, command: str,
              scores_summary: dict[str, float] | None, pretty_name: str) -> str:
    """The dataset card (README.md): YAML header from ``datasets``/``huggingface_hub``'s own
    writers, then the provenance."""
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, DatasetCardData

    from mminstruct.data.modes import parse_mode

    mode_name = str(header.get("mode") or "")
    try:
        descriptive = parse_mode(mode_name).is_description
    except ConfigError:
        descriptive = False
    data = DatasetCardData(license=license, task_categories=_TASKS[descriptive],
                           size_categories=[size_category(rows)], pretty_name=pretty_name,
                           tags=["synthetic", "mminstruct", "vision-language"])
    splits = SplitDict()
    splits.add(SplitInfo(name=SPLIT, num_bytes=result.bytes, num_examples=rows))
    info = DatasetInfo(features=features(result.aspects), splits=splits)
    DatasetInfosDict({"default": info}).to_dataset_card_data(data)
    MetadataConfigs({"default": {"data_files": [
        {"split": SPLIT, "path": f"{DATA_DIR}/{SPLIT}-*"}]}}).to_dataset_card_data(data)

    model = (manifest or {}).get("model") or header.get("model") or "unknown"
    lines = [f"# {pretty_name}", "",
             "Synthetic vision-language instruction data made with mminstruct (MM-Gen's pipeline: "
             "reference set → subgroups by keyword → prompts → generation → review).", "",
             "## Provenance", "",
             f"* Generator model: `{model}`",
             f"* Prompt mode: `{mode_name or 'unknown'}`",
             f"* Dataset description: {header.get('dataset_description') or '—'}",
             f"* Source run: `{header.get('run') or '—'}`; prompt file: "
             f"`{Path(str(header.get('prompt_file') or '—')).name}`",
             f"* Rows: {rows:,} ({rejected:,} rejected in review and {flagged:,} flagged by the "
             "export rules left out)",
             f"* Made with: `{command}`", "",
             "### Keywords (subgroups)", "", "| keyword | samples |", "|---|---:|"]
    lines += [f"| {kw or '—'} | {n:,} |" for kw, n in sorted(per_subgroup.items())]
    lines += ["", "### Quality", ""]
    if quality:
        flags = ", ".join(f"{k} {v:,}" for k, v in (quality.get("flags") or {}).items() if v) \
            or "none"
        lines.append(f"* Quality report: {quality.get('flagged', 0):,} of "
                     f"{quality.get('samples', 0):,} samples of the run flagged ({flags}).")
        q = quality.get("questions") or {}
        if "distinct_1" in q:
            lines.append(f"* Question diversity: distinct-1 {q['distinct_1']:.3f}, "
                         f"distinct-2 {q.get('distinct_2', 0):.3f}.")
    else:
        lines.append("* No quality report was found beside the run "
                     "(`mminstruct quality` writes one).")
    if scores_summary:
        means = ", ".join(f"{k} {v:.2f}" for k, v in scores_summary.items())
        lines.append(f"* Judge scores (means over the judged rows): {means}.")
    lines += ["", "## Columns", "",
              "`image` (embedded), `conversations` (LLaVA from/value), `messages` (role/content, "
              "`<image>` in the first user turn), `id`, `subgroup`, `mode`, `source_run`, "
              "`prompt_idx`" + (", `scores`, `overall` (the judge's)" if result.aspects else "")
              + ".", "",
              "## Use", "", "```python", "import datasets",
              "ds = datasets.load_dataset(\"path/to/this/folder\", split=\"train\")", "```", "",
              "LLaMA-Factory: `dataset_dir` = this folder, `dataset` = the entry in "
              "`dataset_info.json`.", "",
              "Publish: `hf upload USER/NAME . --repo-type dataset` (run in this folder).", ""]
    card = DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
    return str(card)


def canonical_command(src: Path, out_dir: Path, *, rejected_file: str | None, license: str,
                      scores: Path | None) -> str:
    parts = ["mminstruct", "export", "--generated_file", str(src), "--format", "hf",
             "--output", str(out_dir)]
    if rejected_file:
        parts += ["--rejected", rejected_file]
    if license != DEFAULT_LICENSE:
        parts += ["--license", license]
    if scores is not None:
        parts += ["--scores", str(scores)]
    return " ".join(shlex.quote(p) for p in parts)


def place(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    """Move the finished folder ``tmp`` to ``out_dir`` (the old one removed only after)."""
    old = None
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()  # an empty folder made for the export
    if out_dir.exists():
        if not overwrite:
            raise ConfigError(f"{out_dir} exists; pass --overwrite to replace it")
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
