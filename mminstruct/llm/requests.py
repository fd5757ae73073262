"""What is sent: the system prompt per mode, the generation prompt, format-fix prompts, the chat
messages built from a prompt list, and the JSON schema for structured outputs.

A request is shaped as MM-Gen shapes it — a system prompt carrying the dataset description, then
one user message whose content is the prompt list (text parts as text, image paths as base64 JPEG
data URLs, in order) followed by the mode's generation prompt asking for exactly N items, where
N = the prompt file's ``min_gen_per_candidate``. The prompt texts are this project's own.

Images resolve under the input folder only (``images.resolve_image_path``); each is decoded once
(EXIF-rotated, RGB), downscaled to ``max_side`` and JPEG-encoded in a worker thread, then kept in a
byte-bounded LRU cache, because in-context images repeat across thousands of prompts. A missing
or unreadable image raises ``ImageFileError`` — the prompt is recorded as failed, nothing is sent.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import re
from collections import OrderedDict
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mminstruct.errors import ConfigError, ImageError, UnsafePathError, choices_message
from mminstruct.data.formats import PromptEntry, is_prompt_image
from mminstruct.data.images import data_url, encode_jpeg, resolve_image_path
from mminstruct.data.modes import Mode
from mminstruct.llm.errors import BadPromptError, ImageFileError

# ----------------------------------------------------------------------------------------------
# Prompt texts (written for this project)

_KEY_MEANING = {
    "Q": "the question",
    "R": "the step-by-step reasoning that leads to the answer",
    "A": "the answer",
    "I": "a short description of the imagined image",
}

_REPLY_FORMAT = (
    "Reply with a JSON list and nothing else. Each object has exactly these keys: {keys}.\n"
    "{meanings}\n"
    "Shape: [{template}, …]"
)

_SYSTEM: dict[Mode, str] = {
    Mode.VQA: (
        "You write training data for a vision-language model that specialises in {desc}. "
        "You are shown worked examples from a reference dataset — each an image with its "
        "question and answer — and then one new image. Write new question–answer pairs about the "
        "new image that exercise the same skill, in the same style as the examples.\n"
        "For every pair: the question must be answerable from the new image alone; when the "
        "examples are multiple choice, put lettered options inside the question, one per line. "
        "Reason step by step, naming the visual evidence behind each step, then give the answer, "
        "consistent with the reasoning and as short as the examples' answers. Make the pairs "
        "differ from one another and cover different parts of the image."
    ),
    Mode.VQA_NR: (
        "You write training data for a vision-language model that specialises in {desc}. "
        "You are shown worked examples from a reference dataset — each an image with its "
        "question and answer — and then one new image. Write new, varied question–answer pairs "
        "about the new image that exercise the same skill, in the same style as the examples.\n"
        "Each question must be answerable from the new image alone; when the examples are "
        "multiple choice, put lettered options inside the question, one per line. Each answer "
        "must be correct for the new image and as short as the examples' answers."
    ),
    Mode.TQA: (
        "You write training data for a vision-language model that specialises in {desc}. "
        "You are shown worked examples from a reference dataset, each an image with its question "
        "and answer. You will not be given a new image: imagine one that would belong in this "
        "dataset, describe it briefly but precisely, and write a multiple-choice question about "
        "it in the style of the examples, with lettered options one per line. Explain step by "
        "step how the description determines the answer, and give the answer as the option's "
        "letter followed by its text, e.g. \"B. 42\"."
    ),
    Mode.DESCRIPT: (
        "You write training data for a vision-language model that specialises in {desc}. "
        "You are shown worked examples from a reference dataset — each an image with its "
        "question and answer — and then one new image. Write detailed descriptions of the new "
        "image as an expert in {desc} would, using the kind of knowledge the examples draw on. "
        "Each description is several sentences long, accurate to the image, and different from "
        "the others."
    ),
    Mode.GENERIC: (
        "You write detailed, accurate descriptions of images for training a vision-language "
        "model. Describe what the last image shows: its content, layout, text, quantities and "
        "relations, without guessing beyond what is visible. Each description is several "
        "sentences long and different from the others."
    ),
    Mode.VQA_TASK_DESC: (
        "You write training data for a vision-language model that specialises in {desc}. "
        "You are shown one image. Write question–answer pairs about it that exercise this skill. "
        "Each question must be answerable from the image alone; for multiple choice, put "
        "lettered options inside the question, one per line. Reason step by step, naming the "
        "visual evidence behind each step, then give a short answer consistent with the "
        "reasoning. Make the pairs differ from one another."
    ),
    Mode.DESCRIPT_TASK_DESC: (
        "You write training data for a vision-language model that specialises in {desc}. "
        "You are shown one image. Write detailed descriptions of it as an expert in {desc} would. "
        "Each description is several sentences long, accurate to the image, and different from "
        "the others."
    ),
    Mode.CONVERSATION: (
        "You write training data for a vision-language model that specialises in {desc}. "
        "You are shown worked examples from a reference dataset — each an image with its "
        "question and answer — and then one new image. Write one multi-turn conversation between "
        "a user and an assistant about the new image, in the style of the examples. Each turn is "
        "a user question and the assistant's answer. The first question is about the image "
        "itself; every later question builds on the previous answers (a follow-up, a detail, a "
        "comparison, a why) and never repeats an earlier question. Every answer must be correct "
        "for the new image and consistent with the earlier answers."
    ),
}

_GENERATE: dict[Mode, str] = {
    Mode.VQA: "Now write exactly {n} question–answer pairs, with reasoning, about the last image "
              "above (the new image).",
    Mode.VQA_NR: "Now write exactly {n} varied question–answer pairs about the last image above "
                 "(the new image).",
    Mode.TQA: "Now imagine new images for this skill and write exactly {n} multiple-choice "
              "question–answer pairs, each with its imagined image's description.",
    Mode.DESCRIPT: "Now write exactly {n} detailed descriptions of the last image above (the new "
                   "image).",
    Mode.GENERIC: "Now write exactly {n} detailed descriptions of the image above.",
    Mode.VQA_TASK_DESC: "Now write exactly {n} question–answer pairs, with reasoning, about the "
                        "image above.",
    Mode.DESCRIPT_TASK_DESC: "Now write exactly {n} detailed descriptions of the image above.",
    Mode.CONVERSATION: "Now write one conversation of exactly {n} turns about the last image above "
                       "(the new image), in order: each object is one turn, its question building "
                       "on the answers before it.",
}

_FIX_SYSTEM = (
    "You repair the output of another model. You are given text that was meant to be a JSON "
    "list of objects with exactly the keys {keys} but is malformed, incomplete, wrapped in other "
    "text or uses other key names. Return the list as valid JSON and nothing else. Keep the "
    "content word for word; fix only the syntax and structure (brackets, commas, quotes, "
    "escapes), rename equivalent keys to the required ones, and leave out text that belongs to "
    "no item. Every value is a string.\n" + _REPLY_FORMAT
)

_FIX_USER = "Repair this into a JSON list of objects with the keys {keys}:\n\n{raw}"

#: Longest raw answer sent back for repair (a runaway answer would cost more than it saves).
MAX_FIX_INPUT_CHARS = 24_000


def _reply_format(mode: Mode) -> str:
    keys = mode.keys
    meanings = "\n".join(
        f"{k}: {'the description' if mode.is_description and k == 'A' else _KEY_MEANING[k]}"
        for k in keys)
    template = "{" + ", ".join(f'"{k}": "…"' for k in keys) + "}"
    return _REPLY_FORMAT.format(keys=", ".join(keys), meanings=meanings, template=template)


def system_prompt(mode: Mode, dataset_description: str) -> str:
    desc = dataset_description.strip().rstrip(".") or "this dataset's domain"
    return _SYSTEM[mode].format(desc=desc) + "\n\n" + _reply_format(mode)


def generation_prompt(mode: Mode, n: int) -> str:
    return _GENERATE[mode].format(n=n) + f" Reply with a JSON list of exactly {n} objects."


def fix_messages(mode: Mode, raw: str) -> list[dict[str, Any]]:
    keys = ", ".join(mode.keys)
    meanings = "\n".join(f"{k}: {_KEY_MEANING[k]}" for k in mode.keys)
    template = "{" + ", ".join(f'"{k}": "…"' for k in mode.keys) + "}"
    system = _FIX_SYSTEM.format(keys=keys, meanings=meanings, template=template)
    return [{"role": "system", "content": system},
            {"role": "user", "content": _FIX_USER.format(keys=keys, raw=raw[:MAX_FIX_INPUT_CHARS])}]


def response_schema(mode: Mode) -> dict[str, Any]:
    """``response_format`` for ``--structured_outputs``: strict schemas need an object at the top,
    so the list sits under ``items`` (the parser unwraps it)."""
    item = {"type": "object", "properties": {k: {"type": "string"} for k in mode.keys},
            "required": list(mode.keys), "additionalProperties": False}
    schema = {"type": "object", "properties": {"items": {"type": "array", "items": item}},
              "required": ["items"], "additionalProperties": False}
    return {"type": "json_schema",
            "json_schema": {"name": f"mminstruct_{mode.value}", "strict": True, "schema": schema}}


# ----------------------------------------------------------------------------------------------
# Images: what an image costs in input tokens, per model
#
# OpenAI bills an image by a rule that depends on the model (``image_tokens.json`` beside this
# module, with its date and source): the *tile* rule (gpt-4o, gpt-4.1, gpt-4.5, o1, o3, gpt-5:
# fit in 2048², shortest side to 768, then ``base + per_tile × 512-px tiles``; gpt-4o-mini has the
# same shape with ~33× the tokens) or the *patch* rule (gpt-4.1-mini/nano, o4-mini, gpt-5-mini/nano:
# 32-px patches, at most 1536, times a multiplier). A model matches the longest entry its name
# starts with (``match_model``); any other model (a local server's) is counted by the default
# entry's rule (gpt-4o's).

IMAGE_TOKENS_FILE = Path(__file__).with_name("image_tokens.json")


def match_model(model: str, names: Any) -> str | None:
    """The longest of ``names`` that ``model`` is or starts with (followed by '-' or '_'):
    ``gpt-4o-2024-08-06`` → ``gpt-4o``, ``gpt-4o-mini`` → ``gpt-4o-mini``. None when none."""
    name = str(model or "").strip().lower()
    best = None
    for prefix in names:
        if name == prefix or name.startswith(prefix + "-") or name.startswith(prefix + "_"):
            if best is None or len(prefix) > len(best):
                best = prefix
    return best


@dataclass(frozen=True)
class ImageTokenRule:
    """One model's image-token rule (an entry of ``image_tokens.json``)."""

    model: str  # the table's entry this rule comes from
    kind: str  # "tile" or "patch"
    base: int = 0  # tile: tokens per image
    per_tile: int = 0  # tile: tokens per 512-px tile
    multiplier: float = 1.0  # patch: tokens per 32-px patch
    fit: int = 2048
    short_side: int = 768
    tile: int = 512
    patch: int = 32
    max_patches: int = 1536
    assumed: bool = False  # the model is not in the table: the default entry's rule

    def tokens(self, width: int, height: int) -> int:
        """Input tokens of a ``width`` × ``height`` image (as sent, high detail)."""
        w, h = float(max(1, width)), float(max(1, height))
        if self.kind == "patch":
            p = self.patch
            if math.ceil(w / p) * math.ceil(h / p) > self.max_patches:
                r = math.sqrt(p * p * self.max_patches / (w * h))
                r *= min(math.floor(w * r / p) / (w * r / p), math.floor(h * r / p) / (h * r / p))
                w, h = w * r, h * r
            n = math.ceil(w / p - 1e-9) * math.ceil(h / p - 1e-9)
            return math.ceil(min(n, self.max_patches) * self.multiplier)
        scale = min(1.0, self.fit / max(w, h))
        w, h = w * scale, h * scale
        scale = min(1.0, self.short_side / min(w, h))
        w, h = w * scale, h * scale
        return self.base + self.per_tile * math.ceil(w / self.tile - 1e-9) \
            * math.ceil(h / self.tile - 1e-9)

    def describe(self) -> str:
        """The rule in words, for the estimate's caption."""
        who = f"{self.model}'s rule" + (" (assumed: model not in the table)" if self.assumed else "")
        if self.kind == "patch":
            return (f"{who}: {self.patch}px patches, at most {self.max_patches}, "
                    f"× {self.multiplier:g}")
        return f"{who}: {self.base} + {self.per_tile} per {self.tile}px tile"


