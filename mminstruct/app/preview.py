"""Before generating: the prompt plan of a workspace, any prompt rendered exactly as the model will
receive it, and a token and cost estimate for the whole run. No streamlit; the Prompts page calls
these.

* ``prompt_config(ws, task_path)`` → ``prompts.PromptConfig`` from the workspace's settings;
* ``plan_workspace(ws, task)`` → (``PromptPlan``, ``PromptFile``): the allocation per subgroup and
  every prompt, in memory (planning is pure and fast; nothing is written until ``save_prompts``);
* ``render_request(pf, index, input_root, …)`` → ``llm.requests.BuiltRequest``: the chat messages
  built by the engine's own ``build_messages`` (system prompt, the prompt list with images as the
  same downscaled JPEG data URLs, the generation prompt), so the preview is what is sent;
* ``estimate_run(pf, input_root, model, …)`` → ``RunEstimate``: input tokens from the same rules
  as the engine's estimate (text ≈ characters / 4; images by the model's own image-token rule,
  ``llm.requests.image_token_rule``, on the image as sent, i.e. after downscaling to
  ``max_image_side``), output tokens from a per-item
  allowance per mode (``OUTPUT_TOKENS_PER_ITEM``, an approximation: a JSON item of a chart QA
  answer with reasoning is ~150–250 tokens), and the cost from ``generate.manifest``'s price table.
  Above ``sample`` prompts, a deterministic sample is measured and scaled (``exact`` False).
"""

from __future__ import annotations

import asyncio
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ImageError
from ..cache import atomic_write_json
from ..formats import PromptFile, TaskFile, is_prompt_image, prompt_file_name, save_prompt_file
from ..generate.manifest import CostEstimate, estimate_cost
from ..generate.output import samples_per_item
from ..images import probe_image, resolve_image_path
from ..llm.requests import (REQUEST_OVERHEAD_TOKENS, BuiltRequest, EncodedImage, ImageEncoder,
                           build_messages, generation_prompt, image_token_rule, system_prompt,
                           text_tokens)
from ..modes import Mode, parse_mode
from ..prompts import PromptConfig, PromptPlan, plan_prompts, prepare_plan
from .workspace import Workspace

#: Output tokens per generated item, by mode (an allowance, not a measurement; see the docstring).
OUTPUT_TOKENS_PER_ITEM: dict[Mode, int] = {
    Mode.VQA: 200, Mode.VQA_NR: 70, Mode.TQA: 260, Mode.DESCRIPT: 220, Mode.GENERIC: 200,
    Mode.VQA_TASK_DESC: 200, Mode.DESCRIPT_TASK_DESC: 220,
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


def allocation_rows(plan: PromptPlan, config: PromptConfig) -> list[dict[str, Any]]:
    """One row per subgroup: references, ICL pool, candidates, prompts and expected samples."""
    per = config.min_gen_per_candidate * samples_per_item(config.mode)
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
    mode = pf.mode
    system = system_prompt(mode, pf.dataset_description)
    generate = generation_prompt(mode, pf.min_gen_per_candidate)
    encoder = ImageEncoder(input_root, max_side=max_image_side, quality=jpeg_quality,
                           allow_outside=allow_outside)
    return asyncio.run(build_messages(pf.prompts[index], mode, system, generate, encoder, model))


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


def estimate_run(pf: PromptFile, input_root: str | os.PathLike, model: str, *,
                 max_image_side: int = 1024, sample: int = 2000, seed: int = 0,
                 allow_outside: bool = False) -> RunEstimate:
    n = len(pf.prompts)
    if n == 0:
        return RunEstimate(0, 0, True, 0, 0, 0, estimate_cost(model, 0, 0))
    mode = pf.mode
    fixed = (text_tokens(system_prompt(mode, pf.dataset_description))
             + text_tokens(generation_prompt(mode, pf.min_gen_per_candidate))
             + REQUEST_OVERHEAD_TOKENS)
    idx = range(n) if n <= sample else sorted(random.Random(seed).sample(range(n), sample))
    sizes: dict[str, int | None] = {}
    root = Path(input_root)
    text = img = missing = 0
    measured = 0
    for i in idx:
        measured += 1
        for part in pf.prompts[i].prompt:
            if is_prompt_image(part):
                if part not in sizes:
                    try:
                        info = probe_image(resolve_image_path(root, part, allow_outside=allow_outside))
                        sizes[part] = image_tokens(info.width, info.height, max_image_side,
                                                   model)
                    except ImageError:
                        sizes[part] = None
                t = sizes[part]
                if t is None:
                    missing += 1
                else:
                    img += t
            else:
                text += text_tokens(part)
    scale = n / measured
    image_total = math.ceil(img * scale)
    input_total = math.ceil((text + img) * scale) + fixed * n
    output_total = n * pf.min_gen_per_candidate * OUTPUT_TOKENS_PER_ITEM[mode]
    return RunEstimate(n, measured, measured == n, input_total, output_total, image_total,
                       estimate_cost(model, input_total, output_total),
                       math.ceil(missing * scale), image_token_rule(model).describe())
