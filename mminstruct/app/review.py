"""Reviewing generated data: filter and search samples, find each sample's in-context sources,
and export what was kept (rejected samples left out) through ``mminstruct.export.formats`` (MM-Gen JSON,
LLaVA JSON or LLaMA-Factory ShareGPT JSON). No streamlit; the Review page calls these.

A sample's ``icl_indices`` index the task file's ``samples``; the task file is found through the
output's ``prompt_file`` header (its ``task_desc_path``). Rejections are the workspace's
(``WorkspaceSettings.rejected``: output file name → sample ids).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mminstruct.errors import ConfigError, DataFileError, choices_message
from mminstruct.data.formats import TaskFile, load_task_file
from mminstruct.export.formats import (DEFAULT_EXPORT_FORMAT, EXPORT_FORMATS, EXPORT_LABELS, ExportReport,
                     export_file, export_name, get_format, next_free_name)
from mminstruct.generate.jsonstream import PromptStream
from mminstruct.generate.output import GeneratedData, load_output, output_header

__all__ = ["DEFAULT_EXPORT_FORMAT", "EXPORT_FORMATS", "EXPORT_LABELS", "ExportReport", "Sources", "export_name",
           "export_reviewed", "get_format", "filter_samples", "next_free_name", "sample_text", "sources",
           "SCORE_SORTS", "below", "load_scores", "scores_path_for", "sort_and_filter_by_score"]

#: How the Review page may order samples by a judge's score.
SCORE_SORTS = ("file order", "lowest score first", "highest score first")


def load_generated(path: str | os.PathLike) -> GeneratedData:
    """A generated-data file for the Review page (``generate.output.load_output``)."""
    return load_output(path)


def sample_text(sample: dict[str, Any]) -> str:
    """Every turn's text, for searching."""
    return "\n".join(str(t.get("value", "")) for t in sample.get("conversations", [])
                     if isinstance(t, dict))


def filter_samples(samples: Sequence[dict[str, Any]], *, keywords: Iterable[str] = (),
                   query: str = "", rejected: Iterable[int] = (), show: str = "all"
                   ) -> list[dict[str, Any]]:
    """Samples matching: a keyword among ``keywords`` (all when empty), ``query`` as a
    case-insensitive substring of any turn, and ``show`` = all | kept | rejected."""
    if show not in ("all", "kept", "rejected"):
        raise ConfigError(choices_message("filter", show, ("all", "kept", "rejected")))
    kws, rej, q = set(keywords), set(rejected), query.strip().casefold()
    out = []
    for s in samples:
        if kws and s.get("keyword") not in kws:
            continue
        is_rej = s.get("id") in rej
        if (show == "kept" and is_rej) or (show == "rejected" and not is_rej):
            continue
        if q and q not in sample_text(s).casefold():
            continue
        out.append(s)
    return out


@dataclass
class Sources:
    """Where a generated file's samples came from: the task file and the images' root."""

    task: TaskFile | None
    input_folder: Path | None
    note: str = ""

    def reference(self, idx: int) -> dict[str, Any] | None:
        if self.task is None or not 0 <= idx < len(self.task.samples):
            return None
        return self.task.samples[idx]

    def reference_image(self, idx: int) -> Path | None:
        s = self.reference(idx)
        if s is None or self.input_folder is None:
            return None
        img = s.get("image_1") or s.get("image")
        if isinstance(img, list):
            img = img[0] if img else None
        if not isinstance(img, str):
            return None
        folder = self.task.image_folder if self.task else ""
        return self.input_folder / folder / img


def sources(output_path: str | os.PathLike) -> Sources:
    header = output_header(output_path)
    input_folder = Path(header["input_folder"]) if header.get("input_folder") else None
    prompt_file = header.get("prompt_file")
    if not prompt_file:
        return Sources(None, input_folder, "the output names no prompt file")
    try:
        pf = PromptStream.open(prompt_file).header
        task_path = Path(pf.task_desc_path)
        if not task_path.is_absolute() and input_folder is not None:
            task_path = input_folder / task_path
        return Sources(load_task_file(task_path), input_folder)
    except DataFileError as e:
        return Sources(None, input_folder, f"in-context sources unavailable: {e}")


def export_reviewed(src: str | os.PathLike, dest: str | os.PathLike, fmt: str, *,
                    rejected: Iterable[int] = (), absolute_paths: bool = False,
                    image_root: str | os.PathLike | None = None, overwrite: bool = False,
                    license: str | None = None) -> ExportReport:
    """Export the kept samples of ``src`` to ``dest`` (``mminstruct.export.formats.export_file``: image
    paths relative to ``dest``'s folder, or ``image_root``, or absolute; the ``hf`` format a folder
    with its card's ``license``; never overwriting unless asked — offer ``next_free_name(dest)``
    instead)."""
    return export_file(src, dest, fmt, rejected=rejected, absolute_paths=absolute_paths,
                       image_root=image_root, overwrite=overwrite,
                       license=license if get_format(fmt).folder else None)


# ----------------------------------------------------------------------------------------------
# A judge's scores (``mminstruct.quality.judge``)


def scores_path_for(output_path: str | os.PathLike) -> Path:
    """Where the app's judge runs write the scores of ``output_path`` (and Review looks):
    ``manifests/RUN.scores.jsonl`` beside the generated file."""
    from mminstruct.quality.judge import default_scores_path

    return default_scores_path(output_path)


def load_scores(path: str | os.PathLike) -> dict[Any, dict[str, Any]]:
    from mminstruct.quality.scores import read_scores

    return read_scores(path)


def score_of(rec: dict[str, Any] | None, aspect: str | None = None) -> float | None:
    """A sample's ``overall`` (``aspect`` None) or one aspect's score; None when unjudged."""
    if not rec:
        return None
    return rec.get("overall") if aspect is None else (rec.get("scores") or {}).get(aspect)


def below(scores: dict[Any, dict[str, Any]], threshold: float, aspect: str | None = None
          ) -> list[Any]:
    """Ids of the samples judged below ``threshold`` (overall, or ``aspect``): what "reject below"
    rejects."""
    from mminstruct.quality.scores import below as _below_ids

    return _below_ids(scores, threshold, aspect)


def sort_and_filter_by_score(samples: Sequence[dict[str, Any]],
                             scores: dict[Any, dict[str, Any]], *, aspect: str | None = None,
                             sort: str = "file order", at_most: float | None = None
                             ) -> list[dict[str, Any]]:
    """``samples`` ordered by score (``SCORE_SORTS``; unjudged samples last) and, with
    ``at_most``, only those scored at most that (overall, or ``aspect``)."""
    if sort not in SCORE_SORTS:
        raise ConfigError(choices_message("sort", sort, SCORE_SORTS))
    out = list(samples)
    if at_most is not None:
        out = [s for s in out if (v := score_of(scores.get(s.get("id")), aspect)) is not None
               and v <= at_most]
    if sort != "file order":
        sign = 1 if sort == "lowest score first" else -1

        def key(s: dict[str, Any]) -> tuple[int, float]:
            v = score_of(scores.get(s.get("id")), aspect)
            return (1, 0.0) if v is None else (0, sign * v)
        out.sort(key=key)  # stable: file order among equal scores
    return out
