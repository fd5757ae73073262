"""The Data page through AppTest: open the demo, upload a data file with an image zip, point at
files on this machine; markup in a data file is shown as text; the first page imports nothing
heavy."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

from mminstruct.app.workspace import Workspace, recent_workspaces
from tests.fixtures.app import (REPO, app_test, copy_demo, live_markup, markdown_strings,
                                no_errors, plain_strings)
from tests.fixtures.images import draw_shape

EVIL_Q = "<script>alert('q')</script> <img src=x onerror=alert(1)> [click](javascript:alert(2)) :red[x]"
EVIL_A = "<b>bold?</b> <iframe src=javascript:alert(3)></iframe> $x^2$"


def test_open_the_demo(app_home: Path, demo_data: Path) -> None:
    copy_demo(demo_data, app_home / "workspaces" / "demo")  # drawn already: the click is quick
    at = app_test().run()
    no_errors(at)
    assert any("Open the demo" in b.label for b in at.button)
    at.button(key="open_demo").click().run()
    no_errors(at)
    root = app_home / "workspaces" / "demo"
    assert at.session_state["ws_path"] == str(root.resolve())
    s = Workspace.open(root).settings
    assert s.data.demo and s.partition.clip_model == "demo-charts"
    assert s.partition.keywords == ["bar chart", "line chart", "pie chart", "scatter plot"]
    assert s.data.candidate_folder == "pool"
    loaded = {m.label: m.value for m in at.metric}
    assert loaded["Records loaded"] == "24" and loaded["Skipped"] == "0"
    table = at.dataframe[0].value
    assert len(table) == 24 and table["image"].str.startswith("data:image/jpeg;base64,").all()
    assert recent_workspaces() == [root.resolve()]
    # the description is editable and saved
    at.text_area(key="desc_text").set_value("charts, edited").run()
    at.button(key="desc_save").click().run()
    assert Workspace.open(root).settings.data.dataset_description == "charts, edited"


def _records(n: int) -> list[dict]:
    return [{"id": f"r{i}", "image": f"img_{i}.png", "conversations": [
        {"from": "human", "value": f"<image>\nWhich shape is this? {i}"},
        {"from": "gpt", "value": "A circle." if i % 2 else "A square."}]} for i in range(n)]


def _image_zip(names: list[str], folder: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, name in enumerate(names):
            img = io.BytesIO()
            draw_shape("circle" if k % 2 else "square", k).save(img, format="PNG")
            zf.writestr(f"{folder}/{name}", img.getvalue())
    return buf.getvalue()


def test_upload_a_data_file_with_an_image_zip(app_home: Path) -> None:
    ws = Workspace.open(app_home / "workspaces" / "up", create=True)
    records = _records(5) + [{"id": "bad", "conversations": "not a list"}]
    at = app_test(ws).run()
    no_errors(at)
    at.file_uploader(key="up_data").upload("my data.json", json.dumps(records).encode(),
                                           "application/json")
    at.file_uploader(key="up_images").upload(
        "images.zip", _image_zip([f"img_{i}.png" for i in range(5)], "pics"), "application/zip")
    at.file_uploader(key="up_pool").upload(
        "pool.zip", _image_zip([f"c_{i}.png" for i in range(4)], "more"), "application/zip")
    at.run()
    at.button(key="up_go").click().run()
    no_errors(at)
    d = Workspace.open(ws.root).settings.data
    assert Path(d.data_file) == ws.uploads_dir / "my_data.json"
    assert (d.image_folder, d.candidate_folder) == ("pics", "candidates")
    assert (ws.uploads_dir / "candidates" / "more" / "c_3.png").is_file()
    loaded = {m.label: m.value for m in at.metric}
    assert loaded["Records loaded"] == "5" and loaded["Skipped"] == "1"
    assert any("wrong type" in t for t in plain_strings(at))


def test_files_on_this_machine(app_home: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "pics").mkdir(parents=True)
    for i in range(3):
        draw_shape("circle", i).save(project / "pics" / f"img_{i}.png")
    (project / "data.jsonl").write_text("\n".join(json.dumps(r) for r in _records(3)))
    ws = Workspace.open(app_home / "workspaces" / "srv", create=True)
    at = app_test(ws).run()
    at.text_input(key="srv_data").set_value(str(project / "data.jsonl"))
    at.text_input(key="srv_images").set_value("pics")
    at.text_input(key="srv_cand").set_value(str(project / "pics")).run()
    at.button(key="srv_go").click().run()
    no_errors(at)
    d = Workspace.open(ws.root).settings.data
    assert (d.input_folder, d.image_folder, d.candidate_folder) == (str(project), "pics", "pics")
    assert {m.label: m.value for m in at.metric}["Records loaded"] == "3"
    at.text_input(key="srv_data").set_value(str(project / "nope.json")).run()
    at.button(key="srv_go").click().run()
    assert any("not found" in e.value for e in at.error)


def test_markup_in_a_data_file_is_rendered_as_text(app_home: Path, tmp_path: Path) -> None:
    project = tmp_path / "evil"
    project.mkdir()
    draw_shape("circle", 0).save(project / "a.png")
    data = {"dataset_description": EVIL_A, "samples": [
        {"id": "<script>alert('id')</script>", "image": "a.png", "conversations": [
            {"from": "human", "value": EVIL_Q}, {"from": "gpt", "value": EVIL_A}]},
        {"id": "<img src=x onerror=alert(9)>", "image": "missing <script>.png",
         "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}]}
    (project / "evil.json").write_text(json.dumps(data))
    ws = Workspace.open(app_home / "workspaces" / "evil", create=True)
    at = app_test(ws).run()
    at.text_input(key="srv_data").set_value(str(project / "evil.json")).run()
    at.button(key="srv_go").click().run()
    no_errors(at)
    assert live_markup(markdown_strings(at)) == []  # nothing a browser would turn into markup
    # the text itself is on the page, as text: the report and the table cells
    assert any("missing <script>.png" in t for t in plain_strings(at))
    table = at.dataframe[0].value
    assert table["question"][0] == EVIL_Q and table["id"][0] == "<script>alert('id')</script>"
    assert at.text_area(key="desc_text").value == EVIL_A


def test_the_first_page_imports_nothing_heavy(app_home: Path, demo_data: Path) -> None:
    copy_demo(demo_data, app_home / "workspaces" / "demo")
    code = (
        "import sys, json\n"
        "from streamlit.testing.v1 import AppTest\n"
        f"at = AppTest.from_file({str(REPO / 'app.py')!r}, default_timeout=60).run()\n"
        "at.button(key='open_demo').click().run()\n"
        "assert not at.exception, [e.value for e in at.exception]\n"
        # (plotly is not listed: streamlit 1.67 imports it itself)
        "heavy = ('torch', 'open_clip', 'umap', 'faiss', 'numba', 'pynndescent', 'openai')\n"
        "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_md_escape_keeps_the_text_and_kills_the_markup() -> None:
    from ui.safe import md_escape

    for text in (EVIL_Q, EVIL_A, "plain words, 3.5 + 2 = 5.5!", "a_b*c*`d`"):
        escaped = md_escape(text, limit=None)
        assert live_markup([escaped]) == []
        assert escaped.replace("\\", "") == " ".join(text.replace("\\", "").split())
    assert md_escape("x" * 500, limit=10) == "x" * 9 + "…"