@dataclass(frozen=True)
class ImageTokenTable:
    as_of: str
    source: str
    default: str
    rules: dict[str, ImageTokenRule]


@functools.lru_cache(maxsize=1)
def image_token_table() -> ImageTokenTable:
    """``image_tokens.json``, read once."""
    raw = json.loads(IMAGE_TOKENS_FILE.read_text(encoding="utf-8"))
    shapes = {"tile": raw.get("tile", {}), "patch": raw.get("patch", {})}
    rules = {}
    for name, entry in raw["models"].items():
        kind = entry["rule"]
        if kind not in shapes:
            raise ConfigError(f"{IMAGE_TOKENS_FILE.name}: {name}: "
                              + choices_message("rule", kind, list(shapes)))
        params = {k: v for k, v in entry.items() if k != "rule"}
        rules[name.lower()] = ImageTokenRule(name.lower(), kind, **shapes[kind], **params)
    if raw["default"] not in rules:
        raise ConfigError(f"{IMAGE_TOKENS_FILE.name}: default {raw['default']!r} is no entry")
    return ImageTokenTable(str(raw["as_of"]), str(raw["source"]), raw["default"], rules)


def image_token_rule(model: str | None) -> ImageTokenRule:
    """The image-token rule of ``model`` (the default entry's, marked ``assumed``, for a model
    the table does not name)."""
    table = image_token_table()
    hit = match_model(model or "", table.rules)
    if hit is not None:
        return table.rules[hit]
    return replace(table.rules[table.default], assumed=True)


