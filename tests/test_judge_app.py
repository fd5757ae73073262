"""The Review page's judge panel through AppTest: sort by score, the rationale beside the
sample, filter by aspect, reject below 3 (the workspace's rejections) and an export without them."""

from __future__ import annotations

import json
from pathlib import Path

from mminstruct.app.review import scores_path_for, sort_and_filter_by_score
from mminstruct.app.workspace import Workspace
import re

from tests.fixtures.app import app_test, markdown_strings, no_errors
from tests.test_quality_app import NAME, _questions, _workspace

ASPECTS = ("visual_faithfulness", "correctness", "task_fit")
# id -> (visual_faithfulness, correctness, task_fit); 2 and 4 are the bad ones
SCORES = {0: (5, 5, 5), 1: (4, 5, 5), 2: (1, 2, 5), 3: (5, 4, 4), 4: (2, 2, 1), 5: (5, 5, 4)}


def _scores(ws: Workspace) -> Path:
    p = scores_path_for(ws.generated_dir / NAME)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w") as f:
        for sid, vals in SCORES.items():
            sc = dict(zip(ASPECTS, vals))
            f.write(json.dumps({"id": sid, "keyword": "charts" if sid % 2 else "tables",
                                "mode": "vqa_nr", "scores": sc,
                                "overall": round(sum(vals) / 3, 2),
                                "rationale": {a: f"why {a} is {v} for sample {sid}"
                                              for a, v in sc.items()},
                                "judge": {"model": "judge-m", "rubric": "abc"}}) + "\n")
        f.write(json.dumps({"id": 99, "keyword": "x", "mode": "vqa_nr", "scores": None,
                            "overall": None, "rationale": None, "error": "bad_json"}) + "\n")
    return p


def _texts(at) -> list[str]:
    """The Markdown strings shown, with md_escape's backslashes taken out."""
    return [re.sub(r"\\(.)", r"\1", t) for t in markdown_strings(at)]


def test_sort_and_filter_by_score_rules() -> None:
    samples = [{"id": i} for i in (0, 1, 2, 7)]
    scores = {0: {"overall": 4, "scores": {"a": 1}}, 1: {"overall": 2, "scores": {"a": 5}},
              2: {"overall": 4, "scores": {"a": 3}}}
    ids = lambda xs: [s["id"] for s in xs]  # noqa: E731
    assert ids(sort_and_filter_by_score(samples, scores, sort="lowest score first")) == [1, 0, 2, 7]
    assert ids(sort_and_filter_by_score(samples, scores, sort="highest score first")) == [0, 2, 1, 7]
    assert ids(sort_and_filter_by_score(samples, scores, aspect="a", sort="lowest score first",
                                        at_most=3)) == [0, 2]


def test_review_sorts_by_score_shows_the_rationale_rejects_below_3_and_exports(app_home) -> None:
    ws = _workspace(app_home / "workspaces" / "j")
    _scores(ws)
    at = app_test(ws).run()
    at.switch_page("pages/6_review.py").run()
    no_errors(at)
    assert len(_questions(at)) == 6
    texts = " ".join(_texts(at))
    assert "6 of 7 samples judged" in texts and "judge-m" in texts

    at.selectbox(key="rv_j_sort").set_value("lowest score first").run()
    no_errors(at)
    qs = _questions(at)
    assert qs[0] == "Q: <image>\nWhat is the title of the chart?"  # sample 4, overall 1.67
    assert qs[1] == "Q: <image>\nHow many bars are shown?"  # sample 2, overall 2.67
    texts = " ".join(_texts(at))
    assert "why visual_faithfulness is 1 for sample 2" in texts  # the rationale beside it

    at.selectbox(key="rv_j_aspect").set_value("task_fit").run()
    at.number_input(key="rv_j_at_most").set_value(4.0).run()
    no_errors(at)
    assert len(_questions(at)) == 3  # samples 3, 4, 5 have task_fit ≤ 4
    at.number_input(key="rv_j_at_most").set_value(0.0).run()
    at.selectbox(key="rv_j_aspect").set_value("overall").run()

    at.number_input(key="rv_j_threshold").set_value(3.0).run()
    at.button(key="rv_j_reject").click().run()
    no_errors(at)
    assert Workspace.open(ws.root).settings.rejected == {NAME: [2, 4]}

    at.button(key="rv_export").click().run()
    no_errors(at)
    [export] = [p for p in Workspace.open(ws.root).exports_dir.iterdir() if p.suffix == ".json"
                and p.name != "dataset_info.json"]
    kept = {r["id"] for r in json.loads(export.read_text())}  # LLaVA JSON, the default
    assert kept == {0, 1, 3, 5}  # 2 and 4 rejected by their scores


def test_review_builds_the_report_with_cross_image_duplicates_when_asked(app_home) -> None:
    ws = _workspace(app_home / "workspaces" / "x")
    at = app_test(ws).run()
    at.switch_page("pages/6_review.py").run()
    at.checkbox(key="rv_q_cross").check().run()
    at.button(key="rv_q_build").click().run()
    no_errors(at)
    metrics = {m.label: m.value for m in at.metric}
    # "What is the highest bar? / The 2019 bar." on a.jpg (twice) and d.jpg: all but the first
    assert metrics["same Q/A on other images"] == "2"
    at.selectbox(key="rv_q_reject_flag").set_value("cross_image_duplicate").run()
    at.button(key="rv_q_reject").click().run()
    no_errors(at)
    assert Workspace.open(ws.root).settings.rejected == {NAME: [1, 5]}
