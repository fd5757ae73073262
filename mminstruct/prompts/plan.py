"""Step 2: plan the prompts — which candidate image is shown with which in-context examples.

MM-Gen's semantics, with its sampler's short batches fixed and a seed added:

* prompts per subgroup = ceil(total_gen × the subgroup's share of reference samples /
  min_gen_per_candidate);
* candidate images are drawn in a random order without replacement, reshuffled when used up;
* in-context (ICL) examples are drawn the same way from the subgroup's reference samples, and every
  prompt carries exactly ``num_icl_samples`` of them whenever the subgroup has that many (MM-Gen's
  sampler handed out a short batch at the end of each pass; ``CyclicSampler`` carries the pass over);
* image tokens in ICL questions are rewritten to "Refer to the first/second/… image." counting every
  image in the prompt; the prompt list is ``["Example 1", image, "Q: …\\n A: …", …, candidate]``;
* only vqa, vqa_nr, tqa and descript carry ICL examples, and tqa carries no candidate image.

Budgets per subgroup (``PromptConfig.budgets``, ``--budgets "bar chart=4000,pie chart=25%"``): a
subgroup may be given a number of prompts (``4000``) or a share of ``total_gen`` (``25%``); the
subgroups without a budget share what is left of ``total_gen`` by MM-Gen's rule (in proportion to
their reference samples). ``PromptConfig.only`` plans the prompts of some subgroups only (a run for
one subgroup): each keeps the allocation and the random stream it has in the full plan, so its
prompts are the same ones. The prompt file records both (``budgets``, ``only``) beside
``allocation``.

``CyclicSampler`` is the project's one sampler, driven by ``_draws`` for both consumers:
``plan_prompts`` (pure, the whole plan in memory, for small plans and tests) and ``write_prompts``
(streams each prompt's text to the file as it is planned — the command line's and the app's writer;
150,000 prompts in about a second and a few MB beyond the task file).
"""

from __future__ import annotations

import math
import os
import random
import re
import stat
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from mminstruct.cli import Setting, setting, settings_of
from mminstruct.errors import ConfigError, InputError, choices_message
from mminstruct.data.formats import (PromptEntry, PromptFile, TaskFile, check_file_prefix, json_text, load_task_file,
                      prompt_entry_text, prompt_file_name, prompts_dir, task_records, write_prompt_file)
from mminstruct.data.records import IMAGE_TOKEN_RE, Problem, Record
from mminstruct.data.images import ImageRoot
from mminstruct.data.modes import Mode, parse_mode


#: The least value of each count of step 2 (one rule for the command line, the app and the config).
def check_prompt_values(values: dict[str, Any]) -> None:
    """Check the counts in ``values`` (any subset; a seed may be None); ConfigError names the
    first bad one."""
    for name, value in values.items():
        low = PROMPT_MINIMUMS.get(name)
        if low is None or (name == "seed" and value is None):
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"{name} must be an integer ≥ {low}, got {value!r}")


@dataclass(frozen=True)
class Budget:
    """A subgroup's budget: a number of ``prompts``, or a ``share`` (0–1) of ``total_gen``."""

    prompts: int | None = None
    share: float | None = None

    def __post_init__(self) -> None:
        if (self.prompts is None) == (self.share is None):
            raise ConfigError("a budget is either a number of prompts or a share, not both or neither")
        if self.prompts is not None and (not isinstance(self.prompts, int)
                                         or isinstance(self.prompts, bool) or self.prompts < 0):
            raise ConfigError(f"a budget's number of prompts must be an integer ≥ 0, got {self.prompts!r}")
        if self.share is not None and (isinstance(self.share, bool)
                                       or not isinstance(self.share, (int, float))
                                       or not 0.0 <= float(self.share) <= 1.0):
            raise ConfigError(f"a budget's share must be between 0% and 100%, got {self.share!r}")

    def __str__(self) -> str:
        if self.prompts is not None:
            return str(self.prompts)
        return f"{float(self.share) * 100:g}%"  # type: ignore[arg-type]


