"""The app's curation model over one workspace: embeddings of the reference set and the candidate
pool, a keyword partition that honours the user's exclusions and manual assignments, the task file
built from it, text search and the 2-D map. No streamlit; the pages call these.

The split follows what the app recomputes when: ``embed_workspace`` is slow the first time and
cached on disk (``image_embed.embed_images``, keyed by model and file fingerprint); the app runs it
only in its background job (``app.embed``), which stores the result with ``save_embeddings`` (one
content-addressed float16 ``.npy`` + a manifest per ``embedding_key``); the pages read it with
``load_embeddings`` (memory-mapped, nothing computed) and keep it in memory; ``keyword_vectors`` is cached text embeddings; ``curate`` (the partition with
overrides) is one float32 matrix product and runs on every keyword edit; ``build_task`` assembles
the MM-Gen task file from exactly what the user sees.

Overrides: an excluded reference sample stays in the task file's ``samples`` (indices must not
shift) but joins no subgroup; an excluded candidate is left out. A manual assignment puts an item
in the chosen subgroup whatever its scores say. In ``curate``'s arrays, group ``-1`` is
"unassigned" (under ``min_similarity``, or not among a keyword's top K) and ``-2`` "excluded".

Manual subgroups (``PartitionSettings.manual_subgroups``, made from a selection) come after the
keywords (group ``len(keywords) + j``): they hold only the items assigned to them by hand, and
go to the task file like a keyword's subgroup, their name as the keyword.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mminstruct.embed.clip import parse_model_spec, resolve_device
from mminstruct.embed.image_embed import embed_images
from mminstruct.errors import ConfigError, DataFileError, InputError
from mminstruct.data.formats import RecordSamples, Subgroup, TaskFile, save_task_file
from mminstruct.cache import content_key
from mminstruct.partition.assign import (UNASSIGNED, Partition, partition_from_scores, similarity_matrix,
                                         top_k_from_scores, top_similar)
from mminstruct.app.projection import project_2d
from mminstruct.embed.vectors import array_fingerprint
from mminstruct.data.records import DataFile, load_data_file, parse_once
from mminstruct.partition.taskfile import collect_candidates, task_metadata
from mminstruct.app.workspace import Workspace

EXCLUDED = -2
Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class ImageSet:
    """One side of the map: reference images (one per usable sample) or the candidate pool."""

    kind: str  # "reference" | "candidate"
    paths: list[str]  # relative to the input folder (the task / prompt file form)
    #: absolute paths as strings (``Embeddings.abs_path`` makes the Path of one): 210,000 Path
    #: objects were 67 MiB and 0.9 s of every first visit to the map
    abs_paths: list[str]
    vectors: np.ndarray  # float16 (n, dim), L2-normalised
    sample_idx: list[int] = field(default_factory=list)  # reference: index into samples
    failures: list[tuple[str, str]] = field(default_factory=list)
    
    def __len__(self) -> int:
        return len(self.paths)

    def float32(self) -> np.ndarray:
        """Every vector as a temporary float32 copy (not kept: 210,000 × 512 would hold 430 MB
        per server process; the hot paths read the float16 memory map in chunks instead)."""
        return np.asarray(self.vectors, dtype=np.float32)

    def rows32(self, rows: Any) -> np.ndarray:
        """Some rows as float32 (a copy of those rows only)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if not len(rows):
            return np.zeros((0, int(self.vectors.shape[1])), np.float32)
        return np.asarray(self.vectors[rows], dtype=np.float32)


