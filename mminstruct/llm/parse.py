"""Turn a model's answer into the mode's items: find the JSON list, repair it, check the keys.

What real models send back, and what happens to it:

* a bare JSON list — used as is;
* the list inside ``` fences (```json or bare), or inside prose ("Sure! Here are …") — the fenced
  block, else the span from the first bracket to the last, is parsed;
* slightly broken JSON (a missing comma, a trailing comma, single quotes, an unclosed bracket) —
  repaired with ``json_repair``;
* one object instead of a list — wrapped into a list; a wrapper object such as
  ``{"items": [...]}`` (what ``--structured_outputs`` asks for) — unwrapped;
* keys in another case or spelled out (``question``, ``answer``, ``reasoning``) — mapped to the
  mode's keys; values that are numbers, lists or objects — turned into strings;
* items lacking a required key — dropped and counted; if none is left → ``SchemaMismatchError``;
* no JSON at all → ``BadJSONError`` (the engine then asks the model to fix the format), or
  ``RefusalError`` when the text is a refusal ("I'm sorry, I can't …").

Chat-template tokens that leak into answers (``<|im_end|>``, ``</s>``) are removed first; unlike
MM-Gen, nothing else between angle brackets is touched (it may be content, e.g. ``x<y>z``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from mminstruct.data.modes import Mode
from mminstruct.llm.errors import BadJSONError, RefusalError, SchemaMismatchError

_SPECIAL_TOKENS = re.compile(r"<\|[A-Za-z0-9_]{1,40}\|>|</?s>|<eos>|<end_of_turn>")
_FENCE = re.compile(r"```[ \t]*(?:json[a-z]*|JSON)?[ \t]*\r?\n?(.*?)```", re.DOTALL)
_REFUSAL = re.compile(
    r"^\W*(?:I'?m sorry|I am sorry|sorry[,.]|I (?:can ?not|can't|cannot|won't|am unable|'m unable)|"
    r"I apologi[sz]e|unfortunately,? I (?:can't|cannot))", re.IGNORECASE)

#: Other spellings of each key, lower-case, by mode kind.
_ALIASES: dict[str, tuple[str, ...]] = {
    "Q": ("q", "question", "query", "prompt"),
    "A": ("a", "answer", "final_answer", "response"),
    "R": ("r", "reasoning", "rationale", "explanation", "steps", "reason", "chain_of_thought"),
    "I": ("i", "image_description", "imagined_image", "hypothetical_image", "image", "scene"),
}
_DESCRIPTION_ALIASES = ("a", "description", "caption", "text", "answer")
_CHOICE_KEYS = ("choices", "options")
_LIST_OF_OBJECTS = re.compile(r"\[\s*\{")
_WRAPPER_KEYS = ("items", "pairs", "qa_pairs", "questions", "data", "results", "descriptions",
                 "samples", "output")


@dataclass
class ParseResult:
    items: list[dict[str, str]]
    dropped: int = 0  # items without the mode's keys
    how: str = "json"  # json | fenced | prose | repaired (+ "/object", "/wrapped")
    notes: list[str] = field(default_factory=list)


def clean_text(text: str) -> str:
    return _SPECIAL_TOKENS.sub("", text).strip()


def is_refusal(text: str) -> bool:
    t = text.strip()
    return bool(t) and len(t) < 600 and "[" not in t and "{" not in t and bool(_REFUSAL.match(t))


def parse_items(text: str | None, mode: Mode) -> ParseResult:
    """The mode's items in ``text``; raises BadJSONError, SchemaMismatchError or RefusalError."""
    if text is None or not text.strip():
        raise BadJSONError("the answer is empty", raw=text or "")
    cleaned = clean_text(text)
    found = find_json(cleaned)
    if found is None:
        if is_refusal(cleaned):
            raise RefusalError(f"the model refused: {cleaned[:200]!r}", raw=text)
        raise BadJSONError(f"no JSON in the answer: {cleaned[:120]!r}", raw=text)
    value, how = found
    items, shape = _as_items(value, mode)
    if items is None:
        raise SchemaMismatchError(
            f"JSON is a {type(value).__name__} without a list of items "
            f"(expected objects with keys {', '.join(mode.keys)})", raw=text)
    result = ParseResult([], how=how + shape)
    seen_keys: set[str] = set()
    for item in items:
        if not isinstance(item, dict):
            result.dropped += 1
            continue
        seen_keys.update(str(k) for k in item)
        norm = normalise_item(item, mode)
        if norm is None:
            result.dropped += 1
        else:
            result.items.append(norm)
    if not result.items:
        keys = ", ".join(sorted(seen_keys)[:12]) or "none"
        raise SchemaMismatchError(
            f"no item has the keys {', '.join(mode.keys)} ({len(items)} item(s); keys found: "
            f"{keys})", raw=text)
    return result


