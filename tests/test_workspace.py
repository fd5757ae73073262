"""The workspace (settings round trip and validation, curation edits, the recent list) and getting
data in (mminstruct.app.uploads: safe zip extraction — zip-slip, absolute names, symlinks, size and
count limits — upload names, files on this machine)."""

from __future__ import annotations

import io
import json
import stat
import zipfile
from pathlib import Path

import pytest

from mminstruct.errors import ConfigError, DataFileError, UnsafePathError
from mminstruct.app.uploads import (extract_zip, guess_image_folder, safe_file_name, save_upload,
                                server_data_settings)
from mminstruct.app.workspace import (SETTINGS_NAME, Workspace, forget_workspace, recent_workspaces,
                                  remember_workspace, settings_from_json)
from tests.fixtures.images import draw_shape, save_jpeg


def test_settings_round_trip(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "w", create=True)
    s = ws.settings
    s.data.data_file = "/data/x.json"
    s.data.dataset_description = "charts"
    s.partition.keywords = ["bar chart", "pie chart"]
    s.partition.min_similarity = 0.25
    s.partition.excluded_reference = [3, 1]
    s.partition.manual_candidates = {"pool/a.jpg": "pie chart"}
    s.prompts.mode = "vqa"
    s.prompts.total_gen = 500
    s.endpoint.base_url = "http://127.0.0.1:9/v1"
    s.endpoint.rpm = 600
    s.rejected = {"gen_1.json": [4, 2]}
    ws.save()
    again = Workspace.open(tmp_path / "w")
    assert again.settings == s
    raw = json.loads((tmp_path / "w" / SETTINGS_NAME).read_text())
    assert raw["endpoint"]["rpm"] == 600.0 and raw["partition"]["min_similarity"] == 0.25
    assert '"api_key":' not in json.dumps(raw)


def test_settings_validation_names_the_bad_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown mode 'vqq'; choose one of: vqa"):
        settings_from_json({"prompts": {"mode": "vqq"}})
    with pytest.raises(ConfigError, match="'total_gen' is 'many'; expected int"):
        settings_from_json({"prompts": {"total_gen": "many"}})
    with pytest.raises(ConfigError, match="concurrency is 0"):
        settings_from_json({"endpoint": {"concurrency": 0}})
    with pytest.raises(ConfigError, match="min_similarity is 3.0"):
        settings_from_json({"partition": {"min_similarity": 3}})
    # unknown keys are ignored, so a newer workspace.json still opens
    assert settings_from_json({"future": 1, "prompts": {"seed": 7, "extra": 2}}).prompts.seed == 7
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / SETTINGS_NAME).write_text("{not json")
    with pytest.raises(ConfigError, match="cannot be read as JSON"):
        Workspace.open(bad)
    with pytest.raises(ConfigError, match="is not a workspace"):
        Workspace.open(tmp_path)


def test_a_secret_never_reaches_the_settings_file(tmp_path: Path, monkeypatch) -> None:
    # a workspace.json edited by hand to hold a key: the key is not read, and not written back
    root = tmp_path / "w"
    root.mkdir()
    (root / SETTINGS_NAME).write_text(json.dumps(
        {"endpoint": {"api_key": "sk-should-never-be-written", "model_name": "m"}}))
    ws = Workspace.open(root)
    assert ws.settings.endpoint.generator_model == "m"
    assert not hasattr(ws.settings.endpoint, "api_key")
    ws.save()
    saved = (root / SETTINGS_NAME).read_text()
    # the generator's old key (model_name) was read and is written under its name now
    assert "sk-should" not in saved and json.loads(saved)["endpoint"]["generator_model"] == "m"
    assert "model_name" not in json.loads(saved)["endpoint"]
    # the guard itself: a future field holding a secret makes save refuse, and the file on disk
    # stays as it was (this fails if save stops calling the guard or the guard stops matching)
    real = type(ws.settings).to_json
    for where, key in (("endpoint", "api_key"), ("endpoint", "openai_api_key"),
                       ("data", "hf_token"), ("prompts", "client_secret"), ("endpoint", "password")):
        def with_secret(self, where=where, key=key):
            out = real(self)
            out[where] = {**out[where], key: "sk-should-never-be-written"}
            return out
        monkeypatch.setattr(type(ws.settings), "to_json", with_secret)
        with pytest.raises(ConfigError, match=f"secret-looking setting .*{key}"):
            ws.save()
        assert (root / SETTINGS_NAME).read_text() == saved
    # an empty value is not a secret (a field that names the environment variable is fine)
    monkeypatch.setattr(type(ws.settings), "to_json",
                        lambda self: {**real(self), "endpoint": {**real(self)["endpoint"],
                                                                 "api_key": ""}})
    ws.save()