@dataclass
class Embeddings:
    clip_model: str
    data: DataFile
    input_root: Path
    reference: ImageSet
    candidates: ImageSet
    problems: list[tuple[str, str]]  # candidate entries skipped while collecting the pool
    fingerprint: str = ""  # of all_vectors (the projection cache key)
    n_cached: int = 0
    n_computed: int = 0
    #: every row (reference first) when they come from one array (the job's memory-mapped file)
    source: np.ndarray | None = field(default=None, repr=False, compare=False)
    job_token: str = ""  # the embedding job that wrote the result read (``load_embeddings``)

    @property
    def n(self) -> int:
        return len(self.reference) + len(self.candidates)

    @property
    def all_vectors(self) -> np.ndarray:
        if self.source is not None and self.source.shape[0] == self.n:
            return self.source  # no copy: the memory map itself
        return np.concatenate([self.reference.vectors, self.candidates.vectors])

    def locate(self, row: int) -> tuple[str, int]:
        """A row of ``all_vectors`` → (kind, index within that set)."""
        n_ref = len(self.reference)
        return ("reference", row) if row < n_ref else ("candidate", row - n_ref)

    def row_of(self, kind: str, index: int) -> int:
        return index if kind == "reference" else len(self.reference) + index

    def item_key(self, row: int) -> Any:
        """What the workspace stores for a row: the sample index or the candidate path."""
        kind, i = self.locate(row)
        return self.reference.sample_idx[i] if kind == "reference" else self.candidates.paths[i]

    def question(self, row: int) -> str:
        kind, i = self.locate(row)
        if kind != "reference":
            return ""
        return self.data.records[self.reference.sample_idx[i]].question

    def abs_path(self, row: int) -> Path:
        kind, i = self.locate(row)
        return Path((self.reference if kind == "reference" else self.candidates).abs_paths[i])

    def rel_path(self, row: int) -> str:
        kind, i = self.locate(row)
        return (self.reference if kind == "reference" else self.candidates).paths[i]


@dataclass(frozen=True)
class _PoolSpec:
    """What ``taskfile.collect_candidates`` reads from a config."""

    candidate_folder: str | None
    candidate_file: str | None
    allow_outside_paths: bool


def candidate_files(ws: Workspace) -> list[Path]:
    """The candidate pool's image files, as ``embed_workspace`` collects them."""
    d = ws.settings.data
    if not (d.candidate_folder or d.candidate_file) or ws.input_root is None:
        return []
    pool = _PoolSpec(d.candidate_folder or None, d.candidate_file or None, d.allow_outside_paths)
    return collect_candidates(pool, ws.input_root)[1]  # type: ignore[arg-type]


def _data_args(ws: Workspace) -> dict[str, Any]:
    """How the workspace's data file is read (the Data page reads it the same way): images that
    passed a check are remembered in the workspace's cache (``records.ImageChecks``)."""
    d = ws.settings.data
    return dict(input_folder=ws.input_root, image_folder=d.image_folder,
                allow_outside_paths=d.allow_outside_paths, check_cache=ws.cache_dir)


def load_workspace_data(ws: Workspace, check_images: bool | str = "decode") -> DataFile:
    """The workspace's data file, every image decoded (as the Data page loads it: a record whose
    image cannot be embedded is skipped and reported there, and the counts agree)."""
    d = ws.settings.data
    if not d.data_file:
        raise DataFileError("no data file in this workspace yet: open the demo, upload a data "
                            "file or point at one on the Data page")
    return parse_once(d.data_file, load_data_file, check_images=check_images,  # once per content
                      **_data_args(ws))


def dataset_description(ws: Workspace, data: DataFile) -> str:
    own = ws.settings.data.dataset_description
    return own if own is not None else data.dataset_description


def _rel(path: Path, root: Path) -> str:
    full = path.resolve()
    return full.relative_to(root).as_posix() if full.is_relative_to(root) else str(full)


