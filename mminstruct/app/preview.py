"""Before generating: the prompt plan of a workspace, any prompt rendered exactly as the model will
receive it, and a token and cost estimate for the whole run. No streamlit; the Prompts page calls
these.

* ``prompt_config(ws, task_path)`` → ``prompts.PromptConfig`` from the workspace's settings;
* ``prepare_workspace_plan(ws, task, path)`` → (``PromptConfig``, ``PromptPlan``): the allocation
  per subgroup, no prompt built (what the Prompts page shows on every rerun; instant at 150k);
* ``prompt_at(task, config, plan, keyword, pos)``: one prompt of the plan, drawn from its
  subgroup's own random stream (the others are not walked), the same prompt the file will hold;
* ``save_prompt_plan(ws, task, config, plan)``: the prompt file streamed by ``prompts.write_prompts``,
  the command line's writer, in a background thread when started by ``start_save`` (the page polls
  ``save_status``), so no Streamlit rerun waits for 150,000 prompts;
* ``plan_workspace(ws, task)`` → (…, ``PromptFile``): every prompt in memory, for small plans (the
  subgroup runs, tests); ``save_prompts(ws, pf)`` writes such a plan;
* ``render_request(pf, index, input_root, …)`` → ``llm.requests.BuiltRequest``: the chat messages
  built by the engine's own ``build_messages`` (system prompt, the prompt list with images as the
  same downscaled JPEG data URLs, the generation prompt), so the preview is what is sent;
* ``estimate_run(pf, input_root, model, …)`` / ``estimate_plan(task, config, plan, …)`` → ``RunEstimate``: input tokens from the same rules
  as the engine's estimate (text ≈ characters / 4; images by the model's own image-token rule,
  ``llm.requests.image_token_rule``, on the image as sent, i.e. after downscaling to
  ``max_image_side``), output tokens from a per-item
  allowance per mode (``OUTPUT_TOKENS_PER_ITEM``, an approximation: a JSON item of a chart QA
  answer with reasoning is ~150–250 tokens), and the cost from ``generate.manifest``'s price table.
  Above ``sample`` prompts, a deterministic sample is measured and scaled (``exact`` False):
  ``estimate_run`` samples the in-memory list; ``estimate_plan`` measures the first prompts of each
  subgroup in proportion to its size (its first pass over a shuffled pool: a sample without
  repeats) and scales each subgroup by its own count, without building the plan.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mminstruct.errors import ConfigError, ImageError, MMInstructError
from mminstruct.cache import atomic_write_json
from mminstruct.data.formats import (PromptEntry, PromptFile, TaskFile, is_prompt_image, load_task_file,
                       prompt_file_name, save_prompt_file, task_records)
from mminstruct.generate.manifest import CostEstimate, estimate_cost
from mminstruct.generate.output import samples_per_item, samples_per_prompt
from mminstruct.data.images import probe_image, resolve_image_path
from mminstruct.data.records import Problem, Record, parse_once
from mminstruct.llm.requests import (REQUEST_OVERHEAD_TOKENS, BuiltRequest, EncodedImage, ImageEncoder,
                           build_messages, generation_prompt, image_token_rule, system_prompt,
                           text_tokens)
from mminstruct.data.modes import Mode, parse_mode
from mminstruct.prompts.plan import (PromptConfig, PromptPlan, iter_prompts, plan_prompts, prepare_plan,
                       write_prompts)
from mminstruct.app.workspace import Workspace

#: Output tokens per generated item, by mode (an allowance, not a measurement; see the docstring).
OUTPUT_TOKENS_PER_ITEM: dict[Mode, int] = {
    Mode.VQA: 200, Mode.VQA_NR: 70, Mode.TQA: 260, Mode.DESCRIPT: 220, Mode.GENERIC: 200,
    Mode.VQA_TASK_DESC: 200, Mode.DESCRIPT_TASK_DESC: 220,
    Mode.CONVERSATION: 90,  # one turn
}


def prompt_config(ws: Workspace, task_path: str | os.PathLike) -> PromptConfig:
    p, root = ws.settings.prompts, ws.input_root
    if root is None:
        raise ConfigError("no data in this workspace yet: load a data file first")
    return p.to_config(str(Path(task_path).resolve()), str(root), str(ws.root),
                       ws.settings.data.allow_outside_paths)


def plan_workspace(ws: Workspace, task: TaskFile, task_path: str | os.PathLike
                   ) -> tuple[PromptConfig, PromptPlan, PromptFile]:
    config = prompt_config(ws, task_path)
    plan = prepare_plan(task, config)
    return config, plan, plan_prompts(task, config, plan)


def prepare_workspace_plan(ws: Workspace, task: TaskFile, task_path: str | os.PathLike,
                           file_checks: dict[str, Any] | None = None
                           ) -> tuple[PromptConfig, PromptPlan]:
    """The config and the allocation per subgroup; no prompt is built (``prompt_at``,
    ``estimate_plan`` and ``save_prompt_plan`` draw them when needed). ``file_checks``: see
    ``prompts.prepare_plan`` (the page keeps one per task file, input folder and path rule)."""
    config = prompt_config(ws, task_path)
    parsed = None
    if task is parse_once(str(task_path), load_task_file, peek=True):  # the shared parse: its
        parsed = parse_once(str(task_path), task_file_records)          # samples parsed once too
    return config, prepare_plan(task, config, file_checks, parsed)


def task_file_records(path: str | os.PathLike) -> tuple[dict[int, Record], list[Problem]]:
    """``task_records`` of the task file at ``path`` as ``parse_once`` keeps it: read through
    ``parse_once`` itself, so that with ``parse_once(path, task_file_records)`` every session and
    every settings edit shares one parse of the task file and of its samples (read-only)."""
    return task_records(parse_once(str(path), load_task_file))


def plan_size(plan: PromptPlan) -> int:
    """Prompts the plan writes (each subgroup exactly its allocation)."""
    return sum(s.n_prompts for s in plan.subgroups)


def prompt_at(task: TaskFile, config: PromptConfig, plan: PromptPlan, keyword: str | None,
              pos: int) -> tuple[int, PromptEntry]:
    """(index in the file, entry) of the ``pos``-th prompt (0-based) of subgroup ``keyword``, or of
    the whole plan when ``keyword`` is None. Only that subgroup's random stream is walked, up to
    ``pos``: the prompt is the one the saved file holds at that index."""
    start = 0
    for sp in plan.subgroups:
        if keyword is None and pos < start + sp.n_prompts:
            keyword, pos = sp.keyword, pos - start
        if sp.keyword == keyword:
            if not 0 <= pos < sp.n_prompts:
                raise ConfigError(f"prompt {pos + 1} is out of range for subgroup {keyword!r} "
                                  f"(1–{sp.n_prompts})")
            entry = next(itertools.islice(iter_prompts(task, config, plan, {keyword}), pos, None))
            return start + pos, entry
        start += sp.n_prompts
    names = [s.keyword for s in plan.subgroups if s.n_prompts]
    raise ConfigError(f"no prompt {pos + 1} in subgroup {keyword!r}; subgroups with prompts: "
                      f"{', '.join(map(repr, names)) or 'none'}")


def prompt_head(task: TaskFile, config: PromptConfig) -> PromptFile:
    """The prompt file's header fields (no prompts): what ``render_request`` and the estimate read."""
    return PromptFile(config.task_desc_path, task.dataset_description, config.num_icl_samples,
                      config.mode, config.min_gen_per_candidate, config.total_gen, [])


