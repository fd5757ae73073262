"""``python -m mminstruct.judge``: a VLM judge over a generated file, on the generation engine.

Each sample of a generated file — its image (downscaled and encoded as in generation), its
question and answer, the subgroup (keyword) it was written for and the in-context examples of its
prompt (read from the prompt file the generated file names, or ``--prompt_file``) — is sent to any
OpenAI-compatible vision model with a rubric (``judge_rubric``), and the scores go to a JSONL file
(``--output``), one line per sample::

    {"id": …, "keyword": …, "scores": {aspect: int}, "overall": float,
     "rationale": {aspect: str}, "judge": {"model": …, "rubric": hash}}

A sample the judge could not score (an unreadable image, an answer that stayed malformed after the
format fix) has ``"scores": null`` and its ``error`` class: it is recorded as unjudged, never a
crash. ``S.summary.json`` beside the scores holds the summary (means and their 95% confidence
intervals per subgroup and per prompt mode, distributions, self-agreement with ``--repeat``, ROC
AUC against ``--truth``, tokens and cost). The generated file is never modified.

The judge is another kind of run on ``generate.engine`` (``engine.JobKind``): the same run folder
(``generated_data/runs/judge_<output name>_<stamp>/``), append-only log and ``--resume`` after a
kill -9 (a sample is never judged twice), the same concurrency, RPM/TPM limiter, retries,
format-fix calls, ``--dry_run`` (Batch API files) and ``--batch_api``, token and cost tracking.
``JudgeJob`` changes only what is sent (``judge_body``), how an answer's text is read
(``parse_text``, ``fix_request``: the engine's ``parse_answer`` and its format fixes call them),
what a record carries (``base``) and the end (``finish``: the scores file).

Cost: before the run the cost is estimated (text tokens by the project's rule, image tokens by
OpenAI's tile rule on the downscaled size, prices from ``generate/prices.json`` or
``--input_price``/``--output_price``). ``--max_cost USD`` stops the run before a request would take
the spend past the cap (exit status 5); ``--resume`` (with a higher cap) continues. With
``--batch_api`` the cap is checked as results arrive (submitted batches are paid for).

``--sample F`` judges a stratified sample: ⌈F·n⌉ samples of each subgroup (at least one), chosen
with a fixed seed (``--sample_seed``). ``--repeat K`` judges each sample K times (the judge's
self-agreement per aspect: exact and within one point).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mminstruct.cache import atomic_write_json, atomic_writer, content_key, file_sha256
from mminstruct.cli import Setting, setting, settings_of
from mminstruct.errors import ConfigError, DataFileError
from mminstruct.data.formats import GENERATED_DIR
from mminstruct.generate.batch_api import BatchJob
from mminstruct.generate.config import GenerationConfig
from mminstruct.generate.control import RunControl
from mminstruct.generate.engine import JobKind, OnlineJob, run_async
from mminstruct.generate.job import RunJob, RunResult
from mminstruct.generate.jsonstream import PromptStream, iter_object
from mminstruct.generate.manifest import estimate_cost, price_for, price_table
from mminstruct.generate.runlog import FINISHED, iter_records, latest_records, read_record_at
from mminstruct.llm.errors import BudgetError
from mminstruct.llm.parse import ParseResult
from mminstruct.llm.requests import (REQUEST_OVERHEAD_TOKENS, BuiltRequest, EncodedImage, ImageEncoder,
                           request_body, text_tokens)
from mminstruct.data.modes import Mode
from mminstruct.quality.rubric import DEFAULT_RUBRIC, Rubric
from mminstruct.quality.scores import read_scores

log = logging.getLogger("mminstruct.quality.judge")

#: Exit status of a run stopped by ``--max_cost`` (the others are data_generator's).
EXIT_BUDGET = 5
SUMMARY_SUFFIX = ".summary.json"
RUN_PREFIX = "judge_"
#: Answer tokens expected per aspect (score + one sentence), for the estimate and the TPM limiter.
TOKENS_PER_ASPECT = 45
_IMAGE_TAG = re.compile(r"<image>\s*")
_ICL_QA = re.compile(r"Q:\s*(.*?)\n\s*A:\s*(.*?)(?=\nQ:|\Z)", re.DOTALL)
ICL_CHARS = 1500  # in-context examples shown to the judge, at most


# ----------------------------------------------------------------------------------------------
# Configuration


@dataclass
class JudgeConfig(GenerationConfig):
    """A judge run: a generation config whose ``prompt_file`` is the generated file (so the run's
    identity covers its content), plus the judge's own settings."""

    output: str = ""
    judge_prompt_file: str = ""  # the generation's prompt file ("" : the one the file names)
    rubric: Rubric = field(default_factory=lambda: DEFAULT_RUBRIC)
    # the judge's own settings, declared once (their flags: commands.judge; the app's fields)
    sample: float | None = setting(None, section="judge", above=0, max=1,
                                   what="a fraction in (0, 1]", ui_step=0.05,
                                   help="judge a stratified sample: this fraction of each "
                                   "subgroup (e.g. 0.1)")
    sample_seed: int = setting(0, section="judge", help="seed of --sample (default %(default)s)")
    repeat: int = setting(1, section="judge", min=1, max=10, help="judge each sample this many "
                          "times (self-agreement in the summary; default %(default)s)")
    max_cost: float | None = setting(None, section="judge", above=0, what="> 0 US dollars",
                                     ui_max=1e6, ui_step=1.0,
                                     help="stop before the spend passes this many US dollars "
                                     f"(exit status {EXIT_BUDGET}; --resume continues)")
    #: $ per 1M tokens, for a model without a price in the table
    input_price: float | None = setting(None, section="judge", help="$ per 1M input tokens (a "
                                        "model without a price in generate/prices.json)")
    output_price: float | None = setting(None, section="judge",
                                         help="$ per 1M output tokens")
    truth: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.output:
            raise ConfigError("--output is required: the scores file (S.jsonl)")
        for name in ("sample", "repeat", "max_cost"):  # the declarations' rules
            test, what = JUDGE_SETTINGS[name].rule()  # type: ignore[misc]
            if not test(getattr(self, name)):
                raise ConfigError(f"--{name} is {getattr(self, name)!r}; it must be {what}")
        if (self.input_price is None) != (self.output_price is None):
            raise ConfigError("--input_price and --output_price go together")
        if self.max_cost is not None and self.input_price is None \
                and price_for(self.generator_model) is None:
            raise ConfigError(f"--max_cost needs a price for model {self.generator_model!r}, which "
                              f"the price table ({', '.join(sorted(price_table().models))}) "
                              "lacks: give --input_price and --output_price ($ per 1M tokens)")

    def content_params(self) -> dict[str, Any]:
        out = super().content_params()
        out.update(rubric=self.rubric.hash, sample=self.sample, sample_seed=self.sample_seed,
                   repeat=self.repeat, judge_prompt_file=self.judge_prompt_file)
        return out

    def identity(self, prompt_count: int) -> str:
        params = self.content_params()
        params["num_prompts"] = prompt_count
        return content_key("judge-run-v1", params, file_sha256(self.prompt_path))

    def public_json(self) -> dict[str, Any]:
        out = super().public_json()
        out["rubric"] = self.rubric.to_json()
        out["rubric_hash"] = self.rubric.hash
        return out

    def cost_usd(self, input_tokens: int, output_tokens: int) -> float | None:
        if self.input_price is not None and self.output_price is not None:
            usd = input_tokens / 1e6 * self.input_price + output_tokens / 1e6 * self.output_price
            return usd * (price_table().batch_discount if self.batch_api else 1.0)
        est = estimate_cost(self.generator_model, input_tokens, output_tokens)
        return est.batch_usd if self.batch_api else est.usd