def embed_workspace(ws: Workspace, progress: Progress | None = None,
                    num_workers: int | None = 0, *, precision: str = "auto",
                    batch_size: int = 64) -> Embeddings:
    """Load the data file, collect the pool and embed both (cached under the workspace's cache).

    ``progress(stage, done, total)`` counts over both sets (reference images first). The app runs
    this in a background job (``mminstruct.app.embed``) with ``num_workers=None``: the command
    line's decode workers. ``num_workers`` 0 (the default here) decodes in this thread, as an
    in-process caller in a threaded server must (forking workers out of it is unsafe)."""
    d, model = ws.settings.data, ws.settings.partition.clip_model
    parse_model_spec(model)  # a bad spec fails before any work
    data = load_workspace_data(ws)
    root = ws.input_root
    if root is None:  # load_workspace_data refuses such a workspace first; kept for type narrowing
        raise InputError(f"workspace {ws.root} has no data file yet; open or upload one first")
    rows = [i for i, r in enumerate(data.records) if r.images]
    ref_abs = [data.image_path(data.records[i]) for i in rows]
    pool = _PoolSpec(d.candidate_folder or None, d.candidate_file or None, d.allow_outside_paths)
    problems: list[tuple[str, str]] = []
    if pool.candidate_folder or pool.candidate_file:
        cand_rel, cand_abs, problems = collect_candidates(pool, root)  # type: ignore[arg-type]
    else:
        cand_rel, cand_abs = [], []
    device = resolve_device(0)
    common: dict[str, Any] = dict(cache=ws.cache_dir, device=device, num_workers=num_workers,
                                  show_progress=False, precision=precision, batch_size=batch_size)
    grand = len(ref_abs) + len(cand_abs)

    def stage(name: str, offset: int) -> Callable[[int, int], None] | None:
        return (lambda done, total: progress(name, offset + done, grand)) if progress else None

    ref = embed_images(ref_abs, model, progress=stage("reference images", 0), **common)
    ok = ref.ok.tolist()
    reference = ImageSet("reference", [_rel(ref_abs[j], root) for j in ok],
                         [str(ref_abs[j]) for j in ok], ref.vectors, [rows[j] for j in ok],
                         [(str(p), why) for p, why in ref.failures])
    if cand_abs:
        cand = embed_images(cand_abs, model, progress=stage("candidate images", len(ref_abs)),
                            **common)
        ok_c = cand.ok.tolist()
        candidates = ImageSet("candidate", [cand_rel[j] for j in ok_c],
                              [str(cand_abs[j]) for j in ok_c],
                              cand.vectors, failures=[(str(p), w) for p, w in cand.failures])
        n_cached, n_computed = ref.n_cached + cand.n_cached, ref.n_computed + cand.n_computed
    else:
        dim = ref.vectors.shape[1]
        candidates = ImageSet("candidate", [], [], np.zeros((0, dim), np.float16))
        n_cached, n_computed = ref.n_cached, ref.n_computed
    emb = Embeddings(model, data, root, reference, candidates, problems,
                     n_cached=n_cached, n_computed=n_computed)
    emb.fingerprint = array_fingerprint(emb.all_vectors) if emb.n else ""
    return emb


# ----------------------------------------------------------------------------------------------
# The embedding job's result on disk: what the app reads (memory-mapped), never recomputes

RESULTS_DIR = "embeddings"  # under the workspace's cache folder
_RESULT_FORMAT = 1


def result_path(ws: Workspace, key: str | None = None) -> Path:
    """The manifest of the embeddings for ``key`` (default: the workspace's current
    ``embedding_key``); its vectors are ``vectors-{fingerprint}.npy`` beside it."""
    return ws.cache_dir / RESULTS_DIR / f"{(key or embedding_key(ws))[:40]}.json"


def _vectors_path(folder: Path, fingerprint: str) -> Path:
    return folder / f"vectors-{fingerprint[:40]}.npy"


