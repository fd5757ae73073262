"""Stream a large JSON object whose bulk is one list: prompt files and generated-data files.

A 150,000-prompt file is hundreds of MB of JSON; ``json.load`` would hold all of it (and its
Python objects, several times its size) at once. ``iter_object`` reads the file in chunks and
yields the top-level keys' values one at a time — and, for the one big list, its elements one at a
time — so memory stays at one chunk plus one element.

``PromptStream`` uses it for MM-Gen prompt files: ``open`` validates the header (mode,
description, ``min_gen_per_candidate`` …) and counts the prompts in one pass; ``entries(start,
stop)`` yields ``(index, PromptEntry)`` — or ``(index, BadPromptError)`` for a malformed entry, so
one bad entry fails one prompt, not the run.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mminstruct.errors import DataFileError
from mminstruct.data.formats import PromptEntry, PromptFile, prompt_file_from_json
from mminstruct.llm.errors import BadPromptError

CHUNK = 1 << 20
_WS_RE = re.compile(r"[ \t\r\n]*")
_DECODER = json.JSONDecoder()


class _Reader:
    """A growing text buffer over a file, with JSON value decoding that asks for more input when a
    value runs past the end of what has been read."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.f = open(path, encoding="utf-8-sig")
        except FileNotFoundError as e:
            raise DataFileError(f"{path}: file not found") from e
        except OSError as e:
            raise DataFileError(f"{path}: cannot be read: {e}") from e
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.consumed = 0  # characters dropped from the buffer's front

    def close(self) -> None:
        self.f.close()

    def _more(self) -> bool:
        if self.eof:
            return False
        try:
            chunk = self.f.read(CHUNK)
        except UnicodeDecodeError as e:
            raise DataFileError(f"{self.path}: not UTF-8 text") from e
        if not chunk:
            self.eof = True
            return False
        if self.pos > CHUNK:
            self.consumed += self.pos
            self.buf = self.buf[self.pos:]
            self.pos = 0
        self.buf += chunk
        return True

    def skip_ws(self) -> None:
        while True:
            self.pos = _WS_RE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or not self._more():
                return

    def peek(self) -> str:
        self.skip_ws()
        return self.buf[self.pos] if self.pos < len(self.buf) else ""

    def expect(self, chars: str) -> str:
        c = self.peek()
        if not c or c not in chars:
            wanted = " or ".join(repr(x) for x in chars)
            self.fail(f"expected {wanted}, found {c!r}" if c else f"expected {wanted}, "
                      "found the end of the file")
        self.pos += 1
        return c

    def value(self) -> Any:
        self.skip_ws()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                if self._more():
                    continue
                self.fail(e.msg, self.consumed + e.pos)
            # A number near the end of the buffer may continue in the next chunk ("1" of "1.5").
            if not isinstance(value, (dict, list, str)) and len(self.buf) - end < 64 \
                    and self._more():
                continue
            self.pos = end
            return value

    def fail(self, msg: str, at: int | None = None) -> None:
        where = self.consumed + self.pos if at is None else at
        raise DataFileError(f"{self.path}: not valid JSON near character {where}: {msg}")


def iter_object(path: str | os.PathLike, list_key: str) -> Iterator[tuple[str, Any, bool]]:
    """Yield ``(key, value, False)`` for each top-level key, except ``list_key`` whose elements
    are yielded one by one as ``(list_key, element, True)`` (an empty one as ``(list_key, [],
    False)``)."""
    r = _Reader(Path(path))
    try:
        if r.peek() == "":
            raise DataFileError(f"{path}: file is empty")
        if r.peek() != "{":
            raise DataFileError(f"{path}: top-level JSON is not an object")
        r.expect("{")
        if r.peek() == "}":
            return
        while True:
            key = r.value()
            if not isinstance(key, str):
                r.fail("expected a key")
            r.expect(":")
            if key == list_key and r.peek() == "[":
                r.expect("[")
                if r.peek() == "]":
                    r.pos += 1
                    yield key, [], False  # an empty list is still there
                else:
                    while True:
                        yield key, r.value(), True
                        if r.expect(",]") == "]":
                            break
            else:
                yield key, r.value(), False
            if r.expect(",}") == "}":
                break
    finally:
        r.close()


# ----------------------------------------------------------------------------------------------
# Prompt files


@dataclass
class PromptStream:
    """A prompt file read lazily: ``header`` is its PromptFile without prompts."""

    path: Path
    header: PromptFile
    count: int

    @classmethod
    def open(cls, path: str | os.PathLike) -> PromptStream:
        p = Path(path)
        header: dict[str, Any] = {}
        count = 0
        saw_prompts = False
        for key, value, is_item in iter_object(p, "prompts"):
            if key == "prompts":
                saw_prompts = True
                if is_item:
                    count += 1
                elif not isinstance(value, list):
                    raise DataFileError(f"{p}: 'prompts' must be a list")
            else:
                header[key] = value
        if not saw_prompts:
            raise DataFileError(f"{p}: not a prompt file: missing 'prompts'")
        pf = prompt_file_from_json({**header, "prompts": []}, str(p))
        pf.path = p
        return cls(p, pf, count)

    def entries(self, start: int = 0, stop: int | None = None
                ) -> Iterator[tuple[int, PromptEntry | BadPromptError]]:
        stop = self.count if stop is None else min(stop, self.count)
        idx = -1
        for key, value, is_item in iter_object(self.path, "prompts"):
            if key != "prompts" or not is_item:
                continue
            idx += 1
            if idx < start:
                continue
            if idx >= stop:
                return
            yield idx, parse_entry(value, idx)


def parse_entry(value: Any, idx: int) -> PromptEntry | BadPromptError:
    if not isinstance(value, dict):
        return BadPromptError(f"prompt {idx}: a {type(value).__name__}, expected an object")
    prompt = value.get("prompt")
    if not isinstance(prompt, list) or not all(isinstance(x, str) for x in prompt):
        return BadPromptError(f"prompt {idx}: 'prompt' must be a list of strings")
    icl = value.get("icl_indices", [])
    if not isinstance(icl, list) or not all(isinstance(i, int) and not isinstance(i, bool)
                                            for i in icl):
        return BadPromptError(f"prompt {idx}: 'icl_indices' must be a list of ints")
    keyword = value.get("keyword", "")
    return PromptEntry(str(keyword) if keyword is not None else "", list(prompt), list(icl))