_BUDGET_ITEM = re.compile(r"\s*(?P<kw>[^=]*?)\s*=\s*(?P<val>[^,=]*?)\s*(?:,|$)")


def parse_budget(value: Any, keyword: str = "") -> Budget:
    """``4000`` (prompts), ``"4000"``, ``"25%"`` (share of total_gen) or a ``Budget``."""
    if isinstance(value, Budget):
        return value
    where = f" for {keyword!r}" if keyword else ""
    if isinstance(value, int) and not isinstance(value, bool):
        return Budget(prompts=value)
    text = str(value).strip() if isinstance(value, str) else None
    if text and re.fullmatch(r"\d+", text):
        return Budget(prompts=int(text))
    if text and re.fullmatch(r"\d+(\.\d*)?%", text):
        return Budget(share=float(text[:-1]) / 100.0)
    raise ConfigError(f"budget {value!r}{where} is neither a number of prompts (e.g. 4000) nor a "
                      "share of total_gen (e.g. 25%)")


def parse_budgets(spec: str | Mapping[str, Any] | None) -> dict[str, Budget]:
    """``"bar chart=4000,pie chart=25%"`` or a mapping → keyword → ``Budget`` (keywords as given;
    whether they exist is checked against the task file by ``prepare_plan``)."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        items = list(spec.items())
    elif isinstance(spec, str):
        items, pos, text = [], 0, spec.strip()
        while pos < len(text):
            m = _BUDGET_ITEM.match(text, pos)
            if m is None or m.end() == pos or not m.group("kw"):
                raise ConfigError(f"budgets {spec!r}: expected KEYWORD=PROMPTS or KEYWORD=SHARE% "
                                  f"items separated by commas, e.g. 'bar chart=4000,pie chart=25%'")
            items.append((m.group("kw"), m.group("val")))
            pos = m.end()
    else:
        raise ConfigError(f"budgets must be a 'keyword=value,…' string or a mapping, got {spec!r}")
    out: dict[str, Budget] = {}
    for kw, value in items:
        if not isinstance(kw, str) or not " ".join(kw.split()):
            raise ConfigError(f"budgets: keyword {kw!r} is empty or not a string")
        kw = " ".join(kw.split())
        if kw in out:
            raise ConfigError(f"budgets: keyword {kw!r} is given twice")
        out[kw] = parse_budget(value, kw)
    shares = sum(b.share for b in out.values() if b.share is not None)
    if shares > 1.0 + 1e-9:
        raise ConfigError(f"budgets: the shares add up to {shares * 100:g}%, more than 100%")
    return out


def check_budget_keywords(budgets: Mapping[str, Any], keywords: Sequence[str]) -> None:
    """Every keyword a budget names is one of ``keywords`` (the task file's subgroups), else a
    ``ConfigError`` naming it and listing the subgroups."""
    for kw in budgets:
        if kw not in keywords:
            raise ConfigError("budgets: " + choices_message("keyword", kw, list(keywords)))


def format_budgets(budgets: Mapping[str, Budget]) -> str:
    """The ``--budgets`` form of a budget table (``parse_budgets`` reads it back)."""
    return ",".join(f"{kw}={b}" for kw, b in budgets.items())


@dataclass(frozen=True)
class PromptConfig:
    """Everything step 2 needs. ``task_desc`` resolves under ``input_folder`` as in MM-Gen."""

    task_desc: str
    file_prefix: str = setting(help="prefix of the prompt file's name", flag=None,
                               ui_default="prompts")
    #: a required flag; the app starts from ``ui_default``
    total_gen: int = setting(min=1, ui_max=10_000_000, ui_default=100,
                             help="total samples to generate")
    input_folder: str = ""
    output_folder: str = ""
    min_gen_per_candidate: int = setting(1, min=1, ui_max=100, help="items the model writes "
                                         "per prompt (per candidate image; default %(default)s)")
    num_icl_samples: int = setting(1, min=0, ui_max=16,
                                   help="in-context examples per prompt (default %(default)s)")
    mode: Mode = Mode.VQA_NR
    #: None: a random plan (the command line's default); the app starts from a fixed seed
    seed: int | None = setting(None, min=0, ui_max=2**31 - 1, ui_default=0,
                               help="makes the prompt file reproducible")
    check_images: bool = True
    allow_outside_paths: bool = False
    #: keyword → Budget (or "4000" / "25%"), or the "kw=4000,kw2=25%" string; see ``allocate``
    budgets: Mapping[str, Budget] | str | None = None
    #: plan only these subgroups (each with the prompts it gets in the full plan); () = all
    only: Sequence[str] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", parse_mode(self.mode))
        object.__setattr__(self, "budgets", parse_budgets(self.budgets))
        if isinstance(self.only, str):
            raise ConfigError(f"only must be a list of keywords, got the string {self.only!r}")
        object.__setattr__(self, "only", tuple(" ".join(str(k).split()) for k in self.only))
        check_prompt_values({n: getattr(self, n) for n in PROMPT_MINIMUMS})
        check_file_prefix(self.file_prefix, "file_prefix")
        if not self.task_desc:
            raise ConfigError("task_desc (the task file) is required")

    @property
    def task_desc_path(self) -> str:
        """Under ``input_folder`` as in MM-Gen; a path that only exists as given is taken as is."""
        under = os.path.join(self.input_folder, self.task_desc)
        if not os.path.exists(under) and os.path.exists(self.task_desc):
            return self.task_desc
        return under


#: Each step-2 setting's one default, read from ``PromptConfig``: what the command line shows and
#: the app's settings start from.
PROMPT_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(PromptConfig)
                                   if f.default is not MISSING}

#: The declared step-2 settings (``mminstruct.cli.Setting``: help, minimum, the app's field range
#: and starting value): the command line's flags, the Prompts page's fields and the app's
#: ``PromptSettings`` read them.
PROMPT_SETTINGS: dict[str, Setting] = settings_of(PromptConfig)

#: The least value of each count (``check_prompt_values``), from the declarations.
PROMPT_MINIMUMS: dict[str, int] = {n: int(s.min) for n, s in PROMPT_SETTINGS.items()
                                   if s.min is not None}


def prompt_widget(name: str) -> dict[str, Any]:
    """The Prompts page's number field for ``name``: ``min_value``, ``max_value``."""
    return PROMPT_SETTINGS[name].widget()


class CyclicSampler:
    """Draws items in random order without replacement; a new shuffled pass starts when one runs
    out. ``draw(n)`` always returns ``min(n, len(items))`` distinct items: a draw that straddles
    two passes takes the rest of the old pass and fills from the new one, deferring any item it
    already holds to the front of the new pass (so no item is dropped or shown twice in a row)."""

    def __init__(self, items: Sequence[Any], rng: random.Random):
        if not items:
            raise ValueError("CyclicSampler needs at least one item")
        self._items = list(items)
        self._rng = rng
        self._queue: deque[Any] = deque()

    def _refill(self) -> None:
        batch = self._items[:]
        self._rng.shuffle(batch)
        self._queue.extend(batch)

    def draw(self, n: int) -> list[Any]:
        queue = self._queue
        if len(queue) >= n:  # the common case: the current pass has enough left
            pop = queue.popleft
            return [pop() for _ in range(n)]
        n = min(n, len(self._items))
        if len(queue) >= n:
            pop = queue.popleft
            return [pop() for _ in range(n)]
        out: list[Any] = []
        deferred: list[Any] = []
        while len(out) < n:
            if not queue:
                self._refill()
            item = queue.popleft()
            if item in out:
                deferred.append(item)
            else:
                out.append(item)
        queue.extendleft(reversed(deferred))
        return out

    def draw_one(self) -> Any:
        if not self._queue:
            self._refill()
        return self._queue.popleft()


def allocate(reference_counts: Sequence[int], total_gen: int, min_gen_per_candidate: int,
             budgets: Sequence[Budget | None] | None = None) -> list[int]:
    """Prompts per subgroup: ceil(total_gen × share / min_gen_per_candidate) (MM-Gen's rule).

    With ``budgets`` (one entry per subgroup, None = no budget): a number of prompts is taken as
    is; a share gives ceil(total_gen × share / min_gen_per_candidate); the subgroups without a
    budget split what is left of total_gen (never below 0) by MM-Gen's rule among themselves."""
    if budgets is None or all(b is None for b in budgets):
        total = sum(reference_counts)
        if total == 0:
            return [0 for _ in reference_counts]
        return [math.ceil(total_gen * c / total / min_gen_per_candidate) for c in reference_counts]
    if len(budgets) != len(reference_counts):
        raise ConfigError(f"{len(budgets)} budgets for {len(reference_counts)} subgroups")
    out = [0] * len(reference_counts)
    used = 0.0  # samples of total_gen the budgeted subgroups take
    for i, b in enumerate(budgets):
        if b is None:
            continue
        if b.prompts is not None:
            out[i] = b.prompts
            used += b.prompts * min_gen_per_candidate
        else:
            out[i] = math.ceil(total_gen * float(b.share) / min_gen_per_candidate)  # type: ignore[arg-type]
            used += total_gen * float(b.share)  # type: ignore[arg-type]
    rest = [i for i, b in enumerate(budgets) if b is None]
    left = max(0, math.floor(total_gen - used + 1e-9))
    if rest and left:
        shares = allocate([reference_counts[i] for i in rest], left, min_gen_per_candidate)
        for i, n in zip(rest, shares):
            out[i] = n
    return out


def reuse_note(n_prompts: int, n_candidates: int) -> str:
    """How often each candidate image is shown when a subgroup's prompts outnumber them ("" when
    they do not): the cyclic sampler shows each ⌊n/c⌋ or ⌈n/c⌉ times."""
    if n_candidates <= 0 or n_prompts <= n_candidates:
        return ""
    low, high = divmod(n_prompts, n_candidates)
    times = f"{low}×" if high == 0 else f"{low}–{low + 1}×"
    return (f"{n_prompts:,} prompts for {n_candidates:,} candidate images: each image is used "
            f"{times} (about {n_prompts / n_candidates:.1f}×)")


_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth",
             "tenth")