def _save_target(ws: Workspace) -> tuple[str, Path | None]:
    """(prefix, explicit path): the default prefix gives ``prompts_{stamp}.json``."""
    prefix = prompt_file_prefix(ws.settings.prompts.file_prefix)
    return prefix, (None if prefix else ws.prompts_dir / prompt_file_name("").lstrip("_"))


def save_prompt_plan(ws: Workspace, task: TaskFile, config: PromptConfig, plan: PromptPlan
                     ) -> tuple[Path, int]:
    """Stream the plan to ``generated_prompts/{prefix}_prompts_{stamp}.json`` with the command
    line's writer (``prompts.write_prompts``: the same bytes, no prompt list in memory) and
    remember it (saved). Returns (path, number of prompts)."""
    prefix, path = _save_target(ws)
    path, n = write_prompts(task, config, plan, ws.root, prefix, path=path)
    ws.settings.prompt_file = str(path)
    ws.save()
    return path, n


@dataclass(frozen=True)
class PlannedPrompts:
    """A plan whose prompts are not built: counts per subgroup now, some subgroups' prompts
    when they are needed (a run for some subgroups only)."""

    task: TaskFile
    config: PromptConfig
    plan: PromptPlan

    def count(self, keywords: Iterable[str]) -> int:
        chosen = set(keywords)
        return sum(s.n_prompts for s in self.plan.subgroups if s.keyword in chosen)

    def prompt_file(self, keywords: Iterable[str]) -> PromptFile:
        """The whole plan's header with the prompts of ``keywords`` only (the same prompts)."""
        return plan_prompts(self.task, self.config, self.plan, set(keywords))


