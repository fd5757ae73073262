"""LLaVA-style data files: records, validation and the load report.

Data files (``load_data_file``) come in the shapes found in the wild:

* a JSON list of records, an object with ``samples`` (+ ``image_folder``, ``dataset_description`` or
  MM-Gen's older ``skill``), or JSONL (one record a line);
* images under ``image``, ``image_1`` (``image_2``, …) or ``images`` (a string or a list);
* turns under ``conversations`` (``from``/``value``) or ``messages`` (``role``/``content``, the
  LLaMA-Factory ShareGPT layout); roles human/user, gpt/assistant/bot, and system;
* ids int, str or missing.

Each record is validated on its own; a bad one is skipped and reported (index, id, reason) in the
file's ``LoadReport``, never stopping the load. A file that is not JSON, or whose every record fails
for the same format reason (a near-miss such as OpenAI-style content parts), is refused with one
``DataFileError`` line.
"""

from __future__ import annotations

import codecs
import contextlib
import gc
import hashlib
import json
import logging
import os
import re
import threading
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from mminstruct.cache import atomic_write_bytes, file_fingerprint, file_sha256

from mminstruct.errors import ConfigError, DataFileError, ImageError, UnsafePathError, choices_message
from mminstruct.data.images import DEFAULT_MAX_PIXELS, ImageRoot, open_image, probe_image, resolve_image_path

log = logging.getLogger(__name__)

ROLE_ALIASES: dict[str, str] = {
    "human": "human", "user": "human",
    "gpt": "gpt", "assistant": "gpt", "bot": "gpt", "model": "gpt",
    "system": "system",
}