def ordinal(n: int) -> str:
    """1 → 'first', …, 10 → 'tenth', 11 → '11th', 22 → '22nd'."""
    if 1 <= n <= len(_ORDINALS):
        return _ORDINALS[n - 1]
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def rewrite_image_tokens(text: str, first_ordinal: int) -> str:
    """Each image token becomes 'Refer to the <k-th> image.', counting from ``first_ordinal``."""
    counter = iter(range(first_ordinal, first_ordinal + 1000))
    return IMAGE_TOKEN_RE.sub(lambda _: f"Refer to the {ordinal(next(counter))} image.", text).strip()


def icl_text(record: Record, first_ordinal: int) -> str:
    """'Q: …\\n A: …' for each question/answer pair of the record (multi-turn kept)."""
    parts = []
    for n, (q, a) in enumerate(record.qa_pairs()):
        q = rewrite_image_tokens(q, first_ordinal) if n == 0 else IMAGE_TOKEN_RE.sub("", q).strip()
        parts.append(f"Q: {q}\n A: {a.strip()}")
    return "\n".join(parts)


def _join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}" if folder else name


@dataclass
class SubgroupPlan:
    keyword: str
    n_reference: int
    n_prompts: int
    icl_pool: list[int]
    candidates: list[str]
    budget: Budget | None = None  # None: MM-Gen's proportional rule
    index: int = -1  # position in the task file (the subgroup's random stream)

    @property
    def reuse(self) -> float:
        """Prompts per candidate image (0 without candidates)."""
        return self.n_prompts / len(self.candidates) if self.candidates else 0.0

    def reuse_note(self) -> str:
        return reuse_note(self.n_prompts, len(self.candidates))