#: A save of at most this many prompts finishes inside the click's rerun (a fraction of a second);
#: a larger one goes on in the background while the page polls.
INLINE_SAVE_PROMPTS = 20_000


def wait_inline(job: "SaveJob", timeout: float = 10.0) -> None:
    """Wait for a small save (``INLINE_SAVE_PROMPTS``) to finish; return at once for a large one."""
    if job.prompts <= INLINE_SAVE_PROMPTS:
        job.finished.wait(timeout)


@dataclass
class SaveJob:
    """A prompt file being written in a background thread (``start_save``)."""

    key: str
    prompts: int
    started: float = field(default_factory=time.monotonic)
    done: bool = False
    path: Path | None = None
    written: int = 0
    error: str | None = None
    seconds: float = 0.0
    finished: threading.Event = field(default_factory=threading.Event)


_SAVES: dict[str, SaveJob] = {}
_SAVES_LOCK = threading.Lock()


def start_save(ws_root: str | os.PathLike, task: TaskFile, config: PromptConfig,
               plan: PromptPlan) -> SaveJob:
    """Write the prompt file in a background thread (one at a time per workspace: a second start
    while one runs returns the running job). The thread opens the workspace itself, so only
    ``prompt_file`` is changed in its settings."""
    key = str(Path(ws_root).resolve())
    with _SAVES_LOCK:
        job = _SAVES.get(key)
        if job is not None and not job.done:
            return job
        job = _SAVES[key] = SaveJob(key, plan_size(plan))

    def run() -> None:
        try:
            path, n = save_prompt_plan(Workspace.open(key), task, config, plan)
            job.path, job.written = path, n
        except (MMInstructError, OSError, ValueError) as e:
            job.error = str(e)
        except Exception as e:  # noqa: BLE001  (a thread: anything else is reported on the page)
            job.error = f"{type(e).__name__}: {e}"
        finally:
            job.seconds = time.monotonic() - job.started
            job.done = True
            job.finished.set()

    threading.Thread(target=run, name=f"save-prompts:{key}", daemon=True).start()
    return job


def save_status(ws_root: str | os.PathLike) -> SaveJob | None:
    """The workspace's last (or running) background save, if any."""
    with _SAVES_LOCK:
        return _SAVES.get(str(Path(ws_root).resolve()))


def allocation_rows(plan: PromptPlan, config: PromptConfig) -> list[dict[str, Any]]:
    """One row per subgroup: references, ICL pool, candidates, prompts and expected samples."""
    per = samples_per_prompt(config.mode, config.min_gen_per_candidate)
    return [{"keyword": s.keyword, "reference samples": s.n_reference,
             "usable as ICL": len(s.icl_pool), "candidate images": len(s.candidates),
             "budget": str(s.budget) if s.budget is not None else "proportional",
             "prompts": s.n_prompts, "expected samples": s.n_prompts * per,
             "each candidate used": (f"{s.reuse:.1f}×" if s.n_prompts > len(s.candidates)
                                     and s.candidates else "≤ 1×")}
            for s in plan.subgroups]


