"""The smaller defects of issue 21's walk through the app, each seen where a person sees it: one
file-name rule for prefixes (field, command lines, runs; no orphan prompt file), Start showing the
run just started, budgets naming only the task's subgroups, Review showing this workspace's
export, the answer-length plot (every sample, bins in order), image tokens per model, a page link
clicked before the session's first run, and the small texts."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from mminstruct.app.curation import build_task, curate, embed_workspace, keyword_vectors, save_task
from mminstruct.app.runs import check_name, list_app_runs, new_run_name
from mminstruct.app.workspace import Workspace
from mminstruct.errors import ConfigError
from mminstruct.data.formats import check_file_prefix
from mminstruct.llm.client import endpoint_label
from mminstruct.llm.requests import image_token_rule
from mminstruct.prompts.plan import PromptConfig
from tests.fixtures.app import app_test, markdown_strings, no_errors

BAD_PREFIXES = ("démo_final", "run b", "a/b", "", "x_", "-x", "ünï")


def _text(at) -> str:
    return " ".join(markdown_strings(at) + [c.value for c in at.caption]).replace("\\", "")


@pytest.fixture
def task_ws(demo_ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """The demo workspace with a saved task file and small prompt settings; no key anywhere."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    demo_ws.settings.partition.projection = "pca"
    emb = embed_workspace(demo_ws)
    cur = curate(demo_ws, emb, keyword_vectors(demo_ws, demo_ws.settings.partition.keywords))
    save_task(demo_ws, build_task(demo_ws, emb, cur))
    p = demo_ws.settings.prompts
    p.total_gen, p.min_gen_per_candidate, p.num_icl_samples, p.mode = 40, 1, 1, "vqa"
    demo_ws.save()
    return demo_ws


# -- 1. one rule for file prefixes


@pytest.mark.parametrize("bad", BAD_PREFIXES)
def test_every_entry_point_refuses_the_same_prefixes(bad: str, tmp_path: Path) -> None:
    from mminstruct.commands import prompts as prompt_generator

    with pytest.raises(ConfigError):
        check_file_prefix(bad)
    with pytest.raises(ConfigError):
        check_name(bad)  # a run's name
    with pytest.raises(ConfigError):
        PromptConfig(task_desc="t.json", file_prefix=bad, total_gen=10)
    # the command line: refused before anything is read or written
    rc = prompt_generator.main(["--task_desc", "no.json", "--input_folder", str(tmp_path),
                                "--output_folder", str(tmp_path), f"--file_prefix={bad}",
                                "--total_gen", "4"])
    assert rc != 0 and not any(tmp_path.rglob("*.json"))


@pytest.mark.parametrize("good", ("prompts", "chart_v2", "run-b.1", "A" * 120))
def test_good_prefixes_pass_every_check(good: str) -> None:
    assert check_file_prefix(good) == good == check_name(good)
    PromptConfig(task_desc="t.json", file_prefix=good, total_gen=10)


def test_a_refused_prefix_leaves_no_orphan_prompt_file(task_ws: Workspace) -> None:
    from mminstruct.app.preview import plan_workspace
    from mminstruct.app.subgroups import start_subgroup_run
    from mminstruct.data.formats import load_task_file

    task_path = next(task_ws.tasks_dir.glob("*.json"))
    _, _, pf = plan_workspace(task_ws, load_task_file(task_path), task_path)
    raw = json.loads((task_ws.root / "workspace.json").read_text())
    raw["prompts"]["file_prefix"] = "run b"  # saved by an older version, or by hand
    (task_ws.root / "workspace.json").write_text(json.dumps(raw))
    ws = Workspace.open(task_ws.root)
    with pytest.raises(ConfigError, match="run b"):
        start_subgroup_run(ws, pf, [pf.prompts[0].keyword], python="/bin/false")
    assert not list(ws.prompts_dir.glob("*.json")) if ws.prompts_dir.is_dir() else True
    with pytest.raises(ConfigError, match="démo"):
        start_subgroup_run(Workspace.open(task_ws.root), pf, [pf.prompts[0].keyword],
                           name="démo_final", python="/bin/false")
    assert not ws.prompts_dir.is_dir() or not list(ws.prompts_dir.glob("*.json"))


