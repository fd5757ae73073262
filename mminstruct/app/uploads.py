"""Getting data into a workspace: uploaded files, image archives extracted safely, and files
already on this machine. No streamlit; the Data page calls these.

``extract_zip`` unpacks an uploaded archive safely: an absolute entry name or one that climbs out
with ``..`` refuses the whole archive before anything is written; symlink entries are skipped
(never created); a folder on the way that is a symlink is refused; extraction stops — and removes
what it wrote — past a byte or a file-count limit (the declared sizes are checked first, and the
bytes actually decompressed are counted, so a header that lies cannot get past either).
Entry names are read as their archiver meant them (``entry_name``): UTF-8 when the entry's UTF-8
flag is set; else the Info-ZIP Unicode Path extra field (0x7075) when present and matching; else,
when the raw name bytes decode as UTF-8 (Debian's ``zip`` writes UTF-8 names without the flag), that;
else the zip standard's cp437.
``server_data_settings`` points a workspace at a data file, image folder and candidate folder on
this machine, under one input folder.
"""

from __future__ import annotations

import os
import re
import stat
import struct
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from mminstruct.cache import atomic_write_bytes
from mminstruct.errors import DataFileError, UnsafePathError
from mminstruct.app.workspace import DataSettings

#: Upload limits: bytes after decompression and number of files in one archive.
MAX_EXTRACT_BYTES = 4 << 30
MAX_EXTRACT_FILES = 200_000
DATA_SUFFIXES = (".json", ".jsonl", ".ndjson")
_SKIP_NAMES = ("__MACOSX/", ".DS_Store")

def safe_file_name(name: str, suffixes: Sequence[str] | None = None) -> str:
    """The base name of an uploaded file, reduced to safe characters; refuses other suffixes."""
    base = PurePosixPath(str(name).replace("\\", "/")).name
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip(".")
    if not base:
        raise DataFileError(f"upload name {name!r} has no usable file name")
    if suffixes and not base.lower().endswith(tuple(suffixes)):
        raise DataFileError(f"upload {name!r}: expected a file ending in {', '.join(suffixes)}")
    return base


def save_upload(folder: str | os.PathLike, name: str, data: bytes,
                suffixes: Sequence[str] | None = DATA_SUFFIXES) -> Path:
    """Write an uploaded file into ``folder`` under its sanitised name, atomically."""
    target = Path(folder) / safe_file_name(name, suffixes)
    return atomic_write_bytes(target, data)


@dataclass
class ExtractReport:
    root: Path
    files: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (entry name, why)
    bytes: int = 0

    def summary(self) -> str:
        s = f"{len(self.files)} file(s), {self.bytes / 1e6:.1f} MB extracted into {self.root}"
        if self.skipped:
            s += f"; {len(self.skipped)} entr{'y' if len(self.skipped) == 1 else 'ies'} skipped (" \
                 + "; ".join(f"{n}: {why}" for n, why in self.skipped[:5]) + ")"
        return s


_UTF8_FLAG = 0x800
_UNICODE_PATH_EXTRA = 0x7075


def _unicode_path_extra(info: zipfile.ZipInfo, raw: bytes) -> str | None:
    """The name in Info-ZIP's Unicode Path extra field, if present and made for this name (its
    CRC-32 is that of the header's raw name bytes)."""
    extra, pos = info.extra, 0
    while pos + 4 <= len(extra):
        kind, size = struct.unpack_from("<HH", extra, pos)
        data = extra[pos + 4: pos + 4 + size]
        pos += 4 + size
        if kind != _UNICODE_PATH_EXTRA or len(data) < 5 or data[0] != 1:
            continue
        (crc,) = struct.unpack_from("<I", data, 1)
        if crc != zipfile.crc32(raw) & 0xFFFFFFFF:
            return None  # the name was changed after the field was written: not to be trusted
        try:
            return data[5:].decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def entry_name(info: zipfile.ZipInfo) -> str:
    """An archive entry's name as its archiver meant it (see the module docstring)."""
    if info.flag_bits & _UTF8_FLAG:
        return info.filename  # zipfile already decoded it as UTF-8
    try:
        raw = info.filename.encode("cp437")  # zipfile decoded the raw bytes as cp437
    except UnicodeEncodeError:
        return info.filename
    unicode_path = _unicode_path_extra(info, raw)
    if unicode_path is not None:
        return unicode_path
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return info.filename