@dataclass(frozen=True)
class EncodedImage:
    url: str  # data URL
    width: int
    height: int

    @property
    def nbytes(self) -> int:
        return len(self.url)

    def token_estimate(self, model: str | None = None) -> int:
        """The image's input tokens by ``model``'s rule (``image_token_rule``)."""
        return image_token_rule(model).tokens(self.width, self.height)


class ImageEncoder:
    """Path (relative to ``root``) → ``EncodedImage``, encoded once in ``executor`` and kept in an
    LRU bounded by ``cache_bytes``; concurrent requests for the same image share one encoding."""

    def __init__(self, root: str | os.PathLike, *, max_side: int | None = 1024,
                 quality: int = 85, cache_bytes: int = 256 << 20,
                 executor: Executor | None = None, allow_outside: bool = False):
        self.root = Path(root).resolve()
        self.max_side = max_side
        self.quality = quality
        self.cache_bytes = cache_bytes
        self.executor = executor
        self.allow_outside = allow_outside
        self._cache: OrderedDict[tuple, EncodedImage] = OrderedDict()
        self._bytes = 0
        self._pending: dict[tuple, asyncio.Future] = {}
        self._keys: dict[str, tuple[Path, tuple]] = {}
        self.hits = 0
        self.misses = 0

    def resolve(self, rel: str) -> Path:
        try:
            return resolve_image_path(self.root, rel, allow_outside=self.allow_outside)
        except (UnsafePathError, ImageError) as e:
            raise ImageFileError(str(e)) from e

    def _key(self, rel: str) -> tuple[Path, tuple]:
        """(path, cache key) of ``rel``, memoised: resolving costs an lstat per path component,
        and the same in-context images come back in every prompt."""
        hit = self._keys.get(rel)
        if hit is not None:
            return hit
        path = self.resolve(rel)
        try:
            st = path.stat()
        except OSError as e:
            raise ImageFileError(f"image {rel!r} not found under {self.root}") from e
        if len(self._keys) >= 100_000:
            self._keys.clear()
        self._keys[rel] = (path, (str(path), st.st_mtime_ns, st.st_size))
        return self._keys[rel]

    async def encode(self, rel: str) -> EncodedImage:
        path, key = self._key(rel)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            self.hits += 1
            return hit
        fut = self._pending.get(key)
        if fut is None:
            # The encoding runs as its own future, so a cancelled waiter never cancels it for the
            # others waiting on the same image.
            self.misses += 1
            fut = asyncio.get_running_loop().run_in_executor(self.executor, self._encode_sync, path)
            self._pending[key] = fut
            fut.add_done_callback(lambda f, key=key: self._done(key, f))
        else:
            self.hits += 1
        return await asyncio.shield(fut)

    def _done(self, key: tuple, fut: asyncio.Future) -> None:
        self._pending.pop(key, None)
        if not fut.cancelled() and fut.exception() is None:
            self._put(key, fut.result())

    def _encode_sync(self, path: Path) -> EncodedImage:
        from PIL import Image

        try:
            jpeg = encode_jpeg(path, self.max_side, self.quality)
        except ImageError as e:
            raise ImageFileError(str(e)) from e
        import io

        with Image.open(io.BytesIO(jpeg)) as im:
            w, h = im.size
        return EncodedImage(data_url(jpeg), w, h)

    def _put(self, key: tuple, enc: EncodedImage) -> None:
        if enc.nbytes > self.cache_bytes:
            return
        self._cache[key] = enc
        self._bytes += enc.nbytes
        while self._bytes > self.cache_bytes and self._cache:
            _, old = self._cache.popitem(last=False)
            self._bytes -= old.nbytes

    @property
    def cached_bytes(self) -> int:
        return self._bytes


