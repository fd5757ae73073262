"""Quality report on generated data: duplicates, copies of in-context examples, invalid samples,
refusals, question variety, answer lengths and (optionally) CLIP grounding.

``python -m mminstruct.quality --generated_file OUT/generated_data/run.json [--prompt_file P.json]
[--input_folder IN] [--model_name SPEC] --output report.json`` writes ``{"summary": {...},
"samples": [...]}``: one entry per sample, in file order, with its ``flags`` (empty when clean)
and scores. The flags:

* ``exact_duplicate``: an earlier sample of the same image (and variant) has the same question and
  answer once case, whitespace and punctuation are ignored; the first one is not flagged.
* ``near_duplicate``: not exact, but an earlier sample of the same image and variant asks nearly
  the same question: the Jaccard similarity of their content words (stop words and filler such as
  "in the image" dropped, plural "s" off) is ≥ ``near_duplicate_threshold`` and both are the same
  question type. Description modes ask one fixed question, so there the answers are compared.
* ``icl_copy``: the question restates an in-context example of its own prompt (read from the
  prompt file): content-word Jaccard ≥ ``icl_copy_threshold`` (answers in description modes).
* ``invalid``: empty question or answer; a multiple-choice answer that is none of the options
  offered; a sample that breaks its mode's shape (``quality_text.shape_problem``).
* ``refusal``: the answer declines, apologises, or says it cannot see the image.

Samples without an image (tqa) form one group of their own. The reasoning and concise samples
of one vqa item share their question, so each variant is compared only with its own kind, and the
question statistics count the concise sample only. Thresholds were chosen on the planted-defect
set built by ``tests/make_quality_fixture.py`` (see the README's "Quality report").

Near-duplicates are found with an exact prefix-filtered similarity join (words ordered rarest
first; two sets with Jaccard ≥ t must share one of the first ``|x| − ⌈t·|x|⌉ + 1`` words), so a
large group is not compared pair by pair. The file and the prompt file are streamed.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mminstruct.cache import atomic_writer
from mminstruct.cli import OneLineParser, run_cli
from mminstruct.errors import ConfigError, DataFileError, InputError, choices_message
from mminstruct.generate.jsonstream import PromptStream, iter_object
from mminstruct.data.modes import MODE_NAMES, Mode
from mminstruct.quality.minhash import CROSS_IMAGE_THRESHOLD, ShingleSets, cross_image_duplicates
from mminstruct.quality.grounding import GROUNDING_TEXT_CHARS, grounding_scores, stats, word_histogram
from mminstruct.quality.text import (QUESTION_TYPES, answer_matches_options, comparable_type, content_set,
                           final_answer,
                           jaccard, options, question_type, refusal_match, shape_problem,
                           strip_question, words)

log = logging.getLogger(__name__)

FLAGS = ("exact_duplicate", "near_duplicate", "icl_copy", "invalid", "refusal")
#: Flagged only when asked (``--cross_image``, ``QualityConfig.cross_image``): MinHash LSH over
#: question + answer across images (``quality_minhash``).
CROSS_IMAGE_FLAG = "cross_image_duplicate"
ALL_FLAGS = (*FLAGS, CROSS_IMAGE_FLAG)
#: chosen on the planted-defect set (tests/make_quality_fixture.py); see the README
NEAR_DUPLICATE_THRESHOLD = 0.7
ICL_COPY_THRESHOLD = 0.7


@dataclass(frozen=True)
class QualityConfig:
    """What the report needs. ``prompt_file`` / ``input_folder`` default to the generated file's
    header (``prompt_file``, ``input_folder``); ``clip_model`` (a CLIP spec) turns on grounding."""

    generated_file: str
    output: str | None = None
    prompt_file: str | None = None
    input_folder: str | None = None
    clip_model: str | None = None  # the flag: --model_name
    cache_dir: str | None = None
    device: str = "cpu"
    near_duplicate_threshold: float = NEAR_DUPLICATE_THRESHOLD
    icl_copy_threshold: float = ICL_COPY_THRESHOLD
    lowest: int = 20
    #: Flag near-duplicates across images (MinHash LSH, ``quality_minhash``) at this estimated
    #: Jaccard similarity of question + answer word bigrams.
    cross_image: bool = False
    cross_image_threshold: float = CROSS_IMAGE_THRESHOLD
    #: A judge's scores file (``mminstruct.quality.judge``): its distributions per subgroup and mode.
    scores_file: str | None = None

    def __post_init__(self) -> None:
        if not self.generated_file:
            raise ConfigError("generated_file is required")
        for name in ("near_duplicate_threshold", "icl_copy_threshold", "cross_image_threshold"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
                raise ConfigError(f"{name} must be a number in (0, 1], got {v!r}")
        if isinstance(self.lowest, bool) or not isinstance(self.lowest, int) or self.lowest < 0:
            raise ConfigError(f"lowest must be an integer ≥ 0, got {self.lowest!r}")


class _Row:
    """One sample's findings (slots: 600,000 of them stay small)."""

    __slots__ = ("id", "keyword", "group", "qset", "qtype", "flags", "near", "icl", "dup_of",
                 "invalid", "refusal", "answer_words", "image", "text", "grounding", "icl_example")

    def __init__(self) -> None:
        self.flags: list[str] = []
        self.near = 0.0
        self.icl: float | None = None
        self.dup_of: Any = None
        self.invalid: str | None = None
        self.refusal: str | None = None
        self.qset: frozenset[str] | None = None
        self.qtype: str | None = None
        self.grounding: float | None = None
        self.icl_example: int | None = None
        self.text: str | None = None
        self.image: str | None = None

    def entry(self, index: int) -> dict[str, Any]:
        out: dict[str, Any] = {"index": index, "id": self.id, "keyword": self.keyword,
                               "flags": [f for f in ALL_FLAGS if f in self.flags],
                               "scores": {"near_duplicate": round(self.near, 4),
                                          "icl_copy": None if self.icl is None else round(self.icl, 4),
                                          "grounding": None if self.grounding is None
                                          else round(self.grounding, 4)},
                               "question_type": self.qtype, "answer_words": self.answer_words}
        if self.dup_of is not None:
            out["duplicate_of"] = self.dup_of
        if self.icl_example is not None and "icl_copy" in self.flags:
            out["icl_example"] = self.icl_example
        if self.invalid:
            out["invalid_reason"] = self.invalid
        if self.refusal:
            out["refusal_phrase"] = self.refusal
        return out