def save_embeddings(ws: Workspace, emb: Embeddings, key: str, token: str = "") -> Path:
    """Write ``emb`` for ``key``: every vector in one float16 ``.npy`` named by its content
    (written once, atomically; reference rows first) and a manifest (paths, sample indices,
    failures, counts), written atomically after it: a reader sees the old result or the new one."""
    from mminstruct.cache import atomic_write_json
    from mminstruct.embed.vectors import save_npy

    manifest = result_path(ws, key)
    folder = manifest.parent
    fp = emb.fingerprint or array_fingerprint(emb.all_vectors)
    vec_path = _vectors_path(folder, fp)
    if not vec_path.is_file():
        save_npy(vec_path, np.ascontiguousarray(emb.all_vectors, dtype=np.float16))
    atomic_write_json(manifest, {
        "format": _RESULT_FORMAT, "key": key, "token": token, "model": emb.clip_model,
        "fingerprint": fp, "vectors": vec_path.name, "dim": int(emb.all_vectors.shape[1]),
        "n_cached": emb.n_cached, "n_computed": emb.n_computed,
        "reference": {"paths": emb.reference.paths, "abs_paths": emb.reference.abs_paths,
                      "sample_idx": emb.reference.sample_idx, "failures": emb.reference.failures},
        "candidates": {"paths": emb.candidates.paths,
                       "abs_paths": emb.candidates.abs_paths,
                       "failures": emb.candidates.failures},
        "problems": emb.problems,
        # the data file's check as the job read it (every image decoded): a reader rebuilds the
        # same records from a parse that decodes nothing (``_data_as_checked``)
        "data_check": {"records": len(emb.data.records),
                       "problems": [[pr.index, pr.id, pr.reason]
                                    for pr in emb.data.report.problems]}}, indent=None)
    return manifest


def read_result(ws: Workspace, key: str | None = None) -> dict[str, Any] | None:
    """The manifest for ``key`` (default: the current settings), or None when there is none
    (or it is unreadable, or its vectors file is gone: the job then writes it again)."""
    import json

    path = result_path(ws, key)
    try:
        man = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(man, dict) or man.get("format") != _RESULT_FORMAT:
        return None
    if not _vectors_path(path.parent, str(man.get("fingerprint", ""))).is_file():
        return None
    return man


def load_embeddings(ws: Workspace, data: DataFile | None = None,
                    key: str | None = None) -> Embeddings | None:
    """The embedding job's result for the current settings, vectors memory-mapped from the cache
    (``vectors.open_memmap``: one mapping per file and process, shared by every session), or None
    when the job has not written it yet. Nothing is embedded here."""
    from mminstruct.embed.vectors import open_memmap

    man = read_result(ws, key)
    if man is None:
        return None
    root = ws.input_root
    if root is None:
        return None
    vec_path = _vectors_path(result_path(ws, key).parent, man["fingerprint"])
    try:
        mm = open_memmap(vec_path)
    except InputError:  # an empty set (nothing to map) or an unreadable file
        try:
            mm = np.load(vec_path, allow_pickle=False)
        except (OSError, ValueError):
            return None
    r, c = man["reference"], man["candidates"]
    n_ref = len(r["paths"])
    if mm.shape[0] != n_ref + len(c["paths"]):
        return None  # not the rows this manifest names: rebuild
    data = data if data is not None else _data_as_checked(ws, man.get("data_check"))
    if data is None:
        return None
    reference = ImageSet("reference", list(r["paths"]), list(r["abs_paths"]),
                         mm[:n_ref], [int(i) for i in r["sample_idx"]],
                         [tuple(f) for f in r["failures"]])
    candidates = ImageSet("candidate", list(c["paths"]), list(c["abs_paths"]),
                          mm[n_ref:], failures=[tuple(f) for f in c["failures"]])
    emb = Embeddings(man["model"], data, root, reference, candidates,
                     [tuple(p) for p in man["problems"]], man["fingerprint"],
                     int(man.get("n_cached", 0)), int(man.get("n_computed", 0)))
    emb.source = mm
    emb.job_token = str(man.get("token", ""))
    return emb


