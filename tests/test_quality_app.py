"""The Review page's quality panel through AppTest: building the report, the summary, the filter by
flag, "reject every sample flagged …", and an export that leaves the rejected samples out."""

from __future__ import annotations

import json
from pathlib import Path

from mminstruct.quality.report import report_path_for
from mminstruct.app.workspace import Workspace
from tests.fixtures.app import app_test, no_errors, plain_strings

NAME = "run_20250101_000000.json"


def _sample(i: int, q: str, a: str, image: str) -> dict:
    return {"id": i, "image_1": image, "keyword": "charts" if i % 2 else "tables", "prompt_idx": i,
            "icl_indices": [], "conversations": [{"from": "human", "value": f"<image>\n{q}"},
                                                 {"from": "gpt", "value": a}]}


def _workspace(root: Path) -> Workspace:
    ws = Workspace.open(root, create=True)
    ws.settings.data.data_file = "data.json"  # the page asks for data; it never reads it here
    ws.save()
    samples = [
        _sample(0, "What is the highest bar?", "The 2019 bar.", "a.jpg"),
        _sample(1, "What is the highest bar?", "The 2019 bar.", "a.jpg"),          # exact dup
        _sample(2, "How many bars are shown?", "I'm sorry, I cannot see the image.", "b.jpg"),
        _sample(3, "Which year is lowest?", "", "c.jpg"),                           # invalid
        _sample(4, "What is the title of the chart?", "Sales by year.", "d.jpg"),
        _sample(5, "What is the highest bar?", "The 2019 bar.", "d.jpg"),          # other image
    ]
    ws.generated_dir.mkdir(parents=True, exist_ok=True)
    (ws.generated_dir / NAME).write_text(json.dumps(
        {"image_folder": "", "len_samples": len(samples), "start_idx": 0, "end_idx": 6,
         "num_prompts": 6, "mode": "vqa_nr", "model": "m", "input_folder": str(root),
         "samples": samples}))
    return ws


def _questions(at) -> list[str]:
    return [t for t in plain_strings(at) if t.startswith("Q: ")]


def test_quality_panel_filters_and_bulk_rejects(app_home: Path) -> None:
    ws = _workspace(app_home / "workspaces" / "q")
    at = app_test(ws).run()
    at.switch_page("pages/6_review.py").run()
    no_errors(at)
    assert len(_questions(at)) == 6
    at.button(key="rv_q_build").click().run()
    no_errors(at)
    report = report_path_for(ws.generated_dir / "run_20250101_000000.json")
    assert report.is_file()
    assert [f.name for f in Workspace.open(ws.root).output_files()] == [NAME]  # not the report
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Flagged"] == "3 / 6"
    assert metrics["exact duplicate"] == "1" and metrics["refusal"] == "1"
    assert metrics["invalid"] == "1"
    by_kw = at.dataframe[0].value
    assert dict(zip(by_kw["keyword"], by_kw["flagged"])) == {"charts": 2, "tables": 1}

    # the filter by flag
    at.multiselect(key="rv_q_flags").set_value(["refusal"]).run()
    no_errors(at)
    assert _questions(at) == ["Q: <image>\nHow many bars are shown?"]
    at.multiselect(key="rv_q_flags").set_value(["exact_duplicate", "invalid"]).run()
    assert len(_questions(at)) == 2
    at.multiselect(key="rv_q_flags").set_value([]).run()
    assert len(_questions(at)) == 6

    # reject every exact duplicate, then every refusal
    at.selectbox(key="rv_q_reject_flag").set_value("exact_duplicate").run()
    at.button(key="rv_q_reject").click().run()
    no_errors(at)
    assert Workspace.open(ws.root).settings.rejected == {NAME: [1]}
    at.selectbox(key="rv_q_reject_flag").set_value("refusal").run()
    at.button(key="rv_q_reject").click().run()
    assert Workspace.open(ws.root).settings.rejected == {NAME: [1, 2]}

    # the export honours the rejections
    at.radio(key="rv_fmt").set_value("mmgen").run()
    at.button(key="rv_export").click().run()
    no_errors(at)
    exported = json.loads((ws.root / "exports" / "run_20250101_000000.reviewed.mmgen.json").read_text())
    assert [s["id"] for s in exported["samples"]] == [0, 3, 4, 5]


def test_a_stale_report_offers_a_rebuild(app_home: Path) -> None:
    ws = _workspace(app_home / "workspaces" / "q")
    out = ws.generated_dir / NAME
    report = report_path_for(ws.generated_dir / "run_20250101_000000.json")
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text('{"summary": {}, "samples": []}')
    import os
    st = out.stat()
    os.utime(report, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))
    at = app_test(ws).run()
    at.switch_page("pages/6_review.py").run()
    no_errors(at)
    assert any("older than the file" in c.value for c in at.caption)
    at.button(key="rv_q_build").click().run()
    no_errors(at)
    assert json.loads(report.read_text())["summary"]["samples"] == 6


def test_review_filters_by_keyword_and_searches_the_text(app_home: Path) -> None:
    ws = _workspace(app_home / "workspaces" / "f")
    at = app_test(ws).run()
    at.switch_page("pages/6_review.py").run()
    no_errors(at)
    assert len(_questions(at)) == 6
    at.multiselect(key="rv_kw").set_value(["tables"]).run()  # even ids
    no_errors(at)
    assert sorted(_questions(at)) == sorted(["Q: <image>\nWhat is the highest bar?",
                                             "Q: <image>\nHow many bars are shown?",
                                             "Q: <image>\nWhat is the title of the chart?"])
    at.text_input(key="rv_q").set_value("title").run()  # within the keyword filter
    assert _questions(at) == ["Q: <image>\nWhat is the title of the chart?"]
    at.multiselect(key="rv_kw").set_value([]).run()
    at.text_input(key="rv_q").set_value("2019 BAR").run()  # answers too, any case
    assert len(_questions(at)) == 3