def _entry_parts(name: str) -> tuple[str, ...]:
    """The entry's path components; UnsafePathError for absolute names and ``..``."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise UnsafePathError(f"archive entry {name!r} has an absolute path; refused "
                              "(nothing was extracted)")
    parts = tuple(p for p in norm.split("/") if p not in ("", "."))
    if any(p == ".." for p in parts):
        raise UnsafePathError(f"archive entry {name!r} climbs out of the folder with '..'; "
                              "refused (nothing was extracted)")
    return parts


def extract_zip(source: str | os.PathLike | IO[bytes], dest: str | os.PathLike, *,
                max_bytes: int = MAX_EXTRACT_BYTES, max_files: int = MAX_EXTRACT_FILES,
                chunk: int = 1 << 20) -> ExtractReport:
    """Extract a zip archive under ``dest`` safely (see the module docstring)."""
    root = Path(dest).resolve()
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataFileError(f"upload is not a readable zip archive: {e}") from e
    report = ExtractReport(root)
    with zf:
        plan: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
        for info in zf.infolist():
            name = entry_name(info)
            parts = _entry_parts(name)
            if not parts or info.is_dir():
                continue
            if any(name.startswith(s) or parts[-1] == s for s in _SKIP_NAMES):
                continue
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                report.skipped.append((name, "symbolic link (not extracted)"))
                continue
            plan.append((info, parts))
        if len(plan) > max_files:
            raise DataFileError(f"archive holds {len(plan):,} files, over the limit of "
                                f"{max_files:,}; nothing was extracted")
        declared = sum(i.file_size for i, _ in plan)
        if declared > max_bytes:
            raise DataFileError(f"archive unpacks to {declared / 1e6:,.1f} MB, over the limit of "
                                f"{max_bytes / 1e6:,.1f} MB; nothing was extracted")
        root.mkdir(parents=True, exist_ok=True)
        try:
            for info, parts in plan:
                target = root.joinpath(*parts)
                _safe_parent(root, target)
                report.bytes += _extract_one(zf, info, target, max_bytes - report.bytes, chunk)
                report.files.append(target)
        except BaseException:
            for f in report.files:
                f.unlink(missing_ok=True)
            raise
    return report


def _safe_parent(root: Path, target: Path) -> None:
    """Create ``target``'s folders, refusing any existing component that is a symlink or that
    resolves outside ``root``."""
    cur = root
    for part in target.relative_to(root).parts[:-1]:
        cur = cur / part
        if cur.is_symlink():
            raise UnsafePathError(f"{cur} is a symbolic link; refusing to extract through it")
        cur.mkdir(exist_ok=True)
    if not target.parent.resolve().is_relative_to(root):
        raise UnsafePathError(f"{target} would land outside {root}")


def _extract_one(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int,
                 chunk: int) -> int:
    if target.is_symlink():
        target.unlink()
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    written = 0
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as out, zf.open(info) as src:
            while block := src.read(chunk):
                written += len(block)
                if written > budget:
                    raise DataFileError(
                        f"archive entry {entry_name(info)!r} decompresses past the size limit "
                        f"(more than its declared {info.file_size:,} bytes); extraction stopped")
                out.write(block)
        os.replace(tmp, target)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, RuntimeError) as e:
        raise DataFileError(f"archive entry {entry_name(info)!r} cannot be extracted: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)
    return written


def guess_image_folder(input_root: Path, data_file: Path, sample: int = 20) -> str | None:
    """The image folder (relative to ``input_root``) under which most of the data file's first
    images exist: "" (the root itself), the file's own ``image_folder``, or a top-level folder.
    None when nothing matches."""
    from mminstruct.data.records import load_data_file

    try:
        data = load_data_file(data_file, input_folder=input_root, image_folder="",
                              check_images=False)
    except DataFileError:
        return None
    images = [r.images[0] for r in data.records if r.images][:sample]
    if not images:
        return None
    own = data.raw_extra.get("image_folder")
    options: list[str] = [""] + ([own] if isinstance(own, str) and own else [])
    options += sorted(p.name for p in input_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    best, best_hits = None, 0
    for opt in dict.fromkeys(options):
        hits = sum((input_root / opt / img).is_file() for img in images)
        if hits > best_hits:
            best, best_hits = opt, hits
    return best


def server_data_settings(data_file: str, image_folder: str = "", candidate_folder: str = "",
                         allow_outside_paths: bool = False) -> DataSettings:
    """Settings for data already on this machine. The input folder is the deepest folder holding
    the data file, the image folder and the candidate folder, so every path stays relative to it
    (an absolute image folder elsewhere needs ``allow_outside_paths``)."""
    df = Path(data_file).expanduser()
    if not df.is_file():
        raise DataFileError(f"data file {data_file!r} not found")
    if not df.name.lower().endswith(DATA_SUFFIXES):
        raise DataFileError(f"data file {data_file!r}: expected a .json or .jsonl file")
    df = df.resolve()
    folders = [df.parent]
    img = Path(image_folder).expanduser() if image_folder.strip() else _own_image_folder(df)
    cand = Path(candidate_folder).expanduser() if candidate_folder.strip() else None
    for what, p in (("image folder", img), ("candidate folder", cand)):
        if p is not None:
            full = p if p.is_absolute() else df.parent / p
            if not full.is_dir():
                raise DataFileError(f"{what} {str(p)!r} not found (looked at {full})")
            folders.append(full.resolve())
    root = Path(os.path.commonpath([str(f) for f in folders]))
    if root == Path(root.anchor) and not allow_outside_paths:
        raise UnsafePathError("the data file and the image and candidate folders share no folder "
                              "but the file system root; allow paths outside the input folder, "
                              "or keep them under one project folder")

    def rel(p: Path | None) -> str | None:
        if p is None:
            return None
        full = (p if p.is_absolute() else df.parent / p).resolve()
        return full.relative_to(root).as_posix() or "."

    return DataSettings(input_folder=str(root), data_file=str(df), image_folder=rel(img) or "",
                        candidate_folder=rel(cand) or "", allow_outside_paths=allow_outside_paths)


def check_data(d: DataSettings) -> Any:
    """Load the data file ``d`` names as the app would (each image's header read) and refuse it
    when it cannot be used: unparsable, no record usable, an image folder that does not exist.
    Returns the ``DataFile``; raises ``DataFileError`` naming the file and the problem. A load is
    checked with this *before* the workspace points at it, so a failed load changes nothing."""
    from mminstruct.data.records import load_data_file

    root = Path(d.input_folder) if d.input_folder else Path(d.data_file).parent
    if d.image_folder and not (root / d.image_folder).is_dir():
        raise DataFileError(f"image folder {d.image_folder!r} does not exist (looked at "
                            f"{root / d.image_folder})")
    data = load_data_file(d.data_file, input_folder=root, image_folder=d.image_folder,
                          allow_outside_paths=d.allow_outside_paths, check_images="header")
    if data.report.loaded == 0:
        first = data.report.problems[0] if data.report.problems else "the file holds no record"
        raise DataFileError(f"{Path(d.data_file).name}: none of its {data.report.total:,} records "
                            f"can be used (first: {first})")
    return data


def stage_upload(folder: str | os.PathLike, name: str, data: bytes) -> Path:
    """Write an uploaded data file into ``folder/.incoming`` (checked there: ``check_data``;
    ``commit_upload`` then moves it into ``folder``), so a file that fails leaves the one loaded
    before untouched."""
    return save_upload(Path(folder) / ".incoming", name, data)


def commit_upload(staged: Path) -> Path:
    """Move a staged, checked upload into its folder (atomically, over a file of that name)."""
    target = staged.parent.parent / staged.name
    os.replace(staged, target)
    return target


def _own_image_folder(data_file: Path) -> Path:
    """The data file's own ``image_folder`` key as a folder (relative to the file), or its folder."""
    from mminstruct.data.records import load_data_file

    own = load_data_file(data_file, check_images=False).raw_extra.get("image_folder")
    return data_file.parent / own if isinstance(own, str) and own else data_file.parent