def test_keyword_edits_carry_manual_assignments(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "w", create=True)
    ws.set_keywords(["bar chart", "pie chart", "line chart"])
    ws.assign("reference", [0, 5], "pie chart")
    ws.assign("candidate", ["pool/a.jpg"], "line chart")
    with pytest.raises(ConfigError, match="unknown keyword 'table'; choose one of: bar chart"):
        ws.assign("candidate", ["pool/b.jpg"], "table")
    # same length: a changed line is a rename, and the manual choices follow it
    ws.set_keywords(["bar chart", "pie charts", "line chart"])
    assert ws.settings.partition.manual_reference == {"0": "pie charts", "5": "pie charts"}
    # removing a keyword drops the choices made for it
    ws.set_keywords(["bar chart", "pie charts"])
    assert ws.settings.partition.manual_candidates == {}
    with pytest.raises(ConfigError, match="given twice"):
        ws.set_keywords(["Bar  Chart", "bar chart"])
    ws.set_excluded("reference", [3, 1])
    ws.set_excluded("candidate", ["pool/c.jpg"])
    ws.set_excluded("reference", [3], excluded=False)
    assert ws.settings.partition.excluded_reference == [1]
    ws.set_rejected("out.json", [5, 2])
    ws.set_rejected("out.json", [5], rejected=False)
    assert ws.settings.rejected == {"out.json": [2]}
    ws.save()
    assert Workspace.open(ws.root).settings.partition.excluded_candidates == ["pool/c.jpg"]


def test_recent_workspaces(app_home: Path, tmp_path: Path) -> None:
    a = Workspace.open(tmp_path / "a", create=True)
    b = Workspace.open(tmp_path / "b", create=True)
    remember_workspace(a.root)
    remember_workspace(b.root)
    remember_workspace(a.root)
    assert recent_workspaces() == [a.root, b.root]
    assert (app_home / "recent.json").is_file()
    (b.root / SETTINGS_NAME).unlink()  # gone: no longer listed
    assert recent_workspaces() == [a.root]
    forget_workspace(a.root)
    assert recent_workspaces() == []


# ----------------------------------------------------------------------------------------------
# Zip extraction