# ----------------------------------------------------------------------------------------------
# Messages


@dataclass
class BuiltRequest:
    messages: list[dict[str, Any]]
    token_estimate: int  # input tokens, roughly
    candidate: str | None  # the candidate image path as written in the prompt file


def candidate_image(entry: PromptEntry, mode: Mode) -> str | None:
    """The new image a prompt asks about: its last part, in modes that carry one."""
    if mode.carries_candidate and entry.prompt and is_prompt_image(entry.prompt[-1]):
        return entry.prompt[-1]
    return None


async def build_messages(entry: PromptEntry, mode: Mode, system: str, generate: str,
                         encoder: ImageEncoder, model: str | None = None) -> BuiltRequest:
    """System prompt + one user message: the prompt list in order, then the generation prompt.
    ``model``: whose image-token rule the estimate uses (``image_token_rule``)."""
    if not entry.prompt:
        raise BadPromptError("the prompt list is empty")
    content: list[dict[str, Any]] = []
    tokens = text_tokens(system) + text_tokens(generate) + REQUEST_OVERHEAD_TOKENS
    for part in entry.prompt:
        if is_prompt_image(part):
            enc = await encoder.encode(part)
            content.append({"type": "image_url", "image_url": {"url": enc.url}})
            tokens += enc.token_estimate(model)
        else:
            content.append({"type": "text", "text": part})
            tokens += text_tokens(part)
    content.append({"type": "text", "text": generate})
    cand = candidate_image(entry, mode)
    if mode.carries_candidate and cand is None:
        raise BadPromptError(f"mode {mode.value} needs a candidate image as the prompt's last "
                             f"part; found {entry.prompt[-1][:60]!r}")
    return BuiltRequest([{"role": "system", "content": system},
                         {"role": "user", "content": content}], tokens, cand)