@dataclass
class PromptPlan:
    """What ``plan_prompts`` decided and why: allocation per subgroup and what was left out."""

    subgroups: list[SubgroupPlan]
    records: dict[int, Record]  # the reference samples usable as ICL examples, by index
    excluded_samples: list[Problem] = field(default_factory=list)
    missing_candidates: list[str] = field(default_factory=list)

    def allocation(self) -> dict[str, int]:
        return {s.keyword: s.n_prompts for s in self.subgroups}

    def budgets(self) -> dict[str, str]:
        """keyword → its budget as given ("4000", "25%"), for the budgeted subgroups only."""
        return {s.keyword: str(s.budget) for s in self.subgroups if s.budget is not None}


def prepare_plan(task: TaskFile, config: PromptConfig,
                 file_checks: dict[str, bool | InputError] | None = None,
                 parsed: tuple[Mapping[int, Record], Sequence[Problem]] | None = None
                 ) -> PromptPlan:
    """Validate the task file against the config and allocate prompts per subgroup (no sampling).
    ``file_checks``: image path → found (or the refusal), kept by the caller across calls with
    the same task file, input folder and ``allow_outside_paths`` (the app: a settings edit does
    not stat 200,000 images again). ``parsed``: ``task_records(task)`` when the caller keeps it
    (the app: a settings edit does not parse 150,000 samples again); it is not changed."""
    records, problems = parsed if parsed is not None else task_records(task)
    if parsed is not None:
        records = dict(records)  # the caller's kept parse is left as it is
    root = Path(config.input_folder or ".")
    where = ImageRoot(root, allow_outside=config.allow_outside_paths)  # root resolved once
    mode = config.mode
    excluded = list(problems)
    image_excluded: set[int] = set()  # samples left out by the image check (--no_check_images)
    checks = file_checks if file_checks is not None else {}

    def is_file(rel: str) -> bool:
        hit = checks.get(rel)
        if hit is None:
            try:  # one lstat for a plain path under the root; a realpath for anything else
                st = where.resolve(rel)[1]
                hit = st is not None and stat.S_ISREG(st.st_mode)
            except InputError as e:
                hit = e
            checks[rel] = hit
        if isinstance(hit, InputError):
            raise hit
        return hit

    if config.check_images and mode.carries_icl:
        for i, rec in list(records.items()):
            for img in rec.images:
                try:
                    ok = is_file(_join(task.image_folder, img))
                except InputError as e:
                    excluded.append(Problem(i, rec.id, str(e)))
                    image_excluded.add(i)
                    del records[i]
                    break
                if not ok:
                    image_excluded.add(i)
                    excluded.append(Problem(i, rec.id, f"ICL image {_join(task.image_folder, img)!r} "
                                                       f"not found under {root}"))
                    del records[i]
                    break
    missing: list[str] = []
    plans: list[SubgroupPlan] = []
    names = [sg.keyword for sg in task.subgroups]
    budgets: dict[str, Budget] = dict(config.budgets)  # type: ignore[arg-type]
    check_budget_keywords(budgets, names)
    for kw in config.only:
        if kw not in names:
            raise ConfigError(choices_message("keyword", kw, names))
    per_sg = [budgets.get(kw) for kw in names]
    counts = allocate([len(sg.reference_sample_idx) for sg in task.subgroups], config.total_gen,
                      config.min_gen_per_candidate, per_sg)
    for sg_index, (sg, n_prompts) in enumerate(zip(task.subgroups, counts)):
        if config.only and sg.keyword not in config.only:
            continue
        pool = [i for i in sg.reference_sample_idx if i in records]
        cands = list(sg.candidate_image_paths)
        if config.check_images and mode.carries_candidate:
            kept = []
            for c in cands:
                try:
                    ok = is_file(c)
                except InputError:
                    ok = False
                (kept if ok else missing).append(c)
            cands = kept
        if n_prompts and mode.carries_candidate and not cands and sg.candidate_image_paths:
            n = len(sg.candidate_image_paths)
            raise InputError(
                f"subgroup {sg.keyword!r} needs {n_prompts} prompts but none of its {n:,} "
                f"candidate images is on disk: looked under {root.resolve()} (e.g. "
                f"{sg.candidate_image_paths[0]!r}); set --input_folder to the folder the task "
                "file's paths are relative to, or pass --no_check_images to write the prompt "
                "file without checking")
        if n_prompts and mode.carries_candidate and not cands:
            raise InputError(
                f"subgroup {sg.keyword!r} needs {n_prompts} prompts but has no usable candidate "
                "images; add a candidate pool in step 1 (--candidate_folder), drop the keyword, "
                f"or give it a budget of 0 (--budgets '{sg.keyword}=0')")
        if n_prompts and mode.carries_icl and config.num_icl_samples and not pool:
            missing_refs = sum(1 for p in excluded if p.index in set(sg.reference_sample_idx)
                               and p.index in image_excluded)
            hint = (f" ({missing_refs:,} of their images are not on disk under {root.resolve()}; "
                    "set --input_folder to the folder the task file's paths are relative to, or "
                    "pass --no_check_images)" if missing_refs else "")
            raise InputError(f"subgroup {sg.keyword!r} needs {n_prompts} prompts but none of its "
                             f"reference samples is usable as an in-context example{hint}")
        plans.append(SubgroupPlan(sg.keyword, len(sg.reference_sample_idx), n_prompts, pool, cands,
                                  per_sg[sg_index], sg_index))
    return PromptPlan(plans, records, excluded, missing)