@dataclass
class QualityReport:
    summary: dict[str, Any]
    rows: list[_Row] = field(repr=False, default_factory=list)

    def sample_entries(self) -> Iterator[dict[str, Any]]:
        for i, r in enumerate(self.rows):
            yield r.entry(i)

    @property
    def samples(self) -> list[dict[str, Any]]:
        return list(self.sample_entries())

    def flagged_ids(self, flag: str) -> list[Any]:
        return flagged_ids(self.sample_entries(), [flag])


def flagged_ids(entries: Iterable[dict[str, Any]], flags: Iterable[str]) -> list[Any]:
    """The ids of the report entries carrying any of ``flags`` (for "reject every sample
    flagged …"), in file order."""
    wanted = set(flags)
    bad = sorted(wanted - set(ALL_FLAGS))
    if bad:
        raise ConfigError(choices_message("flag", bad[0], ALL_FLAGS))
    return [e.get("id") for e in entries if wanted.intersection(e.get("flags", ()))]


# ----------------------------------------------------------------------------------------------
# In-context examples of each prompt

_QA_RE = re.compile(r"Q:\s*(.*?)\n\s*A:\s*(.*?)(?=\nQ:|\Z)", re.DOTALL)
_REFER_RE = re.compile(r"Refer to the \w+ image\.\s*|<image>\s*")


