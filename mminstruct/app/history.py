"""A workspace's history: every change to its settings, as an append-only list of entries, each
with enough to restore the whole state as it was after it. No streamlit here.

``Workspace.save`` (the one place ``workspace.json`` is written) calls ``record`` under the
workspace's lock, so every writer — a page, a callback, the demo, a command line — leaves an entry.

Layout (inside the workspace)::

    history/entries/000042.json   one entry, written atomically (temp file, fsync, rename): id,
                                  time, page, the changes in words, the state's hash, files
    history/states/<sha256>.json  a settings snapshot, content-addressed (shared by entries)
    history/files/<sha256>        a task or prompt file's content as the entry saw it

An entry is never rewritten. **Undo** restores the state of the entry before the last one;
**Restore** any entry's state; both are entries themselves (so they can be undone). Restoring also
puts back the task and prompt files the restored settings name, when their content is kept.

Pruning policy (bounded history): the newest ``MAX_ENTRIES`` entries are kept (older entry files
and the snapshots no kept entry names are deleted); settings snapshots are kept in full; file
contents are kept by hash for the newest ``MAX_FILE_BYTES`` bytes of distinct contents named by
kept entries (older ones are deleted: their entries stay, and a restore of one says the file's
content is no longer kept and leaves the file as it is).

Command line: ``python -m mminstruct.app.history WORKSPACE`` lists the entries, one a line, id
first; ``--restore ID`` restores one (``--undo``: the last change).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mminstruct.cache import atomic_write_bytes, atomic_write_json
from mminstruct.errors import ConfigError

SETTINGS_NAME = "workspace.json"  # the workspace's settings (``Workspace`` reads and writes it)
HISTORY_DIR = "history"
MAX_ENTRIES = 500
MAX_FILE_BYTES = 256 << 20
#: settings that name a file whose content the history keeps
FILE_FIELDS = ("task_file", "prompt_file")
#: fields that change on their own, not by a person: not a change worth an entry
_QUIET = ("created",)


@dataclass
class Entry:
    id: int
    time: str
    page: str
    changes: list[str]
    state: str  # sha256 of the snapshot
    files: dict[str, str] = field(default_factory=dict)  # path → sha256 of content kept
    restores: int | None = None  # the entry whose state this one restored

    def line(self) -> str:
        what = "; ".join(self.changes) or "(no change)"
        return f"{self.id}\t{self.time}\t{self.page or '-'}\t{what}"


def history_dir(root: Path) -> Path:
    return Path(root) / HISTORY_DIR


@contextlib.contextmanager
def locked(root: str | os.PathLike) -> Iterator[None]:
    """The workspace's lock (an exclusive ``flock`` on ``history/lock``): held while its settings
    are read, merged and written, and while an entry is recorded (other processes and threads
    wait)."""
    d = history_dir(Path(root))
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def read_state(root: str | os.PathLike) -> dict[str, Any] | None:
    """``workspace.json`` as JSON, or None when it is missing or damaged (not JSON, not an
    object)."""
    try:
        raw = json.loads((Path(root) / SETTINGS_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def write_state(root: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Write ``workspace.json`` atomically (temp file, fsync, rename)."""
    return atomic_write_json(Path(root) / SETTINGS_NAME, dict(state))