def samples_note(mode: str | Mode, total_gen: int, items_per_prompt: int,
                 n_prompts: int | None = None) -> str:
    """The sample arithmetic in words: total_gen counts items the model writes; prompts ×
    items per prompt × samples per item (by mode) = samples."""
    m = parse_mode(mode)
    if m.one_sample_per_prompt:
        head = (f"total_gen = {total_gen:,} turns → about {-(-total_gen // items_per_prompt):,} "
                f"prompts of one {items_per_prompt}-turn conversation (rounded up per subgroup)")
        if n_prompts is None:
            return f"{head}; {m.value} writes one multi-turn sample per prompt."
        return (f"{n_prompts:,} prompts × 1 conversation of {items_per_prompt} turn(s) "
                f"({m.value}: one multi-turn sample per prompt) = {n_prompts:,} samples")
    per = samples_per_item(m)
    why = ("a reasoning sample and a concise sample per item" if per == 2
           else "one sample per item")
    head = (f"total_gen = {total_gen:,} items → about {-(-total_gen // items_per_prompt):,} "
            f"prompts of {items_per_prompt} item(s) (rounded up per subgroup)")
    if n_prompts is None:
        return f"{head}; {m.value} writes {why}."
    return (f"{n_prompts:,} prompts × {items_per_prompt} item(s) per prompt × {per} "
            f"sample(s) per item ({m.value}: {why}) = {n_prompts * items_per_prompt * per:,} "
            "samples")


def prompt_file_prefix(prefix: str) -> str:
    """The prefix without a trailing "prompts" (the file name adds ``_prompts_``), so the
    default prefix gives ``prompts_YYYYmmdd_HHMMSS.json``, not ``prompts_prompts_…``."""
    clean = prefix.strip()
    for tail in ("_prompts", "-prompts", "prompts"):
        if clean.lower().endswith(tail):
            clean = clean[: -len(tail)]
            break
    return clean


def save_prompts(ws: Workspace, pf: PromptFile) -> Path:
    """Write ``generated_prompts/{prefix}_prompts_{stamp}.json`` (``prompts_{stamp}.json`` for
    the default prefix) and remember it (saved)."""
    prefix = prompt_file_prefix(ws.settings.prompts.file_prefix)
    if prefix:
        path = save_prompt_file(pf, ws.root, prefix)
    else:
        path = ws.prompts_dir / prompt_file_name("").lstrip("_")
        atomic_write_json(path, pf.to_json(), indent=None)
        pf.path = path
    ws.settings.prompt_file = str(path)
    ws.save()
    return path


# ----------------------------------------------------------------------------------------------
# What the model sees


def render_request(pf: PromptFile, index: int, input_root: str | os.PathLike, *,
                   max_image_side: int = 1024, jpeg_quality: int = 85,
                   allow_outside: bool = False, model: str | None = None) -> BuiltRequest:
    """Prompt ``index`` as chat messages, built by the engine's request builder (its token
    estimate by ``model``'s image-token rule)."""
    if not 0 <= index < len(pf.prompts):
        raise ConfigError(f"prompt index {index} is out of range (0–{len(pf.prompts) - 1})")
    return render_entry(pf, pf.prompts[index], input_root, max_image_side=max_image_side,
                        jpeg_quality=jpeg_quality, allow_outside=allow_outside, model=model)


def render_entry(head: PromptFile, entry: PromptEntry, input_root: str | os.PathLike, *,
                 max_image_side: int = 1024, jpeg_quality: int = 85,
                 allow_outside: bool = False, model: str | None = None) -> BuiltRequest:
    """One prompt entry as chat messages, with ``head``'s mode, description and items per prompt
    (its token estimate by ``model``'s image-token rule)."""
    mode = head.mode
    system = system_prompt(mode, head.dataset_description)
    generate = generation_prompt(mode, head.min_gen_per_candidate)
    encoder = ImageEncoder(input_root, max_side=max_image_side, quality=jpeg_quality,
                           allow_outside=allow_outside)
    return asyncio.run(build_messages(entry, mode, system, generate, encoder, model))


# ----------------------------------------------------------------------------------------------
# Estimates


@dataclass(frozen=True)
class RunEstimate:
    prompts: int
    measured: int  # prompts measured (all of them when exact)
    exact: bool
    input_tokens: int
    output_tokens: int
    image_tokens: int
    cost: CostEstimate
    missing_images: int = 0
    image_rule: str = ""  # the model's image-token rule in words (``ImageTokenRule.describe``)

    @property
    def per_prompt_input(self) -> float:
        return self.input_tokens / self.prompts if self.prompts else 0.0