def _zip(entries: list[tuple[str, bytes] | zipfile.ZipInfo | tuple[zipfile.ZipInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for e in entries:
            if isinstance(e, tuple) and isinstance(e[0], zipfile.ZipInfo):
                zf.writestr(e[0], e[1])
            else:
                zf.writestr(*e)
    return buf.getvalue()


def test_extract_zip_writes_images_and_skips_mac_junk(tmp_path: Path) -> None:
    img = io.BytesIO()
    draw_shape("circle", 1).save(img, format="PNG")
    data = _zip([("images/a.png", img.getvalue()), ("images/sub/b.png", img.getvalue()),
                 ("__MACOSX/images/._a.png", b"junk"), ("images/.DS_Store", b"junk")])
    rep = extract_zip(io.BytesIO(data), tmp_path / "ws" / "data")
    names = sorted(p.relative_to(tmp_path / "ws" / "data").as_posix() for p in rep.files)
    assert names == ["images/a.png", "images/sub/b.png"]
    assert (tmp_path / "ws/data/images/a.png").read_bytes() == img.getvalue()
    assert not (tmp_path / "ws/data/__MACOSX").exists()
    assert "2 file(s)" in rep.summary()


@pytest.mark.parametrize("name", ["../evil.txt", "images/../../evil.txt", "/etc/evil.txt",
                                  "C:/evil.txt", "..\\evil.txt"])
def test_zip_slip_and_absolute_names_refuse_the_whole_archive(tmp_path: Path, name: str) -> None:
    data = _zip([("images/ok.txt", b"fine"), (name, b"evil")])
    dest = tmp_path / "ws" / "data"
    with pytest.raises(UnsafePathError, match="nothing was extracted"):
        extract_zip(io.BytesIO(data), dest)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "ws" / "evil.txt").exists()
    assert not (dest / "images" / "ok.txt").exists()


def test_symlink_entries_are_never_created(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("images/link.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    data = _zip([(link, b"/etc/passwd"), ("images/real.png", b"png")])
    dest = tmp_path / "data"
    rep = extract_zip(io.BytesIO(data), dest)
    assert not (dest / "images" / "link.png").exists() and not (dest / "images/link.png").is_symlink()
    assert rep.skipped == [("images/link.png", "symbolic link (not extracted)")]
    assert (dest / "images" / "real.png").read_bytes() == b"png"


def test_an_existing_symlinked_folder_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / "images").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        extract_zip(io.BytesIO(_zip([("images/a.png", b"x")])), dest)
    assert list(outside.iterdir()) == []


def test_size_and_count_limits_stop_extraction(tmp_path: Path) -> None:
    bomb = _zip([("big.bin", b"\0" * (5 << 20))])  # 5 MB of zeros, a few KB compressed
    assert len(bomb) < 50_000
    with pytest.raises(DataFileError, match="over the limit of 1.0 MB; nothing was extracted"):
        extract_zip(io.BytesIO(bomb), tmp_path / "a", max_bytes=1_000_000)
    assert not (tmp_path / "a" / "big.bin").exists()
    many = _zip([(f"f{i}.txt", b"x") for i in range(12)])
    with pytest.raises(DataFileError, match="12 files, over the limit of 10"):
        extract_zip(io.BytesIO(many), tmp_path / "b", max_files=10)
    with pytest.raises(DataFileError, match="not a readable zip"):
        extract_zip(io.BytesIO(b"PK\x03\x04 not really"), tmp_path / "c")


def test_a_header_that_lies_about_the_size_is_caught(tmp_path: Path) -> None:
    """An entry whose declared size is smaller than its content: never more than declared is
    written, and the archive is refused (zipfile's CRC check), leaving nothing behind."""
    data = bytearray(_zip([("a.bin", b"A" * 4000), ("b.bin", b"B" * 10)]))
    # patch a.bin's uncompressed size (local header offset 22, central directory entry offset 24)
    local = data.index(b"PK\x03\x04")
    data[local + 22:local + 26] = (100).to_bytes(4, "little")
    central = data.index(b"PK\x01\x02")
    data[central + 24:central + 28] = (100).to_bytes(4, "little")
    with pytest.raises(DataFileError, match="cannot be extracted"):
        extract_zip(io.BytesIO(bytes(data)), tmp_path / "d", max_bytes=1000)
    assert not any((tmp_path / "d").rglob("*.bin"))


def test_uploaded_names_are_sanitised(tmp_path: Path) -> None:
    assert safe_file_name("../../etc/passwd.json", [".json"]) == "passwd.json"
    assert safe_file_name("my data (v2).jsonl", [".jsonl"]) == "my_data_v2_.jsonl"
    with pytest.raises(DataFileError, match="expected a file ending in .json"):
        safe_file_name("x.exe", [".json"])
    p = save_upload(tmp_path, "..\\..\\x.json", b"[]")
    assert p == tmp_path / "x.json" and p.read_bytes() == b"[]"


def test_guess_image_folder_and_server_paths(tmp_path: Path) -> None:
    root = tmp_path / "project"
    for i in range(3):
        save_jpeg(draw_shape("circle", i), root / "pics" / f"{i}.jpg")
        save_jpeg(draw_shape("square", i), root / "pool" / f"c{i}.jpg")
    records = [{"id": i, "image": f"{i}.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A circle."}]}
        for i in range(3)]
    (root / "meta").mkdir()
    data_file = root / "meta" / "data.json"
    data_file.write_text(json.dumps(records))
    assert guess_image_folder(root, data_file) == "pics"
    d = server_data_settings(str(data_file), str(root / "pics"), str(root / "pool"))
    assert (d.input_folder, d.image_folder, d.candidate_folder) == (str(root), "pics", "pool")
    with pytest.raises(DataFileError, match="candidate folder 'nowhere' not found"):
        server_data_settings(str(data_file), "../pics", "nowhere")
    with pytest.raises(DataFileError, match="data file .* not found"):
        server_data_settings(str(root / "missing.json"))


def test_the_demo_pool_is_drawn_in_the_background(tmp_path: Path, monkeypatch) -> None:
    import threading

    from mminstruct.demo import workspace as demo_ws
    from mminstruct.app.demo import demo_pool_progress, setup_demo, wait_demo_pool

    gate = threading.Event()
    real = demo_ws._draw_all

    def gated(jobs, workers, progress):  # the pool's drawing waits until the test lets it go
        if any("cand_" in p for _, p in jobs):
            gate.wait(30)
        return real(jobs, workers, progress)

    monkeypatch.setattr(demo_ws, "_draw_all", gated)
    ws = Workspace.open(tmp_path / "ws", create=True)
    demo = setup_demo(ws, 6, 5, workers=1, pool_in_background=True)
    assert demo.pool_pending == 5
    assert len(list(demo.image_folder.glob("*.jpg"))) == 6  # the reference set is there now
    assert not list(demo.candidate_folder.glob("*.jpg"))  # the pool is not, yet
    assert demo_pool_progress(ws) == (0, 5)
    assert ws.has_data and Workspace.open(ws.root).settings.data.candidate_folder == "pool"
    gate.set()
    seen: list[tuple[int, int]] = []
    wait_demo_pool(ws, lambda d, t: seen.append((d, t)))
    assert len(list(demo.candidate_folder.glob("*.jpg"))) == 5
    assert demo_pool_progress(ws) is None
    manifest = json.loads((demo.root / ".demo_manifest.json").read_text())
    assert manifest["complete"] is True
    again = setup_demo(ws, 6, 5, workers=1, pool_in_background=True)  # complete: nothing drawn
    assert again.rendered == 0 and again.pool_pending == 0


def test_demo_charts_are_drawn_by_worker_processes(tmp_path: Path) -> None:
    from mminstruct.demo import build_demo_workspace

    demo = build_demo_workspace(tmp_path / "d", n_reference=20, n_candidates=8, workers=2)
    assert demo.rendered == 28
    assert len(list(demo.image_folder.glob("*.jpg"))) == 20
    assert len(list(demo.candidate_folder.glob("*.jpg"))) == 8


def test_drawing_workers_do_not_rerun_the_callers_main_script(tmp_path: Path) -> None:
    """Inside the app the caller's ``__main__`` is app.py; a multiprocessing "spawn" child re-ran
    it (the whole app without a session: slow, ~120 "missing ScriptRunContext" warnings)."""
    import subprocess
    import sys

    from tests.fixtures.app import REPO

    marker = tmp_path / "reran.txt"
    script = tmp_path / "caller.py"
    script.write_text(
        "import sys\n"
        "if __name__ != '__main__':\n"
        f"    open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
        "else:\n"
        "    from mminstruct.demo import build_demo_workspace\n"
        f"    build_demo_workspace({str(tmp_path / 'demo')!r}, n_reference=24, n_candidates=8,\n"
        "                         workers=2)\n")
    res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env={**__import__("os").environ,
                                                      "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(list((tmp_path / "demo" / "pool").glob("*.jpg"))) == 8
    assert not marker.exists(), marker.read_text()
