"""From a selection on the map to generation: a subgroup of its own, and a run for some subgroups.

* ``selection_keys(emb, rows)``: rows of ``Embeddings.all_vectors`` (a box, lasso or click on the
  map, ticks in a gallery) → (reference sample indices, candidate paths): what the workspace stores.
* ``subgroup_from_selection(ws, emb, rows, name)``: those items become the manual subgroup
  ``name`` (``Workspace.new_subgroup``: kept across keyword edits, written to the task file like a
  keyword's subgroup, its name as the keyword). The caller saves the workspace.
* ``select_prompts(pf, keywords)``: the prompt file of some subgroups only — the same prompts, in
  the same order, so a run for one subgroup sends exactly what the full run would have sent for it.
* ``save_subgroup_prompts(ws, pf, keywords)`` and ``start_subgroup_run(ws, pf, keywords, …)``:
  write that file next to the others and launch it through ``runs.start_run``.

No streamlit here; the pages call these.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mminstruct.errors import ConfigError, choices_message
from mminstruct.data.formats import FILE_PREFIX_MAX, PromptFile, check_file_prefix, save_prompt_file


def selection_keys(emb: Any, rows: Iterable[int]) -> tuple[list[int], list[str]]:
    """Rows of ``emb.all_vectors`` → (reference sample indices, candidate paths), each sorted and
    without repeats. A row out of range is an error naming it."""
    n = int(emb.n)
    ref: set[int] = set()
    cand: set[str] = set()
    for r in rows:
        r = int(r)
        if not 0 <= r < n:
            raise ConfigError(f"row {r} is not on the map (it has rows 0–{n - 1})")
        kind, i = emb.locate(r)
        if kind == "reference":
            ref.add(int(emb.reference.sample_idx[i]))
        else:
            cand.add(emb.candidates.paths[i])
    return sorted(ref), sorted(cand)


def subgroup_from_selection(ws: Any, emb: Any, rows: Iterable[int], name: str) -> str:
    """Make the selected images the manual subgroup ``name``; returns the name as stored."""
    ref, cand = selection_keys(emb, rows)
    return ws.new_subgroup(name, ref, cand)


def subgroup_rows(ws: Any, emb: Any, name: str) -> np.ndarray:
    """Rows of ``emb.all_vectors`` assigned by hand to subgroup ``name`` (ascending)."""
    p = ws.settings.partition
    refs = {int(k) for k, v in p.manual_reference.items() if v == name}
    cands = {k for k, v in p.manual_candidates.items() if v == name}
    n_ref = len(emb.reference)
    out = [i for i, s in enumerate(emb.reference.sample_idx) if s in refs]
    out += [n_ref + i for i, c in enumerate(emb.candidates.paths) if c in cands]
    return np.asarray(out, dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# Runs for some subgroups only


def select_prompts(pf: PromptFile, keywords: Sequence[str]) -> PromptFile:
    """The prompts of ``keywords`` only (same order, same header); ``only`` records the choice
    and ``allocation`` / ``budgets`` keep the chosen subgroups' entries."""
    if isinstance(keywords, str):
        keywords = [keywords]
    present = list(dict.fromkeys(p.keyword for p in pf.prompts))
    if not keywords:
        raise ConfigError(f"choose at least one subgroup; the prompt file has: {', '.join(present)}")
    for kw in keywords:
        if kw not in present:
            raise ConfigError(choices_message("subgroup", kw, present))
    chosen = set(keywords)
    prompts = [p for p in pf.prompts if p.keyword in chosen]
    extra = dict(pf.extra)
    for key in ("allocation", "budgets"):
        if isinstance(extra.get(key), dict):
            extra[key] = {k: v for k, v in extra[key].items() if k in chosen}
    extra["only"] = [kw for kw in present if kw in chosen]
    extra["num_prompts"] = len(prompts)
    if pf.path is not None:
        extra["selected_from"] = str(pf.path)
    return PromptFile(pf.task_desc_path, pf.dataset_description, pf.num_icl_samples, pf.mode,
                      pf.min_gen_per_candidate, pf.total_gen, prompts, extra)


def _slug(keywords: Sequence[str]) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "-", "+".join(keywords)).strip("-")
    return (s or "subgroup")[:40].rstrip("-")


def subgroup_prefix(ws: Any, keywords: Sequence[str]) -> str:
    """``{prefix}-{keywords}``: the prefix of a subgroup run's prompt file and its name, checked
    by the file-name rule (``formats.check_file_prefix``) before anything is written."""
    prefix = check_file_prefix(ws.settings.prompts.file_prefix, "file prefix")
    name = f"{prefix}-{_slug(list(keywords))}"[:FILE_PREFIX_MAX].rstrip("._-")
    return check_file_prefix(name, "file prefix")


def save_subgroup_prompts(ws: Any, pf: PromptFile, keywords: Sequence[str]) -> Path:
    """Write the subgroups' prompt file under ``generated_prompts/`` as
    ``{prefix}-{keywords}_prompts_{stamp}.json`` (the workspace's last prompt file is unchanged)."""
    sub = select_prompts(pf, keywords)
    return save_prompt_file(sub, ws.root, subgroup_prefix(ws, sub.extra["only"]))


def start_subgroup_run(ws: Any, pf: PromptFile, keywords: Sequence[str], *,
                       name: str | None = None, api_key: str | None = None,
                       python: str | None = None) -> Any:
    """Launch a background run (``runs.start_run``) of the subgroups' prompts only. Returns its
    ``RunInfo``; the run's name defaults to ``{prefix}-{keywords}`` (``-2``, ``-3``… when taken)."""
    from mminstruct.app.runs import check_name, new_run_name, start_run, workspace_config

    # every name is checked before the prompt file is written: a refused name leaves no file
    run_name = check_name(name) if name else new_run_name(subgroup_prefix(ws, keywords), ws.root)
    sub = select_prompts(pf, keywords)
    workspace_config(ws, run_name, ws.prompts_dir / "check.json")  # the run's own checks
    path = save_prompt_file(sub, ws.root, subgroup_prefix(ws, sub.extra["only"]))
    cfg = workspace_config(ws, run_name, path)
    return start_run(ws.root, cfg, api_key, python=python)