def _icl_examples(prompt: list[str], cache: dict[str, tuple]) -> tuple:
    """``((question set, answer set), …)`` of a prompt's in-context examples, in order."""
    out: list[tuple[frozenset[str], frozenset[str]]] = []
    for part in prompt:
        if "Q:" not in part:
            continue
        hit = cache.get(part)
        if hit is None:
            hit = tuple((content_set(words(_REFER_RE.sub("", q))), content_set(words(a)))
                        for q, a in _QA_RE.findall(part))
            cache[part] = hit
        out.extend(hit)
    return tuple(out)


def load_icl(prompt_file: str | os.PathLike) -> tuple[Mode, dict[int, tuple]]:
    """The prompt file's mode and, per prompt index, its in-context examples' word sets."""
    stream = PromptStream.open(prompt_file)
    cache: dict[str, tuple] = {}
    by_prompt: dict[int, tuple] = {}
    for idx, entry in stream.entries():
        if isinstance(entry, Exception):
            continue
        ex = _icl_examples(entry.prompt, cache)
        if ex:
            by_prompt[idx] = ex
    return stream.header.mode, by_prompt


# ----------------------------------------------------------------------------------------------
# Reading the generated file


def _iter_generated(path: Path, header: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Samples of a generated-data file; ``header`` fills up with the keys before ``samples``."""
    saw = False
    try:
        for key, value, is_item in iter_object(path, "samples"):
            if key == "samples":
                if not is_item:
                    raise DataFileError(f"{path}: not a generated-data file: 'samples' is a "
                                        f"{type(value).__name__}, expected a list")
                saw = True
                if not isinstance(value, dict):
                    raise DataFileError(f"{path}: not a generated-data file: a sample is a "
                                        f"{type(value).__name__}, expected an object")
                yield value
            elif not saw:
                header[key] = value
    except DataFileError as e:
        msg = str(e)
        if "top-level JSON is not an object" in msg:
            raise DataFileError(f"{path}: not a generated-data file (expected an object with a "
                                "'samples' list, as data_generator writes; a LLaVA list is "
                                "a reference data file)") from e
        raise
    if not saw and "samples" not in header:
        raise DataFileError(f"{path}: not a generated-data file: no 'samples' list "
                            f"(keys: {', '.join(sorted(header)) or 'none'})")


def _mode_of(header: dict[str, Any], path: Path) -> Mode | None:
    value = header.get("mode")
    if value is None:
        return None
    try:
        return Mode(str(value).strip().lower())
    except ValueError as e:
        raise DataFileError(f"{path}: {choices_message('mode', value, MODE_NAMES)}") from e


def _image_of(sample: dict[str, Any]) -> str | None:
    img = sample.get("image_1") or sample.get("image")
    if isinstance(img, list):
        img = img[0] if img else None
    return img if isinstance(img, str) and img else None


# ----------------------------------------------------------------------------------------------
# The analysis


def analyse(cfg: QualityConfig) -> QualityReport:
    """Read the generated file (and the prompt file), flag every sample and summarise."""
    path = Path(cfg.generated_file)
    if not path.is_file():
        raise DataFileError(f"{path}: generated-data file not found")
    header: dict[str, Any] = {}
    rows: list[_Row] = []
    exact_seen: dict[int, Any] = {}
    groups: dict[Any, list[int]] = defaultdict(list)
    q_unigrams: set[str] = set()
    q_bigrams: set[int] = set()
    n_uni = n_bi = 0
    qtypes: Counter = Counter()
    n_mc = 0
    answer_words: list[int] = []
    mode: Mode | None = None
    icl: dict[int, tuple] | None = None
    icl_note = ""
    started = False
    grounding = bool(cfg.clip_model)
    t_near, t_icl = cfg.near_duplicate_threshold, cfg.icl_copy_threshold
    description = ""
    describe = False
    last_q: str | None = None
    qtok: list[str] = []
    ask: list[str] = []
    qtype: str | None = None
    qjoined = ""
    qset_q: frozenset[str] = frozenset()
    opts: dict[str, str] = {}
    shingles = ShingleSets() if cfg.cross_image else None
    image_ids: dict[str, int] = {}
    row_images: list[int] = []

    for i, s in enumerate(_iter_generated(path, header)):
        if not started:
            started = True
            mode = _mode_of(header, path)
            description = str(header.get("dataset_description") or "")
            icl, icl_note = _open_prompts(cfg, header, mode)
            describe = mode is not None and mode.is_description
        r = _Row()
        r.id = s.get("id", i)
        r.keyword = str(s.get("keyword", "") or "")
        variant = s.get("variant") if isinstance(s.get("variant"), str) else None
        image = _image_of(s)
        r.group = (image, variant)
        conv = s.get("conversations")
        problem = shape_problem(s, mode, description)
        if problem is None:
            q_raw, a = conv[0]["value"], conv[1]["value"]
        else:
            q_raw = conv[0].get("value") if isinstance(conv, list) and conv and \
                isinstance(conv[0], dict) else ""
            a = conv[1].get("value") if isinstance(conv, list) and len(conv) > 1 and \
                isinstance(conv[1], dict) else ""
            q_raw, a = (q_raw if isinstance(q_raw, str) else ""), (a if isinstance(a, str) else "")
        q = strip_question(q_raw, mode, variant)
        answer = final_answer(a, variant)
        if q != last_q:  # a vqa item's reasoning and concise samples share their question
            last_q, qtok = q, words(q)
            # tqa: the imagined image's description comes first, then the question
            ask = words(q.split("\n", 1)[1]) if mode is Mode.TQA and "\n" in q else qtok
            qtype = question_type(ask) if ask else None
            qjoined = " ".join(qtok)
            qset_q = content_set(qtok)
            opts = options(q) if qtok else {}
        r.answer_words = len(a.split())
        answer_words.append(r.answer_words)  # every sample's answer (a vqa item's two as well)
        if problem is None and (not qtok or not a.strip() or not answer.strip()):
            problem = "empty question" if not qtok else "empty answer"
        if problem is None and opts:
            if variant != "reasoning":
                n_mc += 1
            if not answer_matches_options(answer, opts):
                problem = (f"answer {answer[:60]!r} is none of the options offered "
                           f"({', '.join(sorted(opts))})")
        if problem:
            r.invalid = problem
            r.flags.append("invalid")
        if problem is None and mode is not None and mode.one_sample_per_prompt:
            answers = [t["value"] for t in conv[1::2]]  # every turn's answer may refuse
        else:
            answers = [a]
        r.refusal = next((m for m in (refusal_match(x) for x in answers if x) if m), None)
        if r.refusal:
            r.flags.append("refusal")
        r.qtype = qtype
        if qtok:
            if variant != "reasoning":
                qtypes[qtype] += 1
                n_uni += len(ask)
                n_bi += max(0, len(ask) - 1)
                q_unigrams.update(ask)
                q_bigrams.update(map(hash, zip(ask, ask[1:])))
            awords = words(a)
            key = hash((image, variant, qjoined, " ".join(awords)))
            first = exact_seen.get(key)
            if first is None:
                exact_seen[key] = r.id
            else:
                r.flags.append("exact_duplicate")
                r.dup_of = first
            r.qset = content_set(words(a)) if describe else qset_q
            groups[r.group].append(i)
            if icl is not None:
                ex = icl.get(s.get("prompt_idx")) if isinstance(s.get("prompt_idx"), int) else None
                if ex is not None:
                    best, which = 0.0, None
                    for k, (eq, ea) in enumerate(ex):
                        j = jaccard(r.qset, ea if describe else eq)
                        if j > best:
                            best, which = j, k
                    r.icl = best
                    if best >= t_icl:
                        r.flags.append("icl_copy")
                        r.icl_example = which
        if shingles is not None:
            if qtok and image:
                shingles.add(qtok + awords)
                row_images.append(image_ids.setdefault(f"{image}\0{variant}", len(image_ids)))
            else:
                shingles.add(())
                row_images.append(-1)
        if grounding and image:
            r.image = image
            r.text = f"{q} {answer}"[:GROUNDING_TEXT_CHARS]
        rows.append(r)
    if not started:
        mode = _mode_of(header, path)
        _, icl_note = _open_prompts(cfg, header, mode)

    exact_seen.clear()
    _near_duplicates(rows, groups, t_near)
    if shingles is not None:
        image_ids.clear()
        for i, first in cross_image_duplicates(shingles, row_images,
                                               cfg.cross_image_threshold).items():
            r = rows[i]
            r.flags.append(CROSS_IMAGE_FLAG)
            if r.dup_of is None:
                r.dup_of = rows[first].id
        del shingles
    for r in rows:
        r.qset = None
    g_summary = grounding_scores(rows, cfg, header) if grounding else None
    summary = _summary(path, header, mode, rows, cfg, icl is not None, icl_note,
                       (len(q_unigrams), n_uni, len(q_bigrams), n_bi), qtypes, n_mc,
                       answer_words, g_summary)
    return QualityReport(summary, rows)


def _open_prompts(cfg: QualityConfig, header: dict[str, Any], mode: Mode | None
                  ) -> tuple[dict[int, tuple] | None, str]:
    pf = cfg.prompt_file or header.get("prompt_file")
    if not pf:
        return None, "icl_copy not checked: no prompt file given (--prompt_file) or named in the file"
    if not cfg.prompt_file and not Path(pf).is_absolute() and not Path(pf).is_file():
        # a relative name in the header: beside the generated file, or under the input folder
        for base in (Path(cfg.generated_file).parent,
                     Path(cfg.input_folder or header.get("input_folder") or ".")):
            if (base / pf).is_file():
                pf = str(base / pf)
                break
    if not Path(pf).is_file():
        if cfg.prompt_file:
            raise DataFileError(f"{pf}: prompt file not found")
        return None, f"icl_copy not checked: the prompt file {pf} named in the file is not there"
    pmode, icl = load_icl(pf)
    if mode is not None and pmode is not mode:
        raise DataFileError(f"{pf}: the prompt file's mode is {pmode.value} but the generated "
                            f"file's is {mode.value}: not the prompt file of this run")
    return icl, ""


def _near_duplicates(rows: list[_Row], groups: dict[Any, list[int]], t: float) -> None:
    """Within each group, in file order: the earlier sample with the highest content-word Jaccard
    (same question type); ≥ t and not already an exact duplicate → near_duplicate."""
    df: Counter = Counter()
    for members in groups.values():
        if len(members) > 1:
            for i in members:
                df.update(rows[i].qset)
    rank = {w: k for k, w in enumerate(sorted(df, key=lambda w: (df[w], w)))}  # rarest first
    for members in groups.values():
        if len(members) < 2:
            continue
        index: dict[str, list[int]] = defaultdict(list)
        for i in members:
            r = rows[i]
            toks = sorted(r.qset, key=rank.__getitem__)
            prefix = toks[: len(toks) - math.ceil(t * len(toks)) + 1] if toks else []
            cands: set[int] = set()
            for w in prefix:
                cands.update(index[w])
            best, best_j = None, 0.0
            for c in sorted(cands):
                other = rows[c]
                if comparable_type(other.qtype) != comparable_type(r.qtype):
                    continue
                j = jaccard(r.qset, other.qset)
                if j > best_j:
                    best, best_j = c, j
            r.near = best_j
            if best is not None and best_j >= t and "exact_duplicate" not in r.flags:
                r.flags.append("near_duplicate")
                r.dup_of = rows[best].id
            for w in prefix:
                index[w].append(i)


# ----------------------------------------------------------------------------------------------
# Summary


def _summary(path: Path, header: dict[str, Any], mode: Mode | None, rows: list[_Row],
             cfg: QualityConfig, icl_checked: bool, icl_note: str, distinct: tuple,
             qtypes: Counter, n_mc: int, answer_words: list[int],
             grounding: dict[str, Any] | None) -> dict[str, Any]:
    flags = Counter()
    by_kw: dict[str, Counter] = defaultdict(Counter)
    kw_n: Counter = Counter()
    kw_flagged: Counter = Counter()
    flagged = 0
    for r in rows:
        kw_n[r.keyword] += 1
        if r.flags:
            flagged += 1
            kw_flagged[r.keyword] += 1
            flags.update(r.flags)
            by_kw[r.keyword].update(r.flags)
    u1, n1, u2, n2 = distinct
    return {
        "generated_file": str(path), "mode": mode.value if mode else None,
        "model": header.get("model"), "samples": len(rows), "flagged": flagged,
        "clean": len(rows) - flagged,
        "flags": {f: flags.get(f, 0) for f in (ALL_FLAGS if cfg.cross_image else FLAGS)},
        "by_keyword": {kw: {"samples": kw_n[kw], "flagged": kw_flagged[kw],
                            "flags": {f: by_kw[kw].get(f, 0)
                                      for f in (ALL_FLAGS if cfg.cross_image else FLAGS)}}
                       for kw in sorted(kw_n)},
        "thresholds": {"near_duplicate": cfg.near_duplicate_threshold,
                       "icl_copy": cfg.icl_copy_threshold,
                       **({"cross_image_duplicate": cfg.cross_image_threshold}
                          if cfg.cross_image else {})},
        "icl_checked": icl_checked, **({"note": icl_note} if icl_note else {}),
        "questions": {"counted": sum(qtypes.values()),
                      "distinct_1": round(u1 / n1, 4) if n1 else None,
                      "distinct_2": round(u2 / n2, 4) if n2 else None,
                      "types": {t: qtypes.get(t, 0) for t in QUESTION_TYPES},
                      "multiple_choice": n_mc},
        "answer_words": {**stats(answer_words, 1), "histogram": word_histogram(answer_words)},
        "grounding": grounding,
        **({"judge": _judge_section(cfg.scores_file)} if cfg.scores_file else {}),
    }


def _judge_section(path: str) -> dict[str, Any]:
    from mminstruct.quality.scores import distributions, read_scores

    return {"scores_file": str(path), **distributions(read_scores(path))}


# ----------------------------------------------------------------------------------------------
# Writing


def report_path_for(output: str | os.PathLike) -> Path:
    """``run.json`` → ``manifests/run.quality.json`` (with the run's manifest)."""
    from mminstruct.generate.manifest import sidecar_path

    return sidecar_path(output, ".quality.json")


def write_report(report: QualityReport, path: str | os.PathLike) -> Path:
    """``{"summary": …, "samples": [one entry a line]}``, atomically."""
    import json

    p = Path(path)
    with atomic_writer(p, "w") as f:
        f.write('{"summary": ')
        f.write(json.dumps(report.summary, ensure_ascii=False, indent=1))
        f.write(',\n"samples": [')
        for n, e in enumerate(report.sample_entries()):
            f.write("\n" if n == 0 else ",\n")
            f.write(json.dumps(e, ensure_ascii=False))
        f.write("\n]}\n")
    return p


def compact_summary(summary: dict[str, Any], report: Path) -> dict[str, Any]:
    """What a run's manifest keeps of the report: counts, not the sample list."""
    return {"report": str(report), "samples": summary["samples"], "flagged": summary["flagged"],
            "flags": summary["flags"],
            "by_keyword": {k: v["flags"] for k, v in summary["by_keyword"].items()},
            "distinct_1": summary["questions"]["distinct_1"],
            "distinct_2": summary["questions"]["distinct_2"],
            "icl_checked": summary["icl_checked"]}


def quality_after_run(output: str | os.PathLike | None, manifest: str | os.PathLike | None,
                      prompt_file: str | None = None, input_folder: str | None = None
                      ) -> Path | None:
    """End of a run: write ``manifests/run.quality.json`` and the report's counts into the
    manifest under ``quality``. A failure is logged and put in the manifest; the run's data stays
    good, so it never fails the run."""
    from mminstruct.generate.manifest import write_manifest
    from mminstruct.data.records import read_json_file

    if not output or not Path(output).is_file():
        return None
    dest = report_path_for(output)
    try:
        rep = analyse(QualityConfig(str(output), prompt_file=prompt_file,
                                    input_folder=input_folder))
        write_report(rep, dest)
        section: dict[str, Any] = compact_summary(rep.summary, dest)
        log.info("quality: %d of %d samples flagged (%s); report %s", rep.summary["flagged"],
                 rep.summary["samples"], ", ".join(f"{k} {v}" for k, v in
                                                   rep.summary["flags"].items() if v) or "none",
                 dest)
    except (InputError, OSError) as e:
        log.warning("quality report not written: %s", e)
        section, dest = {"error": str(e)}, None
    if manifest and Path(manifest).is_file():
        try:
            m = read_json_file(Path(manifest))
            if isinstance(m, dict):
                m["quality"] = section
                write_manifest(Path(manifest), m)
        except (InputError, OSError) as e:
            log.warning("quality summary not added to the manifest: %s", e)
    return dest


# ----------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m mminstruct.quality",
                      description="Quality report on a generated-data file: duplicates, copies of "
                                  "in-context examples, invalid samples, refusals, variety, "
                                  "answer lengths and (with --model_name) CLIP grounding.")
    p.add_argument("--generated_file", required=True, help="OUT/generated_data/RUN.json")
    p.add_argument("--prompt_file", help="the run's prompt file (default: the one the generated "
                   "file names); needed for icl_copy")
    p.add_argument("--input_folder", help="folder the image paths are relative to (default: the "
                   "generated file's input_folder); needed for grounding")
    p.add_argument("--model_name", help="CLIP model spec (e.g. ViT-B-32:laion2b_s34b_b79k): "
                   "adds a grounding score per sample")
    p.add_argument("--cache_dir", help="embedding cache folder (default: the project's)")
    p.add_argument("--output", required=True, help="where to write the report (JSON)")
    p.add_argument("--near_duplicate_threshold", type=float, default=NEAR_DUPLICATE_THRESHOLD)
    p.add_argument("--icl_copy_threshold", type=float, default=ICL_COPY_THRESHOLD)
    p.add_argument("--cross_image", action="store_true", help="also flag near-duplicates across "
                   "images (cross_image_duplicate: MinHash LSH over question + answer)")
    p.add_argument("--cross_image_threshold", type=float, default=CROSS_IMAGE_THRESHOLD,
                   help="estimated Jaccard of question + answer word bigrams (default "
                   "%(default)s)")
    p.add_argument("--scores", help="a judge's scores file (python -m mminstruct.judge): its "
                   "score distributions per subgroup and prompt mode go into the report")
    p.add_argument("--debug", action="store_true", help="debug logging")
    return p


def run(args: argparse.Namespace) -> int:
    cfg = QualityConfig(args.generated_file, output=args.output, prompt_file=args.prompt_file,
                        input_folder=args.input_folder, clip_model=args.model_name,
                        cache_dir=args.cache_dir,
                        near_duplicate_threshold=args.near_duplicate_threshold,
                        icl_copy_threshold=args.icl_copy_threshold,
                        cross_image=args.cross_image,
                        cross_image_threshold=args.cross_image_threshold,
                        scores_file=args.scores)
    rep = analyse(cfg)
    try:
        out = write_report(rep, cfg.output or args.output)
    except OSError as e:
        raise DataFileError(f"{cfg.output}: cannot write the report: {e}") from e
    s = rep.summary
    print(f"{s['flagged']:,} of {s['samples']:,} samples flagged: "
          + ", ".join(f"{k} {v:,}" for k, v in s["flags"].items()), file=sys.stderr)
    if s.get("note"):
        print(s["note"], file=sys.stderr)
    print(out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