# -- the Prompts page: the prefix and budget fields, the preview's numbering, the estimate


def test_prompts_page_refuses_bad_prefixes_and_unknown_budget_keywords(task_ws: Workspace) -> None:
    before = task_ws.settings.prompts.file_prefix
    at = app_test(task_ws).run()
    at.switch_page("pages/4_prompts.py").run()
    no_errors(at)
    for bad in ("démo_final", "run b"):
        at.text_input(key="p_prefix").set_value(bad).run()
        assert at.error and bad in at.error[0].value.replace("\\", "")  # said as it is typed
        assert Workspace.open(task_ws.root).settings.prompts.file_prefix == before  # not saved
    at.text_input(key="p_prefix").set_value("charts_v2").run()
    no_errors(at)
    assert Workspace.open(task_ws.root).settings.prompts.file_prefix == "charts_v2"

    keywords = set(task_ws.settings.partition.keywords)
    at.text_input(key="p_budgets").set_value("heat map=10").run()
    errors = [e.value.replace("\\", "") for e in at.error]
    assert len(errors) == 1 and "heat map" in errors[0] and "bar chart" in errors[0]
    assert Workspace.open(task_ws.root).settings.prompts.budgets == {}  # refused, not saved
    assert at.dataframe and set(at.dataframe[0].value["keyword"]) == keywords  # the plan stays
    kw = sorted(keywords)[0]
    at.text_input(key="p_budgets").set_value(f"{kw}=0").run()
    no_errors(at)
    assert Workspace.open(task_ws.root).settings.prompts.budgets == {kw: "0"}

    # the preview: the caption's number is the field's, within the chosen subgroup
    alloc = at.dataframe[0].value
    biggest = alloc.sort_values("prompts", ascending=False)["keyword"].iloc[0]
    assert alloc["prompts"].max() >= 3
    at.selectbox(key="pv_kw").set_value(biggest).run()
    at.number_input(key="pv_pos").set_value(3).run()
    no_errors(at)
    caption = next(c for c in _text(at).split("Prompt ")[1:] if "subgroup" in c)
    assert caption.startswith("3 of this subgroup"), caption


def test_the_estimate_prices_images_by_the_model_s_rule(task_ws: Workspace) -> None:
    at = app_test(task_ws).run()
    at.switch_page("pages/4_prompts.py").run()
    no_errors(at)

    def tokens() -> int:
        return int({m.label: m.value for m in at.metric}["Input tokens"].replace(",", ""))

    at.text_input(key="est_model").set_value("gpt-4o").run()
    four_o = tokens()
    assert "gpt-4o's rule: 85 + 170 per 512px tile" in _text(at)
    at.text_input(key="est_model").set_value("gpt-4o-mini").run()
    no_errors(at)
    assert tokens() > 10 * four_o  # ~33× per image; images are most of a request
    assert "gpt-4o-mini's rule: 2833 + 5667 per 512px tile" in _text(at)


@pytest.mark.parametrize(("model", "w", "h", "tokens"), [
    # OpenAI's own examples (Images and vision, "Calculating costs")
    ("gpt-4o", 1024, 1024, 765), ("gpt-4o-2024-08-06", 2048, 4096, 1105),
    ("gpt-4.1", 1024, 1024, 765), ("gpt-4.5-preview", 1024, 1024, 765),
    ("gpt-4o-mini", 1024, 1024, 2833 + 4 * 5667),
    ("o1", 1024, 1024, 75 + 4 * 150), ("gpt-5", 1024, 1024, 70 + 4 * 140),
    ("gpt-4.1-mini", 1024, 1024, 1659),  # 1024 patches × 1.62
    ("gpt-4.1-nano", 1800, 2400, 3572),  # 1452 patches (scaled to 1056×1408) × 2.46
    ("o4-mini", 1800, 2400, 2498),  # 1452 × 1.72
])
def test_image_tokens_follow_each_model_s_rule(model: str, w: int, h: int, tokens: int) -> None:
    assert image_token_rule(model).tokens(w, h) == tokens


def test_an_unknown_model_is_counted_by_the_default_rule_and_says_so() -> None:
    rule = image_token_rule("llava-1.6-local")
    assert rule.assumed and rule.tokens(1024, 1024) == 765 and "assumed" in rule.describe()