def image_tokens(width: int, height: int, max_side: int, model: str | None = None) -> int:
    """Tokens of an image sent after downscaling to ``max_side``, by ``model``'s rule."""
    scale = min(1.0, max_side / max(width, height, 1))
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    return EncodedImage("", w, h).token_estimate(model)


class _Meter:
    """Text and image tokens of prompt entries (image sizes probed once per path)."""

    def __init__(self, input_root: str | os.PathLike, max_image_side: int, allow_outside: bool,
                 model: str | None = None):
        self.root, self.side, self.allow = Path(input_root), max_image_side, allow_outside
        self.model = model
        self.sizes: dict[str, int | None] = {}

    def measure(self, entries: Iterable[PromptEntry]) -> tuple[int, int, int, int]:
        """(text tokens, image tokens, missing images, entries measured)."""
        text = img = missing = measured = 0
        for entry in entries:
            measured += 1
            for part in entry.prompt:
                if is_prompt_image(part):
                    if part not in self.sizes:
                        try:
                            info = probe_image(resolve_image_path(self.root, part,
                                                                  allow_outside=self.allow))
                            self.sizes[part] = image_tokens(info.width, info.height, self.side,
                                                           self.model)
                        except ImageError:
                            self.sizes[part] = None
                    t = self.sizes[part]
                    if t is None:
                        missing += 1
                    else:
                        img += t
                else:
                    text += text_tokens(part)
        return text, img, missing, measured


def _estimate(head: PromptFile, n: int, measured: int, text: float, img: float, missing: float,
              model: str) -> RunEstimate:
    """The estimate from measured (already scaled to all ``n`` prompts) text/image tokens."""
    mode = head.mode
    fixed = (text_tokens(system_prompt(mode, head.dataset_description))
             + text_tokens(generation_prompt(mode, head.min_gen_per_candidate))
             + REQUEST_OVERHEAD_TOKENS)
    image_total = math.ceil(img)
    input_total = math.ceil(text + img) + fixed * n
    output_total = n * head.min_gen_per_candidate * OUTPUT_TOKENS_PER_ITEM[mode]
    return RunEstimate(n, measured, measured == n, input_total, output_total, image_total,
                       estimate_cost(model, input_total, output_total), math.ceil(missing),
                       image_token_rule(model).describe())


def estimate_run(pf: PromptFile, input_root: str | os.PathLike, model: str, *,
                 max_image_side: int = 1024, sample: int = 2000, seed: int = 0,
                 allow_outside: bool = False) -> RunEstimate:
    n = len(pf.prompts)
    if n == 0:
        return RunEstimate(0, 0, True, 0, 0, 0, estimate_cost(model, 0, 0))
    idx = range(n) if n <= sample else sorted(random.Random(seed).sample(range(n), sample))
    text, img, missing, measured = _Meter(input_root, max_image_side, allow_outside, model).measure(
        pf.prompts[i] for i in idx)
    scale = n / measured
    return _estimate(pf, n, measured, text * scale, img * scale, missing * scale, model)


def estimate_plan(task: TaskFile, config: PromptConfig, plan: PromptPlan,
                  input_root: str | os.PathLike, model: str, *, max_image_side: int = 1024,
                  sample: int = 2000, allow_outside: bool = False) -> RunEstimate:
    """``estimate_run`` for a plan that is not built: every prompt when the plan has at most
    ``sample``; else each subgroup's first prompts, in proportion to its size (at least one),
    scaled by that subgroup's own count."""
    n = plan_size(plan)
    if n == 0:
        return RunEstimate(0, 0, True, 0, 0, 0, estimate_cost(model, 0, 0))
    meter = _Meter(input_root, max_image_side, allow_outside, model)
    text = img = missing = 0.0
    measured = 0
    for sp in plan.subgroups:
        if not sp.n_prompts:
            continue
        k = sp.n_prompts if n <= sample else min(sp.n_prompts, max(1, round(sample * sp.n_prompts / n)))
        t, i, m, got = meter.measure(itertools.islice(iter_prompts(task, config, plan, {sp.keyword}), k))
        scale = sp.n_prompts / got
        text, img, missing, measured = text + t * scale, img + i * scale, missing + m * scale, measured + got
    return _estimate(prompt_head(task, config), n, measured, text, img, missing, model)