#: The judge's own declared settings (``mminstruct.cli.Setting``), by name: its command line's
#: flags and the Generate page's judge fields read them.
JUDGE_SETTINGS: dict[str, Setting] = {n: s for n, s in settings_of(JudgeConfig).items()
                                      if s.section == "judge"}


def judge_widget(name: str) -> dict[str, Any]:
    """The app's field for the judge setting ``name``: ``min_value``, ``max_value``, ``step``."""
    return JUDGE_SETTINGS[name].widget()


# ----------------------------------------------------------------------------------------------
# The items judged


@dataclass(frozen=True)
class JudgeItem:
    """One request of a judge run: sample ``index`` of the generated file, judgement ``repeat``."""

    sample_id: Any
    index: int
    repeat: int
    image: str | None  # relative to the input folder, as in the generated file
    question: str
    answer: str
    keyword: str
    mode: str  # the prompt mode, and the variant where there is one (vqa/reasoning)
    icl: str  # the in-context examples of the sample's prompt, as text
    # what the Batch API's provenance reader expects of an entry
    prompt: tuple = ()
    icl_indices: tuple = ()


@dataclass
class JudgeHeader:
    mode: Mode
    dataset_description: str
    min_gen_per_candidate: int = 1


class JudgeStream:
    """The items of a judge run, in the ``PromptStream`` shape the engine reads."""

    def __init__(self, header: JudgeHeader, items: list[JudgeItem], n_samples: int,
                 by_keyword: Counter):
        self.header, self.items = header, items
        self.count = len(items)
        self.n_samples = n_samples  # in the generated file
        self.by_keyword = by_keyword  # samples per subgroup in the generated file

    def entries(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, JudgeItem]]:
        stop = self.count if stop is None else min(stop, self.count)
        for idx in range(start, stop):
            yield idx, self.items[idx]