def _draws(config: PromptConfig, plan: PromptPlan, subgroups: Collection[str] | None = None
           ) -> Iterator[tuple[SubgroupPlan, list[int], list[tuple[int, int, int]], str | None]]:
    """Each prompt's random choices, in file order: (subgroup, ICL sample indices, one
    (sample, example number, first image ordinal) key per example, candidate image or None).
    The one sampler behind ``plan_prompts`` (in memory), ``write_prompts`` (streamed) and
    ``iter_prompts``. ``subgroups``: those subgroups' prompts only (each stream is its own, so they
    are the same prompts as in the whole plan)."""
    records = plan.records
    mode = config.mode
    base_seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**63)
    n_images = {i: len(r.images) for i, r in records.items()}
    use_icl = mode.carries_icl and config.num_icl_samples > 0
    for position, sp in enumerate(plan.subgroups):
        if sp.n_prompts == 0 or (subgroups is not None and sp.keyword not in subgroups):
            continue
        sg_index = sp.index if sp.index >= 0 else position  # the stream of the full plan
        rng = random.Random(f"{base_seed}:{sg_index}:{sp.keyword}")
        icl_sampler = CyclicSampler(sp.icl_pool, rng) if use_icl else None
        cand_sampler = CyclicSampler(sp.candidates, rng) if mode.carries_candidate else None
        n_icl = config.num_icl_samples
        draw_icl = icl_sampler.draw if icl_sampler else None
        draw_cand = cand_sampler.draw_one if cand_sampler else None
        for _ in range(sp.n_prompts):
            icl: list[int] = draw_icl(n_icl) if draw_icl else []
            keys = []
            first = 1
            k = 0
            for idx in icl:
                k += 1
                keys.append((idx, k, first))
                first += n_images[idx]
            yield sp, icl, keys, draw_cand() if draw_cand else None