#: Role and message framing of one request, in tokens (an approximation).
REQUEST_OVERHEAD_TOKENS = 12


def text_tokens(text: str) -> int:
    """The project's one estimate of a text's tokens (about 4 characters a token): what the
    engine's TPM limiter and the app's cost estimate both count."""
    return len(text) // 4 + 1


#: How the answer-token limit is sent: ``max_tokens`` (what most OpenAI-compatible servers read),
#: ``max_completion_tokens`` (OpenAI's current name; o-series and GPT-5 models accept only it), or
#: ``auto``: ``max_completion_tokens`` for models that need it (``needs_max_completion_tokens``).
MAX_TOKENS_FIELDS = ("auto", "max_tokens", "max_completion_tokens")

# o1, o1-mini, o3, o3-pro, o4-mini, gpt-5, gpt-5-mini, … also behind a provider prefix
# (``openai/o3-mini`` for LiteLLM, ``azure/o1``) or with a date (``o1-2024-12-17``).
_NEEDS_COMPLETION_TOKENS = re.compile(r"^(o\d+|gpt-5)(-|$)", re.IGNORECASE)


def needs_max_completion_tokens(model: str) -> bool:
    """Whether ``model`` refuses ``max_tokens`` (OpenAI's o-series reasoning models, GPT-5)."""
    return bool(_NEEDS_COMPLETION_TOKENS.match(model.strip().rsplit("/", 1)[-1]))