# -- 2. Start shows the new run; run names without a second timestamp


def test_new_run_names_carry_no_timestamp(tmp_path: Path) -> None:
    assert new_run_name("gen", tmp_path) == "gen"
    (tmp_path / "launches").mkdir()
    (tmp_path / "launches" / "gen.json").write_text("{}")
    (tmp_path / "launches" / "gen-2.json").write_text("{}")
    assert new_run_name("gen", tmp_path) == "gen-3"


@pytest.mark.slow
def test_start_shows_the_run_just_started(task_ws: Workspace, stub,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fixtures.llm import FAKE_KEY

    task_ws.settings.prompts.total_gen = 4
    task_ws.settings.endpoint.base_url = stub.url
    task_ws.save()
    at = app_test(task_ws).run()
    at.switch_page("pages/4_prompts.py").run()
    at.button(key="save_prompts").click().run()
    at.switch_page("pages/5_generate.py").run()
    no_errors(at)
    names = []
    for _ in range(2):
        at.button(key="FormSubmitter:launch_form-Start the run").click().run()
        no_errors(at)
        deadline = time.monotonic() + 90
        while any(i.alive for i in list_app_runs(task_ws.root)) and time.monotonic() < deadline:
            time.sleep(0.2)
        at.run()
        newest = list_app_runs(task_ws.root)[0]
        names.append(newest.name)
        shown = [m for m in markdown_strings(at) if "state:" in m]
        assert shown and shown[0].replace("\\", "").startswith(f"**{newest.name}**"), shown
        assert at.selectbox(key="run_select").value == newest.name
        assert not at.warning, [w.value for w in at.warning]
    assert names == ["gen", "gen-2"]
    for info in list_app_runs(task_ws.root):
        assert info.state == "finished", info.message
        assert re.fullmatch(r"gen(-2)?_\d{8}_\d{6}\.json", info.output.name), info.output.name
    assert FAKE_KEY  # (the key came from the environment: the stub fixture sets it)


# -- 4. Review shows this workspace's export; 5. the answer-length plot


def _generated(ws: Workspace, n_items: int = 12) -> Path:
    out = ws.generated_dir / "gen_20250101_000000.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n_items):
        q = f"What is the value of bar {i}?"
        for variant, answer in (("reasoning", " ".join(["word"] * (i * 9 + 3)) + " So 4."),
                                ("concise", "4")):
            samples.append({"id": len(samples), "image_1": "images/chart_0000.jpg",
                            "keyword": "bar chart", "prompt_idx": i, "icl_indices": [0],
                            "variant": variant, "conversations": [
                                {"from": "human", "value": f"<image>\n{q}"},
                                {"from": "gpt", "value": answer}]})
    out.write_text(json.dumps({"mode": "vqa", "dataset_description": "charts",
                               "len_samples": len(samples), "samples": samples}))
    return out


def test_review_shows_only_this_workspace_s_export_and_the_lengths_in_order(
        demo_ws: Workspace, app_home: Path) -> None:
    other = Workspace.open(app_home / "workspaces" / "other", create=True)
    elsewhere = other.exports_dir / "theirs.reviewed.llava.json"
    elsewhere.parent.mkdir(parents=True, exist_ok=True)
    elsewhere.write_text("[]")
    out = _generated(demo_ws)
    at = app_test(demo_ws)
    at.session_state["rv_last_export"] = (str(elsewhere), 7, "7 samples")  # exported over there
    at.run()
    at.switch_page("pages/6_review.py").run()
    no_errors(at)
    assert not any("theirs" in s.value for s in at.success)
    assert not at.get("download_button")

    at.button(key="rv_q_build").click().run()
    no_errors(at)
    report = json.loads((out.parent / "manifests" / f"{out.stem}.quality.json").read_text())
    hist = report["summary"]["answer_words"]["histogram"]
    assert sum(hist["counts"]) == 24  # every sample: 12 reasoning and 12 concise answers
    # no label cut off: a metric in a row of six holds about 16 characters
    assert all(len(m.label) <= 16 for m in at.metric), [m.label for m in at.metric]
    specs = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    lengths = next(s for s in specs if s.get("encoding", {}).get("x", {}).get("field") == "bin")
    assert lengths["encoding"]["x"]["sort"] == hist["bins"]  # "0", "1", "2", "3–4", … "500+"


# -- 7. a page link before the session's first run has finished


def test_a_page_run_without_the_app_s_setup_reruns_the_app() -> None:
    from streamlit.testing.v1 import AppTest

    script = """
import streamlit as st

from ui.state import NAV_FLAG, through_app


def page():
    if not st.session_state.get("_dropped"):
        st.session_state["_dropped"] = True
        st.session_state.pop(NAV_FLAG, None)  # as in a session whose first run was cut short
    through_app("page")
    st.write("page ran")


nav = st.navigation([st.Page(page, title="Page", default=True)])
st.session_state[NAV_FLAG] = True
nav.run()
"""
    at = AppTest.from_string(script, default_timeout=30).run()
    assert not at.exception, [e.value for e in at.exception]
    assert [m.value for m in at.markdown] == ["page ran"]


# -- 8. the small texts


def test_browser_users_are_not_told_about_resume_flags() -> None:
    from ui.safe import for_browser

    msg = for_browser("run cancelled; 3 of 8 prompts finished — continue with --resume "
                      "(run gen_20250101_000000)")
    assert "--resume" not in msg and "press Resume on the Generate page" in msg


def test_the_endpoint_is_named_as_the_check_reaches_it(demo_ws: Workspace,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert endpoint_label("") == "http://127.0.0.1:9/v1 (from $OPENAI_BASE_URL)"
    assert endpoint_label("http://x:1/v1") == "http://x:1/v1"
    at = app_test(demo_ws).run()
    no_errors(at)
    side = " ".join(c.value for c in at.sidebar.caption).replace("\\", "")
    assert "http://127.0.0.1:9/v1 (from $OPENAI_BASE_URL)" in side and "default URL" not in side
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert endpoint_label(None) == "https://api.openai.com/v1 (OpenAI's default URL)"


def test_an_offline_machine_is_warned_on_data_and_told_once_on_explore(
        demo_ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMINSTRUCT_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(demo_ws.root / "no_hf_cache"))
    at = app_test(demo_ws).run()
    at.text_input(key="clip_model").set_value("ViT-B-32:openai").run()
    assert Workspace.open(demo_ws.root).settings.partition.clip_model == "ViT-B-32:openai"
    warnings = [w.value.replace("\\", "") for w in at.warning]
    assert any("'ViT-B-32:openai' is not on this machine" in w for w in warnings), warnings
    at.switch_page("pages/2_explore.py").run()
    errors = [e.value.replace("\\", "") for e in at.error]
    assert errors and errors[0].startswith("CLIP model 'ViT-B-32:openai'")
    assert not any("CLIP model: CLIP model" in e for e in errors)


def test_the_zip_summary_stays_and_records_without_an_image_are_explained(app_home: Path) -> None:
    import io
    import zipfile

    from PIL import Image

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(2):
            img = io.BytesIO()
            Image.new("RGB", (32, 32), (40 * i, 90, 200)).save(img, "JPEG")
            zf.writestr(f"imgs/i{i}.jpg", img.getvalue())
    turns = [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Blue."}]
    records = [{"id": f"r{i}", "image": f"i{i}.jpg", "conversations": turns} for i in range(2)]
    records.append({"id": "text-only", "conversations": [{"from": "human", "value": "Hi?"},
                                                         {"from": "gpt", "value": "Hello."}]})
    data = json.dumps({"image_folder": "imgs", "samples": records}).encode()
    ws = Workspace.open(app_home / "workspaces" / "up", create=True)
    at = app_test(ws).run()
    at.file_uploader(key="up_data").upload("data.json", data, "application/json")
    at.file_uploader(key="up_images").upload("imgs.zip", buf.getvalue(), "application/zip")
    at.run()
    at.button(key="up_go").click().run()
    no_errors(at)
    infos = [i.value.replace("\\", "") for i in at.info]
    assert any(i.startswith("Reference images: 2 file(s)") for i in infos), infos  # not wiped
    m = {x.label: x.value for x in at.metric}
    assert m["Records loaded"] == "3"
    assert "1 of the 3 records loaded have no image" in _text(at)