def _example_parts(task: TaskFile, plan: PromptPlan) -> Callable[[tuple[int, int, int]], list[str]]:
    """An example's prompt parts by (sample, example number, first image ordinal): they depend on
    nothing else, so each is built once and reused by every prompt that shows it."""
    cache: dict[tuple[int, int, int], list[str]] = {}

    def parts(key: tuple[int, int, int]) -> list[str]:
        hit = cache.get(key)
        if hit is None:
            idx, k, first = key
            rec = plan.records[idx]
            hit = cache[key] = [f"Example {k}", *(_join(task.image_folder, img) for img in rec.images),
                                icl_text(rec, first)]
        return hit
    return parts


def _prompt_file_head(task: TaskFile, config: PromptConfig, plan: PromptPlan) -> PromptFile:
    """The prompt file's header (no prompts yet): MM-Gen's keys, then seed, num_prompts,
    allocation, and budgets / only when given."""
    n = sum(sp.n_prompts for sp in plan.subgroups)  # every subgroup plans exactly n_prompts
    extra: dict[str, Any] = {"seed": config.seed, "num_prompts": n,
                             "allocation": plan.allocation()}
    if plan.budgets():
        extra["budgets"] = plan.budgets()
    if config.only:
        extra["only"] = list(config.only)
    return PromptFile(config.task_desc_path, task.dataset_description, config.num_icl_samples,
                      config.mode, config.min_gen_per_candidate, config.total_gen, [], extra)


