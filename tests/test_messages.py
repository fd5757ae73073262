"""Messages that say what is wrong and what to do, and zip entry names read as their archiver meant."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mminstruct.errors import DataFileError
from mminstruct.data.records import load_data_file
from mminstruct.app.uploads import entry_name, extract_zip
from tests.conftest import REPO

DEBIAN_ZIP = REPO / "tests" / "data" / "zip" / "utf8_names_debian_zip.zip"
CAFE = "café ☕.jpg"


def _prompt_generator(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mminstruct.prompt_generator", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize("mode,words", [
    ("vqa", ["none of its 3,184 candidate images is on disk", "looked under",
             "'downloaded_datasets/chartqa-train/images/"]),
    ("tqa", ["none of its reference samples is usable", "of their images are not on disk under"]),
])
def test_missing_task_file_images_are_called_missing(real_fixtures, tmp_path, mode, words):
    # MM-Gen's task files name images that are not shipped: the message says so, where it looked,
    # and how to go on — not "add a candidate pool" to a subgroup of 3,184 candidates.
    r = _prompt_generator("--task_desc", "task_files/chartqa_gen_task_desc_5cap_per_img.json",
                          "--input_folder", str(real_fixtures / "sjoshi804__MM-Gen"),
                          "--output_folder", str(tmp_path), "--file_prefix", "c", "--total_gen", "10",
                          "--mode", mode, cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "--no_check_images" in lines[0] and "add a candidate pool" not in lines[0]
    assert str((real_fixtures / "sjoshi804__MM-Gen").resolve()) in lines[0]
    for w in words:
        assert w in lines[0]


@pytest.mark.parametrize("value,kind", [({"a": 1}, "dict"), ("x.json", "str"), (None, "NoneType")])
def test_samples_that_is_not_a_list_says_so(tmp_path, value, kind):
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"image_folder": "imgs", "samples": value}))
    with pytest.raises(DataFileError) as e:
        load_data_file(p)
    msg = str(e.value)
    assert f"'samples' is a {kind}, not a list of records" in msg and "keys found" not in msg


# ---------------------------------------------------------------------------------------- zips


def _check_extracted(dest: Path) -> None:
    assert (dest / "photos" / CAFE).is_file(), sorted(p.name for p in dest.rglob("*"))
    df = load_data_file(dest / "data.json")  # the record names the image as written
    assert df.report.skipped == 0 and df.records[0].images == [f"photos/{CAFE}"]


def test_committed_debian_zip_extracts_with_utf8_names(tmp_path):
    with zipfile.ZipFile(DEBIAN_ZIP) as zf:
        info = zf.getinfo("photos/caf├⌐ Γÿò.jpg")  # how the zip standard's cp437 reads it
        assert not info.flag_bits & 0x800  # Debian's zip sets no UTF-8 flag
        assert entry_name(info) == f"photos/{CAFE}"
    report = extract_zip(DEBIAN_ZIP, tmp_path / "out")
    _check_extracted(tmp_path / "out")
    assert {f.name for f in report.files} == {"data.json", CAFE}


@pytest.mark.skipif(shutil.which("zip") is None, reason="Info-ZIP's zip is not installed "
                    "(apt-get install zip); the committed zip made by it is tested above")
def test_a_zip_made_now_by_debians_zip(tmp_path):
    src = tmp_path / "src"
    with zipfile.ZipFile(DEBIAN_ZIP) as zf:  # the same files, zipped again by this machine's zip
        zf.extractall(src)
    (src / "photos" / "caf├⌐ Γÿò.jpg").rename(src / "photos" / CAFE)
    subprocess.run(["zip", "-q", "-r", str(tmp_path / "new.zip"), "data.json", "photos"],
                   cwd=src, check=True, timeout=60)
    extract_zip(tmp_path / "new.zip", tmp_path / "out")
    _check_extracted(tmp_path / "out")


def _zip_entry(name: bytes, *, flag: int = 0, extra: bytes = b"") -> zipfile.ZipInfo:
    """A ZipInfo as zipfile reads one from a central directory: the raw name decoded as UTF-8
    when the flag is set, else as cp437."""
    info = zipfile.ZipInfo(name.decode("utf-8" if flag else "cp437"))
    info.flag_bits = flag
    info.extra = extra
    return info


def test_entry_names_utf8_flag_unicode_extra_and_cp437():
    utf8 = CAFE.encode("utf-8")
    assert entry_name(_zip_entry(utf8, flag=0x800)) == CAFE
    # Info-ZIP's Unicode Path extra field (0x7075) over a name stored in cp437
    legacy = "café.jpg".encode("cp437")
    field = b"\x01" + struct.pack("<I", zipfile.crc32(legacy)) + "café ☕ (unicode).jpg".encode()
    info = _zip_entry(legacy, extra=struct.pack("<HH", 0x7075, len(field)) + field)
    assert entry_name(info) == "café ☕ (unicode).jpg"
    # a stale field (CRC of another name) is ignored; the cp437 name is not valid UTF-8: cp437
    stale = b"\x01" + struct.pack("<I", 0) + b"other.jpg"
    assert entry_name(_zip_entry(legacy, extra=struct.pack("<HH", 0x7075, len(stale)) + stale)) \
        == "café.jpg"
    assert entry_name(_zip_entry(b"plain.jpg")) == "plain.jpg"