def _data_as_checked(ws: Workspace, check: Any) -> DataFile | None:
    """The data file as the embedding job loaded it (every image decoded, the records whose image
    failed left out), without decoding an image again: the job's own check (``data_check`` in its
    manifest) applied to a parse that checks nothing. The Data page's parse when this process
    made it already; a manifest without the check (an older job) decodes as before. When the
    workspace remembers images that passed (``records.ImageChecks``, which the job's own check
    fills), the Data page's parse itself, made now or waited for (one copy of the records, and the
    Data page then reads nothing): only the images not remembered are decoded. None when the
    records are not the job's (the file changed: its job runs again)."""
    from dataclasses import replace

    from mminstruct.data.records import ImageChecks, Problem

    d = ws.settings.data
    done = parse_once(d.data_file, load_data_file, peek=True, check_images="decode",
                      **_data_args(ws)) if d.data_file else None
    if done is not None or not isinstance(check, dict):
        return done if done is not None else load_workspace_data(ws)
    if (ws.cache_dir / ImageChecks.FILE).is_file():
        shared = load_workspace_data(ws)
        same = len(shared.records) == check.get("records") and \
            [p.index for p in shared.report.problems] == [int(p[0]) for p in check.get("problems", [])]
        return shared if same else None
    off = load_data_file(d.data_file, check_images="off", **_data_args(ws))  # not kept
    problems = [Problem(int(i), rid, str(why)) for i, rid, why in check.get("problems", [])]
    bad = {p.index for p in problems}
    records = [r for r in off.records if r.index not in bad]
    if len(records) != check.get("records"):
        return None
    return replace(off, records=records, report=replace(off.report, problems=problems))


def projection_ready(ws: Workspace, emb: Embeddings) -> bool:
    """Whether the workspace's projection of ``emb`` is on disk (the map needs no job)."""
    from mminstruct.app.projection import cached_projection

    if not emb.n:
        return True
    return cached_projection(emb.n, emb.fingerprint, ws.settings.partition.projection,
                             cache_dir=ws.cache_dir / "projections") is not None


def keyword_vectors(ws: Workspace, keywords: Sequence[str]) -> np.ndarray:
    """The keywords' CLIP text vectors: from the cache, else encoded by the text worker process
    (``app.text_encoder``: no torch in the app's server)."""
    from mminstruct.app import text_encoder

    p = ws.settings.partition
    if not keywords:
        raise ConfigError("the keyword list is empty; add at least one keyword")
    return text_encoder.keyword_vectors(list(keywords), p.clip_model,
                                        templates=p.templates or None, cache=ws.cache_dir)


# ----------------------------------------------------------------------------------------------
# The partition with the user's overrides


@dataclass
class Grouped:
    """One image set's partition: the raw argmax ``partition`` and the final ``group`` per row
    (keyword index, -1 unassigned, -2 excluded) after top-K, exclusions and manual choices."""

    partition: Partition
    group: np.ndarray  # int64
    manual: np.ndarray  # bool
    excluded: np.ndarray  # bool

    def members(self, k: int) -> np.ndarray:
        """Rows in keyword ``k``, most confident first (manual ones first of all)."""
        rows = np.flatnonzero(self.group == k)
        conf = self.partition.margin[rows] + 10.0 * self.manual[rows]
        return rows[np.argsort(-conf, kind="stable")]

    def count(self, k: int) -> int:
        return int((self.group == k).sum())


@dataclass
class Curation:
    keywords: list[str]  # every subgroup: the keywords, then the manual subgroups
    reference: Grouped
    candidates: Grouped | None
    low_margin: float
    n_keywords: int = -1  # how many of ``keywords`` are keywords (-1: all)

    def is_manual(self, k: int) -> bool:
        """Whether subgroup ``k`` is a manual subgroup (no keyword column in the scores)."""
        return 0 <= self.n_keywords <= k

    def counts(self) -> list[dict[str, Any]]:
        out = []
        for k, kw in enumerate(self.keywords):
            out.append({"keyword": kw, "reference": self.reference.count(k),
                        "candidates": self.candidates.count(k) if self.candidates else 0})
        return out

    def flagged(self, kind: str, row: int) -> bool:
        g = self.reference if kind == "reference" else self.candidates
        return bool(g is not None and not g.manual[row] and g.partition.margin[row] < self.low_margin)

    def group_of_all(self) -> np.ndarray:
        """Group per row of ``Embeddings.all_vectors``."""
        parts = [self.reference.group] + ([self.candidates.group] if self.candidates else [])
        return np.concatenate(parts)


_ROW_INDEX: dict[int, tuple[list[Any], dict[Any, int]]] = {}