def _canonical(state: Mapping[str, Any]) -> bytes:
    return json.dumps(state, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def state_hash(state: Mapping[str, Any]) -> str:
    return hashlib.sha256(_canonical(state)).hexdigest()


# ----------------------------------------------------------------------------------------------
# Describing changes in words


def flatten(state: Mapping[str, Any]) -> dict[str, Any]:
    """``{"endpoint.concurrency": 16, …}``: the sections' fields and the top-level fields."""
    out: dict[str, Any] = {}
    for k, v in state.items():
        if isinstance(v, dict) and k in ("data", "partition", "prompts", "endpoint"):
            for k2, v2 in v.items():
                out[f"{k}.{k2}"] = v2
        else:
            out[k] = v
    return out


def _short(v: Any, n: int = 60) -> str:
    s = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
    if v is None:
        s = "none"
    elif v == "":
        s = "(blank)"
    return s if len(s) <= n else s[: n - 1] + "…"


def _list_words(items: list[Any], n: int = 3) -> str:
    shown = ", ".join(_short(i, 40) for i in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def describe(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> list[str]:
    """The changes from ``before`` to ``after`` in words: ``keywords: + heat map``,
    ``concurrency 16 → 37``."""
    if before is None:
        return ["workspace state recorded"]
    b, a = flatten(before), flatten(after)
    out = []
    for path in sorted(set(a) | set(b), key=lambda p: list(a).index(p) if p in a else 999):
        if path in _QUIET or b.get(path) == a.get(path):
            continue
        name = path.split(".")[-1]
        old, new = b.get(path), a.get(path)
        if isinstance(old, list) and isinstance(new, list):
            added = [x for x in new if x not in old]
            removed = [x for x in old if x not in new]
            parts = ([f"+ {_list_words(added)}"] if added else []) + \
                    ([f"− {_list_words(removed)}"] if removed else [])
            out.append(f"{name}: {' '.join(parts) or 'reordered'}")
        elif isinstance(old, dict) and isinstance(new, dict):
            added = [f"{k}={_short(new[k], 30)}" for k in new if k not in old]
            changed = [f"{k} {_short(old[k], 20)} → {_short(new[k], 20)}" for k in new
                       if k in old and old[k] != new[k]]
            removed = [str(k) for k in old if k not in new]
            parts = ([f"+ {_list_words(added)}"] if added else []) + \
                    ([_list_words(changed)] if changed else []) + \
                    ([f"− {_list_words(removed)}"] if removed else [])
            out.append(f"{name}: {' '.join(parts)}")
        else:
            out.append(f"{name} {_short(old)} → {_short(new)}")
    return out


# ----------------------------------------------------------------------------------------------
# Reading


def _entries_dir(root: Path) -> Path:
    return history_dir(root) / "entries"


def _entry_from(raw: Any) -> Entry | None:
    if not isinstance(raw, dict):
        return None
    try:
        return Entry(id=int(raw["id"]), time=str(raw["time"]), page=str(raw.get("page", "")),
                     changes=[str(c) for c in raw.get("changes", [])], state=str(raw["state"]),
                     files={str(k): str(v) for k, v in (raw.get("files") or {}).items()},
                     restores=raw.get("restores"))
    except (KeyError, TypeError, ValueError):
        return None


def entries(root: str | os.PathLike) -> list[Entry]:
    """The workspace's entries, oldest first (an unreadable entry file is skipped)."""
    d = _entries_dir(Path(root))
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.glob("*.json")):
        try:
            e = _entry_from(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            e = None
        if e is not None:
            out.append(e)
    return sorted(out, key=lambda e: e.id)


def entry(root: str | os.PathLike, entry_id: int) -> Entry:
    for e in entries(root):
        if e.id == entry_id:
            return e
    ids = [e.id for e in entries(root)]
    span = f"{ids[0]}–{ids[-1]}" if ids else "none: the history is empty"
    raise ConfigError(f"history entry {entry_id!r} of {root} does not exist (entries: {span})")


def state_of(root: str | os.PathLike, e: Entry) -> dict[str, Any]:
    """The settings snapshot an entry names."""
    p = history_dir(Path(root)) / "states" / f"{e.state}.json"
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"history entry {e.id}: its state {p} cannot be read: {err}") from err


def last_good(root: str | os.PathLike) -> Entry | None:
    """The newest entry whose snapshot can be read (for a damaged ``workspace.json``)."""
    for e in reversed(entries(root)):
        try:
            state_of(root, e)
        except ConfigError:
            continue
        return e
    return None


# ----------------------------------------------------------------------------------------------
# Writing (the caller holds the workspace's lock: ``Workspace.save``)


def _file_hash(path: Path) -> str | None:
    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    except OSError:
        return None


def _known_files(es: list[Entry]) -> dict[str, str]:
    out: dict[str, str] = {}
    for e in es:
        out.update(e.files)
    return out


def record(root: Path, before: Mapping[str, Any] | None, after: Mapping[str, Any], *,
           page: str = "", changes: list[str] | None = None,
           restores: int | None = None) -> Entry | None:
    """Append an entry for the change ``before`` → ``after`` (``None`` when nothing changed and no
    named file's content changed). A history that is empty gets ``before`` first, so the first
    change can be undone too."""
    root = Path(root)
    es = entries(root)
    if not es and before is not None and before != after:
        es.append(_write_entry(root, 1, before, ["workspace state before the history began"],
                               "", _files_of(root, before, {}), None))
    known = _known_files(es)
    files = _files_of(root, after, known)
    moved = [f"{Path(p).name} written" for p, h in files.items() if known.get(p) != h]
    words = changes if changes is not None else describe(
        before if before is not None or es else None, after)
    words = [w for w in words] + [m for m in moved if m not in words]
    last_state = es[-1].state if es else None
    if not words and last_state == state_hash(after) and restores is None:
        return None
    if not words:
        words = ["(no change)"]
    new = _write_entry(root, (es[-1].id + 1) if es else 1, after, words, page,
                       {p: h for p, h in files.items() if known.get(p) != h}, restores)
    prune(root)
    return new


def _files_of(root: Path, state: Mapping[str, Any], known: dict[str, str]) -> dict[str, str]:
    """The task and prompt files ``state`` names: path → content hash, the content kept."""
    out = {}
    for name in FILE_FIELDS:
        path = state.get(name)
        if not path:
            continue
        h = _file_hash(Path(path))
        if h is None:
            continue
        out[str(path)] = h
        blob = history_dir(root) / "files" / h
        if not blob.exists():
            try:
                atomic_write_bytes(blob, Path(path).read_bytes())
            except OSError:
                continue
    return out


def _write_entry(root: Path, entry_id: int, state: Mapping[str, Any], changes: list[str],
                 page: str, files: dict[str, str], restores: int | None) -> Entry:
    h = state_hash(state)
    snap = history_dir(root) / "states" / f"{h}.json"
    if not snap.exists():
        atomic_write_json(snap, dict(state), indent=None)
    e = Entry(id=entry_id, time=datetime.now().isoformat(timespec="seconds"), page=page,
              changes=changes, state=h, files=files, restores=restores)
    atomic_write_json(_entries_dir(root) / f"{entry_id:06d}.json", e.__dict__, indent=None)
    return e


def prune(root: Path, max_entries: int = MAX_ENTRIES, max_file_bytes: int = MAX_FILE_BYTES) -> None:
    """The documented policy (module docstring): the newest ``max_entries`` entries, their
    snapshots, and file contents up to ``max_file_bytes`` (newest first)."""
    d = history_dir(root)
    es = entries(root)
    if len(es) > max_entries:
        for e in es[:-max_entries]:
            (_entries_dir(root) / f"{e.id:06d}.json").unlink(missing_ok=True)
        es = es[-max_entries:]
        keep = {e.state for e in es}
        for p in (d / "states").glob("*.json"):
            if p.stem not in keep:
                p.unlink(missing_ok=True)
    blobs = d / "files"
    if not blobs.is_dir():
        return
    keep_blobs: list[str] = []
    total = 0
    for e in reversed(es):
        for h in e.files.values():
            if h in keep_blobs:
                continue
            size = (blobs / h).stat().st_size if (blobs / h).exists() else 0
            if total + size > max_file_bytes and keep_blobs:
                continue
            total += size
            keep_blobs.append(h)
    for p in blobs.iterdir():
        if p.name not in keep_blobs and not p.name.startswith("."):
            p.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# Restoring


def files_to_restore(root: str | os.PathLike, e: Entry,
                     state: Mapping[str, Any]) -> Iterator[tuple[Path, Path | None]]:
    """(file, kept content or None) for each task/prompt file the state names whose content at
    ``e`` differs from the file now."""
    es = [x for x in entries(root) if x.id <= e.id]
    known = _known_files(es)
    for name in FILE_FIELDS:
        path = state.get(name)
        if not path or str(path) not in known:
            continue
        h = known[str(path)]
        if _file_hash(Path(path)) == h:
            continue
        blob = history_dir(Path(root)) / "files" / h
        yield Path(path), (blob if blob.is_file() else None)


def restore(root: str | os.PathLike, entry_id: int, page: str = "") -> tuple[Entry | None, list[str]]:
    """Put the workspace back as it was after entry ``entry_id`` (settings, and the task and
    prompt files when kept); the restore is an entry itself. Returns (the new entry, notes)."""
    root = Path(root).expanduser().resolve()
    with locked(root):
        e = entry(root, entry_id)
        state = state_of(root, e)
        notes = []
        for path, blob in files_to_restore(root, e, state):
            if blob is None:
                notes.append(f"{path.name}: its content at entry {e.id} is no longer kept "
                             "(pruned); the file is left as it is")
                continue
            atomic_write_bytes(path, blob.read_bytes())
            notes.append(f"{path.name} put back as it was at entry {e.id}")
        before = read_state(root)
        write_state(root, state)
        words = [f"restored entry {e.id} ({e.time})"] + describe(before, state)[:20]
        new = record(root, before, state, page=page, changes=words, restores=e.id)
    return new, notes


def undo(root: str | os.PathLike, page: str = "") -> tuple[Entry | None, list[str]]:
    """Undo the last change: restore the entry before the last one."""
    es = entries(root)
    if len(es) < 2:
        raise ConfigError(f"nothing to undo in {root}: the history has {len(es)} entries")
    return restore(root, es[-2].id, page=page)


# ----------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m mminstruct.app.history",
        description="List a workspace's history (one entry a line, id first: id, time, page, "
                    "what changed), or restore an entry.")
    ap.add_argument("workspace", help="the workspace folder")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--restore", type=int, metavar="ID", help="restore the state after entry ID")
    g.add_argument("--undo", action="store_true", help="undo the last change")
    args = ap.parse_args(argv)
    root = Path(args.workspace).expanduser().resolve()
    try:
        if args.restore is not None or args.undo:
            new, notes = (undo(root, page="command line") if args.undo
                          else restore(root, args.restore, page="command line"))
            for n in notes:
                print(n)
            print(new.line() if new else "already in that state: nothing changed")
            return 0
        es = entries(root)
        if not es:
            if not root.is_dir():
                raise ConfigError(f"workspace {root} does not exist")
            print(f"{root}: no history yet", file=sys.stderr)
        for e in es:
            print(e.line())
        return 0
    except (ConfigError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