def _text(conv: Any, k: int) -> str:
    if isinstance(conv, list) and len(conv) > k and isinstance(conv[k], dict):
        v = conv[k].get("value")
        return v if isinstance(v, str) else ""
    return ""


def _image(sample: dict[str, Any]) -> str | None:
    img = sample.get("image_1") or sample.get("image")
    if isinstance(img, list):
        img = img[0] if img else None
    return img if isinstance(img, str) and img else None


def read_generated(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(header, compact samples) of a generated-data file, streamed; DataFileError (one line)
    for a file that is not one."""
    if not path.is_file():
        raise DataFileError(f"{path}: generated-data file not found")
    header: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    saw = False
    try:
        for key, value, is_item in iter_object(path, "samples"):
            if key != "samples":
                if not saw:
                    header[key] = value
                continue
            saw = True
            if not is_item or not isinstance(value, dict):
                raise DataFileError(f"{path}: not a generated-data file: 'samples' must be a "
                                    "list of objects")
            i = len(rows)
            conv = value.get("conversations")
            variant = value.get("variant") if isinstance(value.get("variant"), str) else None
            rows.append({"id": value.get("id", i), "image": _image(value),
                         "question": _IMAGE_TAG.sub("", _text(conv, 0)).strip(),
                         "answer": _text(conv, 1).strip(),
                         "keyword": str(value.get("keyword", "") or ""),
                         "variant": variant,
                         "prompt_idx": value.get("prompt_idx")
                         if isinstance(value.get("prompt_idx"), int) else None})
    except DataFileError as e:
        if "top-level JSON is not an object" in str(e):
            raise DataFileError(f"{path}: not a generated-data file (expected an object with a "
                                "'samples' list, as data_generator writes)") from e
        raise
    if not saw and "samples" not in header:
        raise DataFileError(f"{path}: not a generated-data file: no 'samples' list")
    return header, rows


def _icl_text(prompt: list[str]) -> str:
    pairs = []
    for part in prompt:
        if "Q:" in part:
            pairs += [f"Q: {_IMAGE_TAG.sub('', q).strip()}\nA: {a.strip()}"
                      for q, a in _ICL_QA.findall(part)]
    return "\n".join(pairs)[:ICL_CHARS]


def _prompt_file(cfg: JudgeConfig, header: dict[str, Any]) -> Path | None:
    if cfg.judge_prompt_file:
        p = Path(cfg.judge_prompt_file)
        if not p.is_file():
            raise DataFileError(f"{p}: prompt file not found")
        return p
    named = header.get("prompt_file")
    if not named:
        return None
    for cand in (Path(named), cfg.prompt_path.parent / named, cfg.input_folder / named):
        if cand.is_file():
            return cand
    log.warning("the prompt file %s named in the generated file is not there: the judge sees "
                "no in-context examples", named)
    return None


def choose(rows: list[dict[str, Any]], fraction: float | None, seed: int) -> list[int]:
    """Indices of the samples to judge: all, or a stratified sample per subgroup (⌈F·n⌉ each, at
    least one), in file order."""
    if fraction is None or fraction >= 1:
        return list(range(len(rows)))
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        groups[r["keyword"]].append(i)
    rng = random.Random(seed)
    chosen: list[int] = []
    for kw in sorted(groups):
        members = groups[kw]
        chosen += rng.sample(members, max(1, math.ceil(fraction * len(members))))
    return sorted(chosen)


def build_stream(cfg: JudgeConfig) -> JudgeStream:
    header, rows = read_generated(cfg.prompt_path)
    mode_name = str(header.get("mode") or "vqa")
    try:
        mode = Mode(mode_name)
    except ValueError:
        mode = Mode.VQA
    icl: dict[int, str] = {}
    pf = _prompt_file(cfg, header)
    if pf is not None:
        wanted = {r["prompt_idx"] for r in rows if r["prompt_idx"] is not None}
        for idx, entry in PromptStream.open(pf).entries():
            if idx in wanted and not isinstance(entry, Exception):
                icl[idx] = _icl_text(entry.prompt)
    items = []
    for i in choose(rows, cfg.sample, cfg.sample_seed):
        r = rows[i]
        m = f"{mode_name}/{r['variant']}" if r["variant"] else mode_name
        for k in range(cfg.repeat):
            items.append(JudgeItem(r["id"], i, k, r["image"], r["question"], r["answer"],
                                   r["keyword"], m, icl.get(r["prompt_idx"], "")))
    return JudgeStream(JudgeHeader(mode, str(header.get("dataset_description") or "")), items,
                       len(rows), Counter(r["keyword"] for r in rows))


# ----------------------------------------------------------------------------------------------
# Requests


def judge_user_text(item: JudgeItem, description: str) -> str:
    parts = [f"Dataset: {description or 'not given'}",
             f"Subgroup (task): {item.keyword or 'not given'}  Prompt mode: {item.mode}"]
    if item.icl:
        parts.append(f"In-context examples the sample imitated:\n{item.icl}")
    parts.append(f"Sample to judge:\nQUESTION: {item.question}\nANSWER: {item.answer}")
    if item.repeat:
        parts.append(f"(independent judgement {item.repeat + 1})")
    return "\n\n".join(parts)


async def judge_messages(item: JudgeItem, rubric: Rubric, description: str,
                         encoder: ImageEncoder) -> BuiltRequest:
    system = rubric.system_prompt()
    text = judge_user_text(item, description)
    tokens = text_tokens(system) + text_tokens(text) + REQUEST_OVERHEAD_TOKENS
    content: list[dict[str, Any]] = []
    if item.image:
        enc = await encoder.encode(item.image)
        content.append({"type": "image_url", "image_url": {"url": enc.url}})
        tokens += enc.token_estimate()
    content.append({"type": "text", "text": text})
    return BuiltRequest([{"role": "system", "content": system},
                         {"role": "user", "content": content}], tokens, item.image)


async def judge_body(cfg: JudgeConfig, item: JudgeItem, description: str, encoder: ImageEncoder,
                     model: str | None = None) -> tuple[dict[str, Any], BuiltRequest]:
    """The chat-completions body of one judgement (online, Batch API and dry run)."""
    built = await judge_messages(item, cfg.rubric, description, encoder)
    fmt = cfg.rubric.response_schema() if cfg.structured_outputs else None
    body = request_body(model or cfg.generator_model, built.messages, temperature=cfg.temperature,
                        max_tokens=cfg.max_tokens, seed=cfg.seed, response_format=fmt,
                        max_tokens_field=cfg.max_tokens_field)
    return body, built


def answer_tokens(cfg: JudgeConfig) -> int:
    return cfg.max_tokens or TOKENS_PER_ASPECT * len(cfg.rubric.aspects) + 30


def estimate(cfg: JudgeConfig, stream: JudgeStream, max_images: int = 2000) -> dict[str, Any]:
    """Tokens and price of the run before it starts: text by the project's rule, each image by
    the tile rule on its downscaled size (read from the header; ``max_images`` distinct images,
    the rest at their mean)."""
    from PIL import Image

    system = text_tokens(cfg.rubric.system_prompt()) + REQUEST_OVERHEAD_TOKENS
    sizes: dict[str, int] = {}
    text_in = image_in = n_img = 0
    desc = stream.header.dataset_description
    for item in stream.items:
        text_in += system + text_tokens(judge_user_text(item, desc))
        if not item.image:
            continue
        n_img += 1
        if item.image not in sizes and len(sizes) < max_images:
            try:
                with Image.open(cfg.input_folder / item.image) as im:
                    w, h = im.size
                s = min(1.0, cfg.max_image_side / max(w, h))
                sizes[item.image] = EncodedImage("", max(1, round(w * s)),
                                                 max(1, round(h * s))).token_estimate()
            except OSError:
                sizes[item.image] = 0
        image_in += sizes.get(item.image, 0)
    if n_img and len(sizes) >= max_images:  # the rest at the mean of those read
        known = [t for t in sizes.values() if t]
        mean = sum(known) / len(known) if known else 0
        image_in = int(sum(sizes.get(i.image, mean) for i in stream.items if i.image))
    out = answer_tokens(cfg) * stream.count
    usd = cfg.cost_usd(text_in + image_in, out)
    return {"requests": stream.count, "input_tokens": text_in + image_in,
            "image_tokens": image_in, "output_tokens": out,
            "usd": None if usd is None else round(usd, 4),
            "priced_as": "--input_price/--output_price" if cfg.input_price is not None
            else (price_for(cfg.generator_model) or (None,))[0],
            "batch_api": cfg.batch_api}


# ----------------------------------------------------------------------------------------------
# The job


class JudgeJob(RunJob):
    """What a judge run changes in a run (mixed into the online and Batch API jobs)."""

    cfg: JudgeConfig
    stream: JudgeStream

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.rubric = self.cfg.rubric
        self.n_expected = 1
        self.response_format = self.rubric.response_schema() if self.cfg.structured_outputs \
            else None
        self.tracker.status.mode = "judge"
        self.spent_before = _logged_cost(self.cfg, self.run.log_path)
        self.reserved = 0  # requests sent and not yet recorded (the cost cap counts them)
        self.guess_per_request: float | None = None
        if self.cfg.max_cost is not None:
            est = estimate(self.cfg, self.stream)
            self.guess_per_request = (est["usd"] or 0.0) / max(1, est["requests"])
            self.check_budget()

    def base(self, idx: int, entry: Any) -> dict[str, Any]:
        return {"prompt_idx": idx, "sample_id": entry.sample_id, "sample": entry.index,
                "repeat": entry.repeat, "keyword": entry.keyword, "image": entry.image}

    async def request(self, entry: Any, model: str | None = None
                      ) -> tuple[dict[str, Any], BuiltRequest]:
        return await judge_body(self.cfg, entry, self.stream.header.dataset_description,
                                self.shared.encoder, model)

    def estimate(self, input_tokens: int) -> int:
        return input_tokens + answer_tokens(self.cfg)

    FIX_ANSWER_TOKENS = 200

    def parse_text(self, text: str, fixed: bool = False) -> ParseResult:
        """The scores in a judge's answer (the engine's ``parse_answer`` calls this, with the
        rubric's repair prompt as its format fix)."""
        return ParseResult([self.rubric.parse(text)], how="fixed" if fixed else "json")

    def fix_request(self, text: str) -> list[dict[str, Any]]:
        return self.rubric.fix_messages(text)

    # ------------------------------------------------------------------ the cost cap

    def spent(self) -> float:
        st = self.tracker.status
        return self.spent_before + (self.cfg.cost_usd(st.input_tokens, st.output_tokens) or 0.0)

    def record(self, rec: dict) -> None:
        super().record(rec)
        self.check_budget()

    def per_request(self) -> float:
        """The cost of the next request: the mean of this session's so far, else the estimate's."""
        if self.session_done:
            return (self.spent() - self.spent_before) / self.session_done
        return self.guess_per_request or 0.0

    def check_budget(self, sending: int = 0) -> bool:
        """Whether ``sending`` more requests fit under ``--max_cost`` with the spend so far and
        the requests in flight (each at ``per_request``); when not, the run stops (exit status
        ``EXIT_BUDGET``; the rest is left for ``--resume``)."""
        cap = self.cfg.max_cost
        if cap is None:
            return True
        if self.stopping:
            return False
        spent = self.spent()
        if spent + self.per_request() * (self.reserved + sending) > cap:
            self.begin_stop(BudgetError(
                f"spent ${spent:.4f} of the ${cap:g} cap (--max_cost); continue with --resume "
                "and a higher --max_cost"))
            return False
        return True

    # ------------------------------------------------------------------ the end

    def finish(self) -> RunResult:
        st = self.publish()
        complete = self.stop_error is None and not self.stopping and st.done >= st.total
        try:
            scores = write_scores(self.cfg, self.stream, self.run.log_path, complete)
        except OSError as e:
            raise DataFileError(f"{self.cfg.output}: cannot write the scores ({e})") from e
        if not complete:
            result = super().finish()  # stopped / cancelled: the message, the run's state
            result.output = scores
            return result
        self.run.update_meta(state=FINISHED, output=str(scores))
        summary = json.loads(summary_path(scores).read_text())
        st.state, st.output = "finished", str(scores)
        st.message = (f"{summary['judged']} samples judged, {summary['unjudged']} unjudged; "
                      f"overall mean {summary['overall']['mean']}")
        self.publish()
        return RunResult(FINISHED, self.run.path, scores, summary_path(scores), st, st.message)


class JudgeOnlineJob(JudgeJob, OnlineJob):
    """A judge run through online calls (``engine.OnlineJob``'s queue and workers); a request is
    sent only when it fits under the cost cap."""

    async def _process(self, idx: int, entry: Any, client: Any) -> dict | None:
        if not self.check_budget(sending=1):
            return None  # not recorded: --resume sends it
        self.reserved += 1
        try:
            return await super()._process(idx, entry, client)
        finally:
            self.reserved -= 1


class JudgeBatchJob(JudgeJob, BatchJob):
    """A judge run through the OpenAI Batch API (``batch_api.BatchJob``)."""


def _logged_cost(cfg: JudgeConfig, log_path: Path) -> float:
    tin = tout = 0
    for _, rec in iter_records(log_path):
        u = rec.get("usage") or {}
        tin += int(u.get("input") or 0)
        tout += int(u.get("output") or 0)
    return cfg.cost_usd(tin, tout) or 0.0


# ----------------------------------------------------------------------------------------------
# Scores and summary


def default_scores_path(generated: str | Path) -> Path:
    """``manifests/RUN.scores.jsonl`` beside a generated file: where the app's judge runs write
    and Review looks."""
    from mminstruct.generate.manifest import sidecar_path

    return sidecar_path(generated, ".scores.jsonl")


def summary_path(scores: str | Path) -> Path:
    p = Path(scores)
    return p.with_name(p.name.removesuffix(".jsonl") + SUMMARY_SUFFIX)


def write_scores(cfg: JudgeConfig, stream: JudgeStream, log_path: Path, complete: bool) -> Path:
    """The scores file (one line per sample judged or failed, in file order) and its summary,
    both written atomically from the run's log."""
    judge = {"model": cfg.generator_model, "rubric": cfg.rubric.hash}
    per_sample: dict[int, list[dict[str, Any] | None]] = defaultdict(list)
    errors: dict[int, str] = {}
    tin = tout = 0
    for idx, latest in sorted(latest_records(log_path).items()):
        if idx >= stream.count:
            continue
        rec = read_record_at(log_path, latest.offset)
        item = stream.items[idx]
        if latest.ok and rec.get("items"):
            per_sample[item.index].append(rec["items"][0])
        else:
            per_sample[item.index].append(None)
            errors[item.index] = latest.error_class or "unknown"
    for _, rec in iter_records(log_path):
        u = rec.get("usage") or {}
        tin, tout = tin + int(u.get("input") or 0), tout + int(u.get("output") or 0)
    by_index = {it.index: it for it in stream.items if it.repeat == 0}
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines: list[dict[str, Any]] = []
    with atomic_writer(out, "w") as f:
        for i in sorted(per_sample):
            item = by_index[i]
            judged = [j for j in per_sample[i] if j is not None]
            line: dict[str, Any] = {"id": item.sample_id, "index": i, "keyword": item.keyword,
                                    "mode": item.mode}
            if judged:
                line.update(scores=judged[0]["scores"], overall=judged[0]["overall"],
                            rationale=judged[0]["rationale"])
                if cfg.repeat > 1:
                    line["repeats"] = [j["scores"] for j in judged]
            else:
                line.update(scores=None, overall=None, rationale=None,
                            error=errors.get(i, "unknown"))
            line["judge"] = judge
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
            lines.append(line)
    truth = load_truth(cfg.truth) if cfg.truth else None
    summary = summarize(lines, cfg.rubric, stream, truth, cfg.repeat)
    summary.update(complete=complete, judge=judge, generated_file=str(cfg.prompt_path),
                   scores=str(out), sample=cfg.sample, repeat=cfg.repeat,
                   tokens={"input": tin, "output": tout},
                   cost_usd=None if cfg.cost_usd(tin, tout) is None
                   else round(cfg.cost_usd(tin, tout) or 0.0, 4),
                   max_cost=cfg.max_cost)
    atomic_write_json(summary_path(out), summary)
    return out


def load_truth(path: str) -> set[str]:
    """The ids of the planted bad samples: a JSON list of ids, or an object id → true/false."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataFileError(f"{path}: cannot read the truth file ({e})") from e
    if isinstance(doc, dict):
        return {str(k) for k, v in doc.items() if v}
    if isinstance(doc, list):
        return {str(k) for k in doc}
    raise DataFileError(f"{path}: the truth file must be a list of ids or an object id → bool")


def mean_ci(values: list[float], population: int | None = None) -> dict[str, Any]:
    """Mean and its 95% confidence interval (normal approximation; the finite-population
    correction when ``population`` — the samples the values were drawn from — is given)."""
    n = len(values)
    if not n:
        return {"n": 0, "mean": None, "ci95": None}
    m = sum(values) / n
    if n < 2:
        return {"n": n, "mean": round(m, 3), "ci95": None}
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    fpc = math.sqrt(max(0.0, (population - n) / (population - 1))) \
        if population and population > 1 else 1.0
    half = 1.96 * sd / math.sqrt(n) * fpc
    return {"n": n, "mean": round(m, 3), "ci95": [round(m - half, 3), round(m + half, 3)]}


def roc_auc(scores_bad: list[float], scores_good: list[float]) -> float | None:
    """P(a good sample scores higher than a bad one), ties counting half (Mann–Whitney)."""
    if not scores_bad or not scores_good:
        return None
    import numpy as np

    good = np.sort(np.asarray(scores_good, float))
    bad = np.asarray(scores_bad, float)
    above = len(good) - np.searchsorted(good, bad, side="right")  # good strictly above each bad
    ties = np.searchsorted(good, bad, side="right") - np.searchsorted(good, bad, side="left")
    return round(float((above.sum() + 0.5 * ties.sum()) / (len(good) * len(bad))), 4)


def summarize(lines: list[dict[str, Any]], rubric: Rubric, stream: JudgeStream,
              truth: set[str] | None, repeat: int = 1) -> dict[str, Any]:
    judged = [ln for ln in lines if ln["scores"] is not None]
    sampled = stream.count // max(1, repeat)
    whole = stream.n_samples if sampled < stream.n_samples else None
    out: dict[str, Any] = {
        "samples_in_file": stream.n_samples, "judged": len(judged),
        "unjudged": len(lines) - len(judged),
        "unjudged_by_class": dict(Counter(ln.get("error") for ln in lines
                                          if ln["scores"] is None)),
        "rubric": rubric.to_json(),
        "overall": mean_ci([ln["overall"] for ln in judged], whole),
        "aspects": {a: {**mean_ci([ln["scores"][a] for ln in judged], whole),
                        "distribution": {str(v): sum(1 for ln in judged if ln["scores"][a] == v)
                                         for v in range(rubric.low, rubric.high + 1)}}
                    for a in rubric.aspects},
    }
    for key, name in (("keyword", "by_subgroup"), ("mode", "by_mode")):
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for ln in judged:
            groups[ln[key]].append(ln)
        out[name] = {g: {"overall": mean_ci([ln["overall"] for ln in members],
                                            stream.by_keyword.get(g) if key == "keyword"
                                            and whole else None),
                         "aspects": {a: round(sum(ln["scores"][a] for ln in members)
                                              / len(members), 3) for a in rubric.aspects}}
                     for g, members in sorted(groups.items())}
    reps = [ln["repeats"] for ln in judged if len(ln.get("repeats") or ()) > 1]
    if reps:
        out["agreement"] = {a: {
            "pairs": len(reps),
            "exact": round(sum(r[0][a] == r[1][a] for r in reps) / len(reps), 4),
            "within_1": round(sum(abs(r[0][a] - r[1][a]) <= 1 for r in reps) / len(reps), 4)}
            for a in rubric.aspects}
    if truth is not None:
        bad = [ln["overall"] for ln in judged if str(ln["id"]) in truth]
        good = [ln["overall"] for ln in judged if str(ln["id"]) not in truth]
        out["planted"] = {"bad": len(bad), "good": len(good), "roc_auc": roc_auc(bad, good),
                          "aspects_roc_auc": {a: roc_auc(
                              [ln["scores"][a] for ln in judged if str(ln["id"]) in truth],
                              [ln["scores"][a] for ln in judged if str(ln["id"]) not in truth])
                              for a in rubric.aspects}}
    return out


# ----------------------------------------------------------------------------------------------
# Entry points


def judge_kind(cfg: JudgeConfig) -> JobKind:
    stream = build_stream(cfg)
    desc = stream.header.dataset_description

    async def dry_build(entry: Any, encoder: Any) -> dict[str, Any]:
        body, _ = await judge_body(cfg, entry, desc, encoder)
        return body

    return JobKind(stream, JudgeOnlineJob, JudgeBatchJob, dry_build)


async def judge_async(cfg: JudgeConfig, *, control: RunControl | None = None,
                      on_progress: Any = None, kind: JobKind | None = None) -> RunResult:
    return await run_async(cfg, control=control, on_progress=on_progress,
                           kind=kind or judge_kind(cfg))


def run_judge(cfg: JudgeConfig, *, control: RunControl | None = None,
              on_progress: Any = None) -> RunResult:
    """Blocking form (what the CLI and the app's background process call)."""
    return asyncio.run(judge_async(cfg, control=control, on_progress=on_progress))


def judge_config_from_dict(d: dict[str, Any]) -> JudgeConfig:
    """A ``JudgeConfig`` from its ``public_json`` (what the app's launch record keeps)."""
    from mminstruct.generate.config import config_from_dict
    from mminstruct.quality.rubric import rubric_from_json

    data = dict(d)
    data["rubric"] = rubric_from_json(d.get("rubric") or DEFAULT_RUBRIC.to_json(), "the rubric")
    return config_from_dict(data, JudgeConfig)  # type: ignore[return-value]


def runs_folder_for(generated: Path) -> Path:
    """The output folder whose ``generated_data/runs/`` holds the judge's run folders: the
    generation's own when the file sits in a ``generated_data`` folder."""
    parent = generated.resolve().parent
    return parent.parent if parent.name == GENERATED_DIR else parent

__all__ = ["EXIT_BUDGET", "JudgeConfig", "JudgeItem", "JudgeStream", "build_stream", "estimate",
           "judge_async", "read_scores", "run_judge", "summary_path", "write_scores"]