def _row_index(keys: list[Any]) -> dict[Any, int]:
    """key → row, memoised per key list (the same lists come back on every keyword edit)."""
    hit = _ROW_INDEX.get(id(keys))
    if hit is None or hit[0] is not keys:
        if len(_ROW_INDEX) > 8:
            _ROW_INDEX.clear()
        hit = (keys, {k: i for i, k in enumerate(keys)})
        _ROW_INDEX[id(keys)] = hit
    return hit[1]


_SCORES: OrderedDict[tuple, np.ndarray] = OrderedDict()  # see keyword_scores
_SCORES_MAX = 8
_MEMO_LOCK = threading.Lock()


def _array_key(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return hashlib.sha256(repr(a.shape).encode() + a.tobytes()).hexdigest()


def keyword_scores(side: ImageSet, kw_vecs: np.ndarray, fingerprint: str = "") -> np.ndarray:
    """Cosine similarities (rows of ``side``, keywords) — ``partition.assign.similarity_matrix``,
    the command line's own product, over the float16 vectors in float32 row chunks (no float32
    copy of the set is kept). Memoised per process under (the embeddings' fingerprint, the set,
    the keyword vectors): a rerun, another session or a setting that does not change the
    keywords (min similarity, top-K, exclusions) reuses it; an edited keyword list computes it
    once. Read-only."""
    if not fingerprint:
        return similarity_matrix(side.vectors, kw_vecs)
    key = (fingerprint, side.kind, len(side), _array_key(kw_vecs))
    with _MEMO_LOCK:
        hit = _SCORES.get(key)
        if hit is not None:
            _SCORES.move_to_end(key)
            return hit
    scores = similarity_matrix(side.vectors, kw_vecs)
    scores.setflags(write=False)
    with _MEMO_LOCK:
        _SCORES[key] = scores
        while len(_SCORES) > _SCORES_MAX:
            _SCORES.popitem(last=False)
    return scores


def _grouped(scores: np.ndarray, keywords: list[str], keys: list[Any],
             excluded_keys: set, manual: dict[Any, str], min_similarity: float | None,
             top_k: int | None, manual_groups: Sequence[str] = ()) -> Grouped:
    part = partition_from_scores(scores, keywords, min_similarity)
    n = len(part)
    excluded = np.zeros(n, bool)
    manual_mask = np.zeros(n, bool)
    forced = np.full(n, UNASSIGNED, np.int64)
    index = {kw: j for j, kw in enumerate([*keywords, *manual_groups])}
    if excluded_keys or manual:
        row = _row_index(keys)
        excluded[[row[k] for k in excluded_keys if k in row]] = True
        for k, kw in manual.items():
            i = row.get(k)
            if i is not None and kw in index and not excluded[i]:
                manual_mask[i] = True
                forced[i] = index[kw]
    if top_k:
        group = np.full(n, UNASSIGNED, np.int64)
        free = np.flatnonzero(~excluded & ~manual_mask)
        if len(free):
            topk = top_k_from_scores(part.scores[free], top_k, keywords, min_similarity)
            for j, ids in enumerate(topk.ids):
                group[free[ids]] = j
    else:
        group = part.assignment.copy()
    group[manual_mask] = forced[manual_mask]
    group[excluded] = EXCLUDED
    return Grouped(part, group, manual_mask, excluded)


def curate(ws: Workspace, emb: Embeddings, kw_vecs: np.ndarray,
           keywords: Sequence[str] | None = None) -> Curation:
    """The partition the user sees: argmax (or top-K for candidates), then the overrides."""
    p = ws.settings.partition
    kws = list(keywords if keywords is not None else p.keywords)
    if len(kws) != kw_vecs.shape[0]:
        raise ConfigError(f"{len(kws)} keywords but {kw_vecs.shape[0]} keyword vectors")
    manual_groups = [m for m in p.manual_subgroups if m not in kws]
    memo = None
    if emb.fingerprint:  # the same inputs give the same partition: one per process, shared
        memo = content_key("app-curation", emb.fingerprint, len(emb.reference), _array_key(kw_vecs),
                           kws, manual_groups, sorted(p.excluded_reference),
                           sorted(p.excluded_candidates), sorted(p.manual_reference.items()),
                           sorted(p.manual_candidates.items()), p.min_similarity,
                           p.candidates_per_keyword, p.low_margin)
        with _MEMO_LOCK:
            hit = _CURATIONS.get(memo)
            if hit is not None:
                _CURATIONS.move_to_end(memo)
                return hit
    ref = _grouped(keyword_scores(emb.reference, kw_vecs, emb.fingerprint), kws,
                   emb.reference.sample_idx, set(p.excluded_reference),
                   {int(k): v for k, v in p.manual_reference.items()},
                   p.min_similarity, None, manual_groups)
    cand = None
    if len(emb.candidates):
        cand = _grouped(keyword_scores(emb.candidates, kw_vecs, emb.fingerprint), kws,
                        emb.candidates.paths, set(p.excluded_candidates),
                        dict(p.manual_candidates), p.min_similarity, p.candidates_per_keyword,
                        manual_groups)
    cur = Curation(kws + manual_groups, ref, cand, p.low_margin, len(kws))
    if memo is not None:
        with _MEMO_LOCK:
            _CURATIONS[memo] = cur
            while len(_CURATIONS) > 4:
                _CURATIONS.popitem(last=False)
    return cur


_CURATIONS: OrderedDict[str, Curation] = OrderedDict()  # see curate (read-only: shared)


def _round(xs: Any) -> list[float]:
    return [round(float(x), 4) for x in xs]


def _centroid_scores(ref: np.ndarray, cand: np.ndarray) -> dict[str, list[float]]:
    """Cosine similarity of each member to the members' mean direction."""
    both = np.concatenate([ref, cand]) if len(cand) else ref
    if not len(both):
        return {"reference_scores": [], "candidate_scores": []}
    c = both.mean(axis=0)
    c = c / max(float(np.linalg.norm(c)), 1e-12)
    return {"reference_scores": _round(ref @ c), "candidate_scores": _round(cand @ c)}


def build_task(ws: Workspace, emb: Embeddings, cur: Curation) -> TaskFile:
    """The MM-Gen task file of exactly this curation (samples: every loaded record)."""
    data, p = emb.data, ws.settings.partition
    subgroups: list[Subgroup] = []
    for k, kw in enumerate(cur.keywords):
        rows = cur.reference.members(k)
        rows = rows[np.argsort(np.asarray([emb.reference.sample_idx[r] for r in rows]),
                               kind="stable")] if len(rows) else rows
        cand_paths: list[str] = []
        c_rows = cur.candidates.members(k) if cur.candidates is not None else np.zeros(0, np.int64)
        cand_paths = [emb.candidates.paths[r] for r in c_rows]
        extra: dict[str, Any]
        if cur.is_manual(k):  # no keyword column: the members' similarity to their centroid
            extra = {"manual_subgroup": True,
                     **_centroid_scores(emb.reference.rows32(rows),
                                        emb.candidates.rows32(c_rows))}
        else:
            extra = {"reference_scores": _round(cur.reference.partition.scores[rows, k]),
                     "reference_margins": _round(cur.reference.partition.margin[rows]),
                     "candidate_scores": _round(cur.candidates.partition.scores[c_rows, k])
                     if cur.candidates is not None else []}
        subgroups.append(Subgroup(kw, [emb.reference.sample_idx[r] for r in rows], cand_paths,
                                  extra))
    n_kw = cur.n_keywords if cur.n_keywords >= 0 else len(cur.keywords)
    meta = task_metadata(
        source="app", model=p.clip_model, keywords=cur.keywords[:n_kw], templates=p.templates,
        min_similarity=p.min_similarity, candidates_per_keyword=p.candidates_per_keyword,
        data=data, input_root=emb.input_root,
        skipped_reference=[{"path": a, "reason": b} for a, b in emb.reference.failures],
        skipped_candidates=[{"path": a, "reason": b}
                            for a, b in emb.problems + emb.candidates.failures],
        excluded={"reference_sample_idx": sorted(p.excluded_reference),
                  "candidate_image_paths": sorted(p.excluded_candidates)},
        manual={"reference": dict(p.manual_reference), "candidates": dict(p.manual_candidates)},
        manual_subgroups=list(cur.keywords[n_kw:]))
    return TaskFile(image_folder=data.image_folder, dataset_description=dataset_description(ws, data),
                    subgroups=subgroups, samples=RecordSamples(data.records),  # (made as written)
                    extra={"mminstruct": meta})


def save_task(ws: Workspace, task: TaskFile, prefix: str = "task_file") -> Path:
    """Write the task file under ``tasks/`` and remember it in the settings (saved)."""
    path = save_task_file(task, ws.tasks_dir, prefix)
    ws.settings.task_file = str(path)
    ws.save()
    return path


# ----------------------------------------------------------------------------------------------
# Search and the map


def search(ws: Workspace, emb: Embeddings, query: str, limit: int = 24) -> list[tuple[int, float]]:
    """Rows of ``all_vectors`` ranked by CLIP similarity to ``query``: (row, similarity)."""
    q = query.strip()
    if not q or not emb.n:
        return []
    from mminstruct.app import text_encoder

    vec = text_encoder.text_vectors([q], ws.settings.partition.clip_model, cache=ws.cache_dir)[0]
    # the best by (similarity desc, row asc), float16 rows scored by faiss without a float32 copy
    return top_similar([emb.reference.vectors, emb.candidates.vectors], vec, int(limit))


def warm_text_search(ws: Workspace) -> None:
    """Load the workspace's CLIP model in the text worker without waiting
    (``text_encoder.warm``): the first new search or keyword then costs an encode only."""
    from mminstruct.app import text_encoder

    text_encoder.warm(ws.settings.partition.clip_model, cache=ws.cache_dir)


_XY: dict[tuple[str, str, str], np.ndarray] = {}  # (vectors' fingerprint, method, cache) → map


def projection(ws: Workspace, emb: Embeddings,
               progress: Callable[[float, str], None] | None = None) -> np.ndarray:
    """The 2-D map of every image (reference rows first), cached under the workspace, and kept in
    memory per fingerprint (a rerun reads neither the vectors nor the cache file)."""
    method = ws.settings.partition.projection
    cache_dir = ws.cache_dir / "projections"
    memo = (emb.fingerprint, method, str(cache_dir)) if emb.fingerprint else None
    if memo is not None and memo in _XY and len(_XY[memo]) == emb.n:
        if progress:
            progress(1.0, "projection loaded from cache")
        return _XY[memo]
    xy = project_2d(emb.all_vectors, method, seed=0, cache_dir=cache_dir, progress=progress,
                    fingerprint=emb.fingerprint or None)
    if memo is not None:
        if len(_XY) >= 4:
            _XY.pop(next(iter(_XY)))
        xy.setflags(write=False)
        _XY[memo] = xy
    return xy


def embedding_key(ws: Workspace) -> str:
    """What the app's in-memory copy of ``embed_workspace`` depends on: the data settings, the
    model, and the data file's fingerprint (a changed file is re-read)."""
    from mminstruct.cache import content_key, file_fingerprint

    d = ws.settings.data
    try:
        fp = list(file_fingerprint(d.data_file)) if d.data_file else None
    except OSError:
        fp = None
    cand = d.candidate_folder
    cand_fp = None
    if cand:
        folder = Path(cand) if os.path.isabs(cand) else (ws.input_root or Path()) / cand
        try:
            cand_fp = folder.stat().st_mtime_ns
        except OSError:
            cand_fp = None
    return content_key("app-embeddings", str(ws.root), d.input_folder, d.data_file, d.image_folder,
                       d.candidate_folder, d.candidate_file, d.allow_outside_paths,
                       ws.settings.partition.clip_model, fp, cand_fp)