#: Image placeholder tokens seen in the wild: <image>, <image_1>, <ImageHere>, <IMG_CONTEXT>.
IMAGE_TOKEN_RE = re.compile(r"<(?:image[^<>\s]{0,8}|ImageHere|IMG_CONTEXT)>", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Turn:
    role: str  # "human", "gpt" or "system"
    value: str


@dataclass(slots=True)
class Record:
    """One validated sample. ``images`` are as written in the file, relative to the image root."""

    index: int
    id: int | str | None
    images: list[str]
    turns: list[Turn]
    #: the record's other keys (not its id, images or conversation), as read; None when there are
    #: none. The parsed dict itself is not kept: 150,000 of them are ~90 MiB more per copy.
    extra: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        return record_label(self.index, self.id)

    def qa_pairs(self) -> list[tuple[str, str]]:
        """(question, answer) for each human turn followed by a gpt turn; system turns skipped."""
        pairs: list[tuple[str, str]] = []
        turns = [t for t in self.turns if t.role != "system"]
        for a, b in zip(turns, turns[1:]):
            if a.role == "human" and b.role == "gpt":
                pairs.append((a.value, b.value))
        return pairs

    @property
    def question(self) -> str:
        pairs = self.qa_pairs()
        return pairs[0][0] if pairs else ""

    def to_sample(self) -> dict[str, Any]:
        """The record as an MM-Gen task-file sample: ``image_1`` + ``conversations`` (from/value),
        other keys of the original kept."""
        out: dict[str, Any] = {}
        if self.id is not None:
            out["id"] = self.id
        if self.images:
            out["image_1"] = self.images[0]
            for k, extra in enumerate(self.images[1:], start=2):
                out[f"image_{k}"] = extra
        out["conversations"] = [{"from": t.role, "value": t.value} for t in self.turns]
        if self.extra:
            out.update(self.extra)
        return out


def record_label(index: int, rid: Any) -> str:
    return f"record {index}" + (f" (id {rid!r})" if rid is not None else "")


@dataclass(frozen=True)
class Problem:
    index: int
    id: Any
    reason: str

    def __str__(self) -> str:
        return f"{record_label(self.index, self.id)}: {self.reason}"


@dataclass
class LoadReport:
    path: str
    total: int = 0
    problems: list[Problem] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return len(self.problems)

    @property
    def loaded(self) -> int:
        return self.total - self.skipped

    def reasons(self) -> Counter:
        return Counter(_reason_kind(p.reason) for p in self.problems)

    def summary(self) -> str:
        head = f"{self.path}: {self.loaded} of {self.total} records loaded"
        if not self.problems:
            return head + "." + "".join(f"\n  hint: {h}" for h in self.hints)
        kinds = ", ".join(f"{n} {k}" for k, n in self.reasons().most_common())
        lines = [f"{head}, {self.skipped} skipped ({kinds}):"]
        lines += [f"  {p}" for p in self.problems[:20]]
        if len(self.problems) > 20:
            lines.append(f"  … and {len(self.problems) - 20} more")
        lines += [f"  hint: {h}" for h in self.hints]
        return "\n".join(lines)


def _reason_kind(reason: str) -> str:
    return reason.split(":")[0] if ":" in reason else reason


@dataclass
class DataFile:
    """A loaded data file: its valid records, where its images are, and the report."""

    path: Path
    records: list[Record]
    image_root: Path
    image_folder: str
    dataset_description: str
    report: LoadReport
    allow_outside: bool = False
    raw_extra: dict[str, Any] = field(default_factory=dict)

    def image_path(self, record: Record, k: int = 0) -> Path:
        return resolve_image_path(self.image_root, record.images[k], allow_outside=self.allow_outside)


# ----------------------------------------------------------------------------------------------
# Bulk parsing

_GC_LOCK = threading.Lock()
_GC_PAUSES = 0  # pauses in progress (nested or in other threads)
_GC_WAS_ON = False  # whether the collector ran when the first of them began


class paused_gc(contextlib.ContextDecorator):
    """Python's cyclic garbage collector paused while a parse makes hundreds of thousands of
    objects, none of them garbage: each allocation count that starts a collection would
    otherwise scan the objects made so far (and the server's others), again and again — 45 % of
    parsing a 150k-sample task file's records (2.2 s → 1.1-1.2 s, AVX2 EPYC). Reference counting
    still frees memory meanwhile. Nested and concurrent pauses share one: the collector runs
    again when the last ends, and only if it ran when the first began."""

    def __enter__(self) -> paused_gc:
        global _GC_PAUSES, _GC_WAS_ON
        with _GC_LOCK:
            if _GC_PAUSES == 0:
                _GC_WAS_ON = gc.isenabled()
                gc.disable()
            _GC_PAUSES += 1
        return self

    def __exit__(self, *exc: object) -> None:
        global _GC_PAUSES
        with _GC_LOCK:
            _GC_PAUSES -= 1
            if _GC_PAUSES == 0 and _GC_WAS_ON:
                gc.enable()


# ----------------------------------------------------------------------------------------------
# Reading JSON / JSONL


@paused_gc()
def read_json_file(path: str | os.PathLike) -> Any:
    """JSON, with one clear error naming the file, line and column when it is not."""
    p = Path(path)
    data = _read_bytes(p)
    try:
        return _fast_loads(data)
    except msgspec.DecodeError:
        pass  # the standard parser gives the message (and reads what msgspec refuses, e.g. NaN)
    try:
        return json.loads(_decode(p, data))
    except json.JSONDecodeError as e:
        raise DataFileError(f"{p}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e


def _fast_loads(data: bytes) -> Any:
    """msgspec's compiled parser straight from the bytes: no decoded copy of the text and no
    intermediate document (orjson's peaks at the file's size again), so the peak is the bytes
    plus the objects. A UTF-8 byte-order mark is skipped as ``utf-8-sig`` does. Raises
    ``msgspec.DecodeError`` for anything it refuses; the caller then takes the standard path."""
    if data.startswith(codecs.BOM_UTF8):
        data = memoryview(data)[len(codecs.BOM_UTF8):]  # type: ignore[assignment]
    return msgspec.json.decode(data)


def _read_bytes(p: Path) -> bytes:
    try:
        data = p.read_bytes()
    except FileNotFoundError as e:
        raise DataFileError(f"{p}: file not found") from e
    except IsADirectoryError as e:
        raise DataFileError(f"{p}: is a folder, expected a JSON or JSONL file") from e
    except OSError as e:
        raise DataFileError(f"{p}: cannot be read: {e}") from e
    if not data or data.isspace():  # (no stripped copy of a large file)
        raise DataFileError(f"{p}: file is empty")
    return data


def _decode(p: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataFileError(f"{p}: not UTF-8 text (byte {e.start})") from e


@paused_gc()
def _read_records(p: Path, report: LoadReport) -> tuple[list[tuple[int, Any]], dict[str, Any]]:
    """(index, raw record) pairs and the container's other keys. Bad JSONL lines become problems.
    A JSON file is parsed by msgspec from its bytes; the standard parser runs only on what msgspec
    refuses (to name the error, or to read NaN / huge integers as ``json`` does)."""
    data: bytes | None = _read_bytes(p)
    text: str | None = None
    is_jsonl = p.suffix.lower() in (".jsonl", ".ndjson")
    if not is_jsonl:
        try:
            top = _fast_loads(data)
        except msgspec.DecodeError:
            text, data = _decode(p, data), None
            try:
                top = json.loads(text)
            except json.JSONDecodeError as e:
                lines = [ln for ln in text.splitlines() if ln.strip()]
                if len(lines) > 1 and lines[0].lstrip().startswith("{") and _parses(lines[0]):
                    is_jsonl = True  # JSONL saved as .json
                else:
                    raise DataFileError(
                        f"{p}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
                    ) from e
        data = None  # the parsed records hold what they need; the bytes can go
    if is_jsonl:
        if text is None:
            text = _decode(p, data)  # type: ignore[arg-type]
        items: list[tuple[int, Any]] = []
        for n, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                items.append((len(items), _line_loads(line)))
            except json.JSONDecodeError as e:
                report.problems.append(Problem(len(items), None, f"bad JSON on line {n + 1}: {e.msg}"))
                items.append((len(items), None))
        return [(i, r) for i, r in items if r is not None], {}
    if isinstance(top, list):
        return list(enumerate(top)), {}
    if isinstance(top, dict):
        samples = top.get("samples")
        if isinstance(samples, list):
            extra = {k: v for k, v in top.items() if k != "samples"}
            return list(enumerate(samples)), extra
        if "conversations" in top or "messages" in top:
            return [(0, top)], {}
        if "samples" in top:
            raise DataFileError(f"{p}: 'samples' is a {type(samples).__name__}, not a list of "
                                "records; expected an object whose 'samples' is a list")
        raise DataFileError(
            f"{p}: a JSON object without a 'samples' list; expected a list of records, "
            f"an object with 'samples', or JSONL (keys found: {', '.join(sorted(top)[:10])})"
        )
    raise DataFileError(f"{p}: top-level JSON is {type(top).__name__}, expected a list or an object")


def _line_loads(line: str) -> Any:
    """One JSONL line: msgspec, else ``json`` (its error message; NaN as ``json`` reads it)."""
    try:
        return msgspec.json.decode(line)
    except msgspec.DecodeError:
        return json.loads(line)


def _parses(line: str) -> bool:
    try:
        json.loads(line)
        return True
    except json.JSONDecodeError:
        return False


# ----------------------------------------------------------------------------------------------
# Records


class _Bad(Exception):
    """Internal: a record-level problem (caught into the report, never escapes this module)."""


def parse_record(index: int, raw: Any) -> Record:
    """Validate one record's structure (not its images). Raises DataFileError with the reason."""
    try:
        return _parse_record(index, raw)
    except _Bad as e:
        rid = raw.get("id") if isinstance(raw, dict) else None
        raise DataFileError(f"{record_label(index, rid)}: {e}") from None


def _parse_record(index: int, raw: Any) -> Record:
    if not isinstance(raw, dict):
        raise _Bad(f"wrong type: record is a {type(raw).__name__}, expected an object")
    rid = raw.get("id")
    if rid is not None and (not isinstance(rid, (int, str)) or isinstance(rid, bool)):
        raise _Bad(f"wrong type: id is a {type(rid).__name__}, expected int or string")
    return Record(index, rid, _record_images(raw), _record_turns(raw), _record_extra(raw))


#: the keys a record's id, images and conversation are read from (``image_N`` too)
_RECORD_KEYS = frozenset(("id", "image", "images", "conversations", "messages"))
_IMAGE_N = re.compile(r"image_\d+")


def _record_extra(raw: dict[str, Any]) -> dict[str, Any] | None:
    """The keys ``to_sample`` carries over as they are (None when there are none: the common case,
    and no dict kept per record)."""
    extra = {k: v for k, v in raw.items() if k not in _RECORD_KEYS and not _IMAGE_N.fullmatch(k)}
    return extra or None


def _record_images(raw: dict[str, Any]) -> list[str]:
    images: list[str] = []
    numbered = sorted(  # image_1, image_2, … ("image_" + decimal digits, as re's \d+)
        (int(k[6:]), k) for k in raw if k.startswith("image_") and k[6:].isdecimal()
    )
    for key in ["image", "images"] + [k for _, k in numbered]:
        if key not in raw or raw[key] is None:
            continue
        value = raw[key]
        values = value if isinstance(value, list) else [value]
        for v in values:
            if not isinstance(v, str):
                raise _Bad(f"wrong type: '{key}' holds a {type(v).__name__}, expected a path string")
            if not v.strip():
                raise _Bad(f"image missing: '{key}' is an empty string")
            images.append(v)
    return images


def _record_turns(raw: dict[str, Any]) -> list[Turn]:
    if isinstance(raw.get("conversations"), list):
        key, role_key, value_key = "conversations", "from", "value"
    elif isinstance(raw.get("messages"), list):
        key, role_key, value_key = "messages", "role", "content"
    elif "conversations" in raw or "messages" in raw:
        which = "conversations" if "conversations" in raw else "messages"
        raise _Bad(f"wrong type: '{which}' is a {type(raw[which]).__name__}, expected a list")
    else:
        raise _Bad("no conversation: neither a 'conversations' nor a 'messages' list")
    turns: list[Turn] = []
    for n, t in enumerate(raw[key], start=1):
        if not isinstance(t, dict):
            raise _Bad(f"wrong type: turn {n} is a {type(t).__name__}, expected an object")
        role = t[role_key] if role_key in t else t.get("role", t.get("from"))
        value = t[value_key] if value_key in t else t.get("content", t.get("value"))
        canonical = ROLE_ALIASES.get(role.lower()) if isinstance(role, str) else None
        if canonical is None:
            raise _Bad(
                f"unknown role {role!r} in turn {n}; choose one of: {', '.join(ROLE_ALIASES)}"
            )
        if isinstance(value, list):
            raise _Bad(
                f"content parts: turn {n} holds a list of parts (OpenAI/xtuner style), not text; "
                "convert it to LLaVA conversations (from/value) first"
            )
        if not isinstance(value, str):
            raise _Bad(f"wrong type: turn {n} value is a {type(value).__name__}, expected a string")
        turns.append(Turn(canonical, value))
    roles = [t.role for t in turns]
    if "human" not in roles:
        raise _Bad("no human turn")
    if "gpt" not in roles:
        raise _Bad("no answer: no gpt/assistant turn")
    for n, t in enumerate(turns, start=1):
        if t.role == "gpt" and (not t.value or t.value.isspace()):  # (no stripped copy)
            raise _Bad(f"empty answer in turn {n}")
    return turns


# ----------------------------------------------------------------------------------------------
# Data files


def load_data_file(
    path: str | os.PathLike,
    *,
    input_folder: str | os.PathLike | None = None,
    image_folder: str | None = None,
    allow_outside_paths: bool = False,
    check_images: bool | str = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
    check_cache: str | os.PathLike | None = None,
) -> DataFile:
    """Load and validate a LLaVA-style data file.

    Images resolve under ``input_folder / image_folder``: ``input_folder`` defaults to the data
    file's folder, ``image_folder`` to the file's own ``image_folder`` key (or none).
    ``check_images``: ``True`` / ``"header"`` (the default) reads each distinct image's header
    (existence, format, pixel limit); ``"decode"`` decodes each fully (``images.open_image``:
    truncated or corrupt pixel data is caught too); ``False`` / ``"off"`` checks nothing. Images
    are checked by a pool of ``workers`` threads (default: sized to the machine), each distinct path
    once; ``progress(done, total)`` is called as distinct images are checked. ``check_cache``: a
    folder where the images that passed are remembered (``ImageChecks``): an unchanged image that
    passed the same check before is not opened again.
    """
    mode = check_images_mode(check_images)
    p = Path(path)
    report = LoadReport(str(p))
    items, extra = _read_records(p, report)
    report.total = len(items) + len(report.problems)
    root_base = Path(input_folder) if input_folder is not None else p.parent
    folder = image_folder if image_folder is not None else extra.get("image_folder") or ""
    if not isinstance(folder, str):
        raise DataFileError(f"{p}: 'image_folder' is a {type(folder).__name__}, expected a string")
    try:
        image_root = resolve_image_path(root_base, folder, allow_outside=allow_outside_paths) \
            if folder else root_base.resolve()
    except UnsafePathError as e:
        raise DataFileError(f"{p}: image_folder {folder!r} refused: {e}") from e
    description = extra.get("dataset_description") or extra.get("skill") or ""
    if not isinstance(description, str):
        description = str(description)

    parsed: list[Record] = []
    format_reasons: Counter = Counter()
    missing: list[str] = []
    with paused_gc():  # (not the image checks below: a decode makes garbage)
        for index, raw in items:
            try:
                parsed.append(_parse_record(index, raw))
            except _Bad as e:
                rid = raw.get("id") if isinstance(raw, dict) else None
                report.problems.append(Problem(index, rid, str(e)))
                format_reasons[_reason_kind(str(e))] += 1
    records: list[Record] = parsed
    if mode != "off":
        checked = check_image_paths((rel for rec in parsed for rel in rec.images), image_root,
                                    allow_outside=allow_outside_paths, max_pixels=max_pixels,
                                    decode=mode == "decode", workers=workers, progress=progress,
                                    known=ImageChecks(check_cache, mode, max_pixels)
                                    if check_cache is not None else None)
        records = []
        for rec in parsed:
            bad = next((checked[rel] for rel in rec.images if checked[rel] is not None), None)
            if bad is None:
                records.append(rec)
                continue
            if bad.startswith(_MISSING) and bad.endswith(f" not found under {image_root}"):
                missing.append(next(r for r in rec.images if checked[r] is not None))
            report.problems.append(Problem(rec.index, rec.id, bad))
    report.problems.sort(key=lambda pr: pr.index)

    if not records and format_reasons and sum(format_reasons.values()) == len(items):
        reason, n = format_reasons.most_common(1)[0]
        example = next(pr for pr in report.problems if _reason_kind(pr.reason) == reason)
        raise DataFileError(f"{p}: no record is LLaVA format ({n} of {len(items)}: {example})")
    if missing:
        hint = _image_root_hint(p, image_root, missing)
        if hint:
            report.hints.append(hint)
    return DataFile(p, records, image_root, folder, description, report, allow_outside_paths, extra)


CHECK_IMAGES_MODES: tuple[str, ...] = ("header", "decode", "off")
_MISSING = "image missing: "


def check_images_mode(value: bool | str) -> str:
    """``True``/``"header"`` → header, ``"decode"``, ``False``/``"off"`` → off; else ConfigError."""
    if value is True:
        return "header"
    if value is False or value is None:
        return "off"
    if isinstance(value, str) and value.strip().lower() in CHECK_IMAGES_MODES:
        return value.strip().lower()
    raise ConfigError(choices_message("check_images value", value, CHECK_IMAGES_MODES + (True, False)))


def image_check_workers(decode: bool) -> int:
    """Threads for checking images: headers are I/O (waiting on the disk), so a few per core;
    decoding is CPU work in PIL (which releases the GIL), so one per core."""
    cpus = os.cpu_count() or 2
    return cpus if decode else min(32, 4 * cpus)


class ImageChecks:
    """Images that passed a check, remembered across processes in ``FOLDER/image-checks.bin``:
    one 16-byte BLAKE2 digest per image of (the check mode, the pixel limit, Pillow's version, the
    resolved path, its device, inode, size and modification time). An image changed in any of
    these is checked again; a failure is never remembered (it is checked, and named, every time).
    A server that starts again decodes none of the 50,000 images of the last one (the Data page's
    "decode" check: 14 s for 50,000 tiny PNGs here, minutes for real photos). Written atomically,
    only when something was added; an unreadable or damaged file counts as empty."""

    FILE = "image-checks.bin"
    MAX = 2_000_000  # digests kept (32 MB); past it, only the last check's

    def __init__(self, folder: str | os.PathLike, mode: str, max_pixels: int):
        import PIL

        self.path = Path(folder) / self.FILE
        self._salt = f"{mode}\0{max_pixels}\0{PIL.__version__}\0".encode()
        self._new: list[bytes] = []
        try:
            data = self.path.read_bytes()
        except OSError:
            data = b""
        if len(data) % 16:
            data = b""  # damaged: checked again, and rewritten
        self._known = {data[i:i + 16] for i in range(0, len(data), 16)}

    def key(self, full: str | os.PathLike, st: os.stat_result) -> bytes:
        ident = f"{os.fspath(full)}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}"
        return hashlib.blake2b(self._salt + ident.encode("utf-8", "surrogateescape"),
                               digest_size=16).digest()

    def passed(self, key: bytes) -> bool:
        return key in self._known

    def add(self, key: bytes) -> None:
        self._new.append(key)  # (list.append: safe from the check's threads)

    def save(self) -> None:
        new = set(self._new) - self._known
        if not new:
            return
        keep = self._known | new if len(self._known) + len(new) <= self.MAX else new
        try:
            atomic_write_bytes(self.path, b"".join(sorted(keep)))
        except OSError as e:  # a read-only cache folder: the checks ran, only not remembered
            log.warning("cannot remember image checks in %s: %s", self.path, e)
            return
        self._known, self._new = keep, []


def check_image_paths(
    rels: Iterable[str],
    root: str | os.PathLike,
    *,
    allow_outside: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decode: bool = False,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    known: ImageChecks | None = None,
) -> dict[str, str | None]:
    """Check each distinct image path (relative to ``root``) once, in a thread pool: → ``{rel:
    None}`` when it is fine, else ``{rel: reason}`` with the reason a record is skipped for
    (``unsafe path: …``, ``image missing: …``, ``image unreadable: …``). ``decode`` decodes fully
    instead of reading the header. ``known``: images that passed this check before (and are
    unchanged) are not opened; those that pass now are added and saved."""
    where = ImageRoot(root, allow_outside=allow_outside)
    distinct = list(dict.fromkeys(rels))
    total = len(distinct)
    if progress:
        progress(0, total)
    if not distinct:
        return {}

    def one(rel: str) -> str | None:
        try:
            full, st = where.resolve(rel)
        except UnsafePathError as e:
            return f"unsafe path: {e}"
        except ImageError as e:
            return f"{_MISSING}{e}"
        if st is None:
            return f"{_MISSING}{rel!r} not found under {where.root}"
        key = known.key(full, st) if known is not None else None
        if key is not None and known.passed(key):  # type: ignore[union-attr]
            return None
        try:
            if decode:
                open_image(full, max_pixels=max_pixels).close()
            else:
                probe_image(full, max_pixels=max_pixels)
        except ImageError as e:
            return f"image unreadable: {e}"
        if key is not None:
            known.add(key)  # type: ignore[union-attr]
        return None

    n_threads = max(1, min(total, workers if workers else image_check_workers(decode)))
    results: list[str | None] = []
    if n_threads == 1:
        for k, rel in enumerate(distinct, start=1):
            results.append(one(rel))
            if progress and (k == total or k % 256 == 0):
                progress(k, total)
    else:
        size = max(1, min(64, total // (n_threads * 4)))  # a task per chunk: no 150k futures
        chunks = [distinct[i:i + size] for i in range(0, total, size)]
        with ThreadPoolExecutor(n_threads, thread_name_prefix="image-check") as pool:
            for part in pool.map(lambda chunk: [one(rel) for rel in chunk], chunks):
                results.extend(part)
                if progress:
                    progress(len(results), total)
    if known is not None:
        known.save()
    return dict(zip(distinct, results))


def _image_root_hint(p: Path, root: Path, missing: list[str]) -> str | None:
    """When images are missing, look for a folder where they do resolve and say so."""
    sample = missing[:20]
    candidates = [p.parent, p.parent.parent, p.parent / "images", root / "images"]
    for cand in candidates:
        cand = cand.resolve()
        if cand == root or not cand.is_dir():
            continue
        found = sum((cand / m).exists() for m in sample)
        if found >= max(1, len(sample) // 2):
            return (f"{len(missing)} image(s) not found under {root}; {found}/{len(sample)} of "
                    f"those checked exist under {cand}: pass that folder as the image folder")
    return None


def validate_record(index: int, raw: Any) -> Record | Problem:
    """The record, or the Problem that keeps it out (for callers that report rather than raise)."""
    try:
        return _parse_record(index, raw)
    except _Bad as e:
        return Problem(index, raw.get("id") if isinstance(raw, dict) else None, str(e))


# ----------------------------------------------------------------------------------------------
# Parse once per content (the app: a rerun must not parse a 150,000-record file again)

T = TypeVar("T")

#: Parsed files kept by ``parse_once`` (per process, shared by every session).
PARSE_ONCE_ENTRIES = 2
_ONCE: OrderedDict[tuple, tuple[bool, Any]] = OrderedDict()
_ONCE_SHA: dict[tuple, str] = {}
_ONCE_LOCK = threading.Lock()
_ONCE_PARSING: dict[tuple, threading.Lock] = {}  # per key being parsed: its parse's lock
#: every kept result that can be weakly referenced, while anything still holds it: a result
#: pushed out of ``_ONCE`` but still in use (the Data page's 150k-record file, held by the map's
#: embeddings while the Prompts page parses a task file and its records) is handed back, not
#: parsed again into a second copy
_ONCE_ALIVE: weakref.WeakValueDictionary[tuple, Any] = weakref.WeakValueDictionary()


def parse_once(path: str | os.PathLike, parse: Callable[..., T], *, peek: bool = False,
               **kwargs: Any) -> T:
    """``parse(path, **kwargs)``, computed once per (file content, path, arguments): the key is
    the file's SHA-256, itself hashed once per fingerprint (path, size, mtime), so an unchanged
    file is neither re-read nor re-parsed, and a rewritten one with the same bytes is not
    re-parsed. Every caller gets the same object (treat it as read-only). A parse error is kept
    too (raised again, not re-parsed). The last ``PARSE_ONCE_ENTRIES`` results are kept, and an
    older one still held elsewhere is handed back rather than parsed into a second copy. A call
    made while another thread parses the same key waits for that parse and shares its result
    (a page switched during a 20-second parse, or two tabs, do not parse the file twice).
    ``peek``: the kept result or None — nothing is parsed (an unchanged file is not hashed)."""
    try:
        fp = file_fingerprint(path)
    except OSError:
        return None if peek else parse(path, **kwargs)  # missing: parse() names the problem
    with _ONCE_LOCK:
        sha = _ONCE_SHA.get(fp)
    if sha is None and peek:
        return None  # never read in this process (as it is now)
    if sha is None:
        try:
            sha = file_sha256(path)
        except OSError:
            return parse(path, **kwargs)
        with _ONCE_LOCK:
            _ONCE_SHA[fp] = sha
            while len(_ONCE_SHA) > 8 * PARSE_ONCE_ENTRIES:
                _ONCE_SHA.pop(next(iter(_ONCE_SHA)))
    key = (f"{parse.__module__}.{parse.__qualname__}", sha, fp[0],
           tuple(sorted((k, repr(os.fspath(v) if isinstance(v, os.PathLike) else v))
                        for k, v in kwargs.items())))
    with _ONCE_LOCK:
        hit = _once_get(key)
    if hit is None and peek:
        return None
    if hit is None:
        with _ONCE_LOCK:
            parsing = _ONCE_PARSING.setdefault(key, threading.Lock())
        with parsing:  # one parse per key at a time: a second caller waits, then finds its result
            try:
                with _ONCE_LOCK:
                    hit = _once_get(key)
                if hit is None:
                    try:
                        hit = (True, parse(path, **kwargs))
                    except (DataFileError, ConfigError) as e:
                        hit = (False, e)
                    with _ONCE_LOCK:
                        _once_put(key, hit)
                        if hit[0]:
                            with contextlib.suppress(TypeError):  # (a dict, a tuple: not kept)
                                _ONCE_ALIVE[key] = hit[1]
            finally:
                with _ONCE_LOCK:
                    if _ONCE_PARSING.get(key) is parsing:
                        del _ONCE_PARSING[key]
    ok, value = hit
    if not ok:
        if peek:
            return None
        raise value
    return value


def _once_get(key: tuple) -> tuple[bool, Any] | None:
    """The kept result of ``key`` (most recently used now), or one pushed out but still alive
    (kept again); None. Under ``_ONCE_LOCK``."""
    hit = _ONCE.get(key)
    if hit is not None:
        _ONCE.move_to_end(key)
        return hit
    alive = _ONCE_ALIVE.get(key)
    if alive is None:
        return None
    hit = (True, alive)
    _once_put(key, hit)
    return hit


def _once_put(key: tuple, hit: tuple[bool, Any]) -> None:
    _ONCE[key] = hit
    while len(_ONCE) > PARSE_ONCE_ENTRIES:
        _ONCE.popitem(last=False)


def forget_parsed() -> None:
    """Drop every ``parse_once`` result (memory back; the next call parses again)."""
    with _ONCE_LOCK:
        _ONCE.clear()
        _ONCE_ALIVE.clear()
        _ONCE_SHA.clear()