#: Sampling parameters reasoning models (o-series, GPT-5) refuse: HTTP 400 "Unsupported parameter"
#: or "Unsupported value … Only the default (1) value is supported". Not sent to those models.
REASONING_MODEL_REFUSES = ("temperature", "top_p")


def refused_params(model: str) -> tuple[str, ...]:
    """The body parameters ``model``'s family refuses (``REASONING_MODEL_REFUSES`` for o-series and
    GPT-5 models, nothing for others)."""
    return REASONING_MODEL_REFUSES if needs_max_completion_tokens(model) else ()


def max_tokens_key(model: str, field: str = "auto") -> str:
    """The body key that carries the answer-token limit for ``model`` (see ``MAX_TOKENS_FIELDS``)."""
    if field not in MAX_TOKENS_FIELDS:
        raise ConfigError(choices_message("max_tokens_field", field, MAX_TOKENS_FIELDS))
    if field == "auto":
        return "max_completion_tokens" if needs_max_completion_tokens(model) else "max_tokens"
    return field


def request_body(model: str, messages: list[dict[str, Any]], *, temperature: float | None = None,
                 max_tokens: int | None = None, seed: int | None = None,
                 response_format: dict[str, Any] | None = None,
                 max_tokens_field: str = "auto", top_p: float | None = None) -> dict[str, Any]:
    """The chat-completions body (also what ``--dry_run`` writes into the Batch API file).
    Parameters the model's family refuses (``refused_params``) are left out."""
    body: dict[str, Any] = {"model": model, "messages": messages}
    refused = refused_params(model)
    if temperature is not None and "temperature" not in refused:
        body["temperature"] = temperature
    if top_p is not None and "top_p" not in refused:
        body["top_p"] = top_p
    if max_tokens is not None:
        body[max_tokens_key(model, max_tokens_field)] = max_tokens
    if seed is not None:
        body["seed"] = seed
    if response_format is not None:
        body["response_format"] = response_format
    return body


def batch_line(prompt_idx: int, body: dict[str, Any]) -> dict[str, Any]:
    """One line of an OpenAI Batch API input file."""
    return {"custom_id": str(prompt_idx), "method": "POST", "url": "/v1/chat/completions",
            "body": body}