def find_json(text: str) -> tuple[Any, str] | None:
    """(value, how) for the first JSON list or object in ``text``, repairing it if need be."""
    stripped = text.strip()
    if stripped[:1] in "[{":
        try:
            return json.loads(stripped), "json"
        except json.JSONDecodeError:
            pass
    for block in _FENCE.findall(text):
        value = _load(block.strip())
        if value is not None:
            return value, "fenced"
    decoder = json.JSONDecoder()
    for pos in [m.start() for m in re.finditer(r"[\[{]", text)][:200]:
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            # A list of objects or an object that does not parse as is: repair it from here
            # (scanning on would find an inner object and lose its siblings).
            if text[pos] == "{" or _LIST_OF_OBJECTS.match(text, pos):
                value = _repair(text[pos:])
                if value is not None and _looks_like_items(value):
                    return value, "repaired"
            continue
        if _looks_like_items(value):
            return value, "json" if pos == 0 and not text[end:].strip() else "prose"
    return None


def _looks_like_items(value: Any) -> bool:
    return isinstance(value, dict) or (isinstance(value, list) and any(
        isinstance(v, dict) for v in value))


def _first_bracket(text: str) -> int:
    positions = [p for p in (text.find("["), text.find("{")) if p >= 0]
    return min(positions) if positions else -1


def _load(s: str) -> Any:
    if not s or s[0] not in "[{":
        start = _first_bracket(s)
        if start < 0:
            return None
        s = s[start:]
    try:
        return json.loads(s)
    except json.JSONDecodeError:
        return _repair(s)


def _repair(s: str) -> Any:
    import json_repair

    try:
        value = json_repair.loads(s)
    except (ValueError, RecursionError):
        return None
    if isinstance(value, (list, dict)) and value:
        return value
    return None


def _as_items(value: Any, mode: Mode) -> tuple[list[Any] | None, str]:
    if isinstance(value, list):
        if len(value) == 1 and isinstance(value[0], dict) and not _has_any_key(value[0], mode):
            inner = _wrapped_list(value[0])
            if inner is not None:
                return inner, "/wrapped"
        return value, ""
    if isinstance(value, dict):
        if _has_any_key(value, mode):
            return [value], "/object"
        inner = _wrapped_list(value)
        if inner is not None:
            return inner, "/wrapped"
    return None, ""


def _wrapped_list(obj: dict[str, Any]) -> list[Any] | None:
    for k in _WRAPPER_KEYS:
        for key, v in obj.items():
            if str(key).lower() == k and isinstance(v, list):
                return v
    lists = [v for v in obj.values() if isinstance(v, list) and v and isinstance(v[0], dict)]
    return lists[0] if len(lists) == 1 else None


def _aliases(key: str, mode: Mode) -> tuple[str, ...]:
    if key == "A" and mode.is_description:
        return _DESCRIPTION_ALIASES
    return _ALIASES[key]


def _has_any_key(obj: dict[str, Any], mode: Mode) -> bool:
    lower = {str(k).lower() for k in obj}
    return any(lower & set(_aliases(k, mode)) for k in mode.keys)


def normalise_item(item: dict[str, Any], mode: Mode) -> dict[str, str] | None:
    """The item with the mode's keys (plus ``choices`` if the model split them out), values as
    non-empty strings; None if a required key is missing or empty."""
    lower = {str(k).strip().lower(): v for k, v in item.items()}
    out: dict[str, str] = {}
    for key in mode.keys:
        value = None
        for alias in _aliases(key, mode):
            if alias in lower and lower[alias] is not None:
                value = lower[alias]
                break
        text = to_text(value)
        if not text:
            return None
        out[key] = text
    for ck in _CHOICE_KEYS:
        if ck in lower and lower[ck] not in (None, "", [], {}):
            out["choices"] = to_text(lower[ck])
            break
    return out


def to_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list):
        return "\n".join(to_text(v) for v in value if to_text(v))
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