def plan_prompts(task: TaskFile, config: PromptConfig, plan: PromptPlan | None = None,
                 subgroups: Collection[str] | None = None) -> PromptFile:
    """Build every prompt (or only ``subgroups``' prompts, under the whole plan's header), in memory. Deterministic for ``config.seed``; each subgroup has its own
    random stream, so changing one subgroup leaves the others' prompts unchanged. To write a large
    plan, ``write_prompts`` streams the same prompts to the file without holding them."""
    plan = plan or prepare_plan(task, config)
    pf = _prompt_file_head(task, config, plan)
    pf.prompts.extend(iter_prompts(task, config, plan, subgroups))
    return pf


def iter_prompts(task: TaskFile, config: PromptConfig, plan: PromptPlan,
                 subgroups: Collection[str] | None = None) -> Iterator[PromptEntry]:
    """The prompts of ``plan_prompts``, one at a time (or ``subgroups``' only), none held: to look
    at some prompts of a large plan without building it. With ``config.seed`` None each call
    draws its own seed."""
    parts = _example_parts(task, plan)
    for sp, icl, keys, cand in _draws(config, plan, subgroups):
        prompt: list[str] = []
        for key in keys:
            prompt += parts(key)
        if cand is not None:
            prompt.append(cand)
        yield PromptEntry(sp.keyword, prompt, icl)


def iter_prompt_texts(task: TaskFile, config: PromptConfig, plan: PromptPlan) -> Iterator[str]:
    """Each prompt entry as the prompt file's text, in order, as it is planned: every example's
    and candidate's encoded text is made once and joined, not re-encoded per prompt."""
    parts = _example_parts(task, plan)
    example_text: dict[tuple[int, int, int], str] = {}
    cand_text: dict[str, str] = {}
    kw_text: dict[str, str] = {}
    for sp, icl, keys, cand in _draws(config, plan):
        pieces = []
        for key in keys:
            t = example_text.get(key)
            if t is None:
                t = example_text[key] = ", ".join(json_text(p) for p in parts(key))
            pieces.append(t)
        if cand is not None:
            t = cand_text.get(cand)
            if t is None:
                t = cand_text[cand] = json_text(cand)
            pieces.append(t)
        kw = kw_text.get(sp.keyword)
        if kw is None:
            kw = kw_text[sp.keyword] = json_text(sp.keyword)
        yield prompt_entry_text(kw, pieces, icl)


def write_prompts(task: TaskFile, config: PromptConfig, plan: PromptPlan,
                  output_folder: str | os.PathLike, prefix: str, now: datetime | None = None,
                  path: str | os.PathLike | None = None) -> tuple[Path, int]:
    """Plan and stream the prompts to ``OUTPUT/generated_prompts/{prefix}_prompts_{stamp}.json``
    (or ``path``) atomically, as they are planned: the bytes of ``save_prompt_file(plan_prompts(…))``
    without the list in memory. The one writer of the command line and the app. Returns (path,
    number of prompts)."""
    target = Path(path) if path is not None else prompts_dir(output_folder) / prompt_file_name(prefix, now)
    n = write_prompt_file(target, _prompt_file_head(task, config, plan),
                          iter_prompt_texts(task, config, plan))
    return target, n


@dataclass
class PromptResult:
    path: Path
    n_prompts: int
    plan: PromptPlan


def generate_prompt_file(config: PromptConfig) -> PromptResult:
    """Load the task file, plan, and stream ``OUTPUT/generated_prompts/{prefix}_prompts_{ts}.json``
    (the command line's step 2; the app's Save calls the same ``write_prompts``)."""
    task = load_task_file(config.task_desc_path)
    plan = prepare_plan(task, config)
    path, n = write_prompts(task, config, plan, config.output_folder or ".", config.file_prefix)
    return PromptResult(path, n, plan)
