"""Prompts, Generate and Review through AppTest: the allocation and a prompt previewed as the
model receives it, the estimate, a background run against the local OpenAI-compatible server
(the key typed into the session, then found nowhere), pause / continue / cancel / resume from the
page, a dry run, rejections and the three exports; generated markup is shown as text."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mminstruct.app.curation import build_task, curate, embed_workspace, keyword_vectors, save_task
from mminstruct.generate.output import load_output
from mminstruct.llm.requests import generation_prompt, system_prompt
from mminstruct.data.modes import Mode
from mminstruct.app.runs import list_app_runs, run_info
from mminstruct.app.workspace import Workspace
from tests.fixtures.app import (app_test, live_markup, markdown_strings, no_errors, plain_strings,
                                walk)
from tests.fixtures.llm import FAKE_KEY

SECRET_PART = FAKE_KEY.split("SECRET-")[1]


@pytest.fixture
def task_ws(demo_ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """The demo workspace with a saved task file and small prompt settings; no key anywhere."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    emb = embed_workspace(demo_ws)
    cur = curate(demo_ws, emb, keyword_vectors(demo_ws, demo_ws.settings.partition.keywords))
    save_task(demo_ws, build_task(demo_ws, emb, cur))
    p = demo_ws.settings.prompts
    p.total_gen, p.min_gen_per_candidate, p.num_icl_samples, p.mode = 8, 1, 1, "vqa"
    demo_ws.save()
    return demo_ws


def _wait_run(ws: Workspace, pred, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        infos = list_app_runs(ws.root)
        if infos and pred(infos[0]):
            return infos[0]
        time.sleep(0.1)
    raise AssertionError(f"timed out: {[(i.name, i.state, i.status) for i in list_app_runs(ws.root)]}")


def _tree_text(at) -> str:
    return "\n".join(str(getattr(n, "proto", "")) for n in walk(at))


def test_prompts_page_previews_what_the_model_sees(task_ws: Workspace) -> None:
    at = app_test(task_ws).run()
    at.switch_page("pages/4_prompts.py").run()
    no_errors(at)
    alloc = at.dataframe[0].value
    assert alloc["prompts"].sum() >= 8 and set(alloc["keyword"]) == set(task_ws.settings.partition.keywords)
    texts = plain_strings(at)
    desc = json.loads(Path(task_ws.settings.data.data_file).read_text())["dataset_description"]
    assert system_prompt(Mode.VQA, desc) in texts  # the engine's own system prompt
    assert generation_prompt(Mode.VQA, 1) in texts
    assert any(t.startswith("Q: ") for t in texts)  # the in-context example's Q/A
    assert len(at.image) == 2  # one in-context image, then the candidate image
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Input tokens"].replace(",", "")) > 8 * 85  # at least an image each
    assert metrics["Cost (USD)"].startswith("$")  # gpt-4o is in the price table
    at.number_input(key="p_total").set_value(40).run()
    no_errors(at)
    assert Workspace.open(task_ws.root).settings.prompts.total_gen == 40
    assert at.dataframe[0].value["prompts"].sum() >= 40
    at.selectbox(key="pv_kw").set_value("pie chart").run()
    no_errors(at)
    at.button(key="save_prompts").click().run()
    no_errors(at)
    saved = Path(Workspace.open(task_ws.root).settings.prompt_file)
    assert saved.is_file() and len(json.loads(saved.read_text())["prompts"]) >= 40


def _to_generate(ws: Workspace, server, monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # the stub fixture sets it: type it instead
    at = app_test(ws).run()
    at.switch_page("pages/4_prompts.py").run()
    at.button(key="save_prompts").click().run()
    at.switch_page("pages/5_generate.py").run()
    no_errors(at)
    at.text_input(key="ep_base").set_value(server.url)
    at.text_input(key="ep_model").set_value("gpt-4o-mini")
    at.number_input(key="ep_conc").set_value(2)
    at.button(key="FormSubmitter:endpoint_form-Save endpoint settings").click().run()
    no_errors(at)
    at.text_input(key="key_input").set_value(FAKE_KEY)
    at.button(key="FormSubmitter:key_form-Use this key").click().run()
    no_errors(at)
    return at


def test_generate_review_and_export(task_ws: Workspace, stub,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    at = _to_generate(task_ws, stub, monkeypatch)
    assert "typed in this session" in " ".join(markdown_strings(at))
    at.button(key="FormSubmitter:launch_form-Start the run").click().run()
    no_errors(at)
    info = _wait_run(task_ws, lambda i: not i.alive)
    assert info.state == "finished", info.message
    at.run()
    no_errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["OK / failed"] == f"{info.status['total']} / 0"
    assert metrics["ETA"] == "—"
    shown = " ".join(s.value for s in at.success).replace("\\", "")
    assert f"Output: {info.output.resolve()}" in shown  # the whole path, not a bare file name
    table = at.dataframe[0].value
    assert list(table["state"]) == ["finished"]
    assert table["prompts"][0] == f"{info.status['total']} / {info.status['total']}"
    import hashlib
    assert hashlib.sha256(FAKE_KEY.encode()).hexdigest() in stub.stats()["key_sha256"]
    # the key: in no element sent to the browser, in no file of the workspace
    assert SECRET_PART not in _tree_text(at)
    assert [str(f) for f in task_ws.root.rglob("*") if f.is_file()
            and SECRET_PART.encode() in f.read_bytes()] == []
    # a dry run offers the Batch API file
    at.button(key="FormSubmitter:launch_form-Dry run: write the Batch API file").click().run()
    no_errors(at)
    assert at.get("download_button") and stub.stats()["requests"] == info.status["total"]

    at.switch_page("pages/6_review.py").run()
    no_errors(at)
    out = info.output
    data = load_output(out)
    n = len(data.samples)
    assert n == info.status["total"] * 2  # vqa: a reasoning and a concise sample per item
    first = data.samples[0]["id"]
    for value in (True, False, True):  # three edits in a row, each saved and kept
        at.toggle(key=f"rv_rej_{out.name}_{first}").set_value(value).run()
        no_errors(at)
        assert Workspace.open(task_ws.root).settings.rejected == ({out.name: [first]} if value
                                                                  else {})
        assert at.toggle(key=f"rv_rej_{out.name}_{first}").value is value
    at.selectbox(key="rv_show").set_value("rejected").run()
    assert sum(1 for t in plain_strings(at) if t.startswith("Q: ")) >= 1
    for fmt in ("llava", "sharegpt", "mmgen"):
        at.radio(key="rv_fmt").set_value(fmt).run()
        at.button(key="rv_export").click().run()
        no_errors(at)
        dest = task_ws.root / "exports" / f"{out.stem}.reviewed.{fmt}.json"
        exported = json.loads(dest.read_text())
        if fmt == "llava":
            assert len(exported) == n - 1 and "image" in exported[0] and "conversations" in exported[0]
            assert first not in {r["id"] for r in exported}
        elif fmt == "sharegpt":
            assert len(exported) == n - 1 and exported[0]["messages"][0]["role"] == "user"
            assert exported[0]["images"]
        else:
            assert exported["len_samples"] == n - 1 == len(exported["samples"])
    assert at.get("download_button")
    # the same export as the command line's hf: a folder datasets loads, its card's licence set here
    at.radio(key="rv_fmt").set_value("hf").run()
    at.text_input(key="rv_license").set_value("cc-by-4.0").run()
    at.button(key="rv_export").click().run()
    no_errors(at)
    folder = task_ws.root / "exports" / f"{out.stem}.reviewed.hf"
    assert "license: cc-by-4.0" in (folder / "README.md").read_text()
    assert any("hf upload" in c.value for c in at.code)
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset(str(folder), split="train", cache_dir=str(task_ws.root / "hfc"))
    assert len(ds) == n - 1 and ds[0]["image"] is not None


@pytest.mark.slow
def test_pause_continue_cancel_resume_from_the_page(task_ws: Workspace, stub,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    stub.state.config.latency = 0.4
    p = task_ws.settings.prompts
    p.total_gen = 24
    task_ws.save()
    at = _to_generate(task_ws, stub, monkeypatch)
    at.button(key="FormSubmitter:launch_form-Start the run").click().run()
    _wait_run(task_ws, lambda i: i.can_pause and i.status.get("done", 0) >= 1)
    at.run()
    at.button(key="run_pause").click().run()
    no_errors(at)
    paused = _wait_run(task_ws, lambda i: i.state == "paused")
    at.run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["ETA"] == "paused"  # not an estimate that grows while nothing is sent
    assert at.dataframe[0].value["state"][0] == "paused"  # the table agrees with the status
    assert paused.status.get("done", 0) >= 1
    at.button(key="run_continue").click().run()
    _wait_run(task_ws, lambda i: i.state == "running")
    at.run()
    at.button(key="run_cancel").click().run()
    cancelled = _wait_run(task_ws, lambda i: not i.alive)
    assert cancelled.state == "cancelled" and cancelled.status["done"] < cancelled.status["total"]
    stub.state.config.latency = 0.0
    at.run()
    at.button(key="run_resume").click().run()
    no_errors(at)
    done = _wait_run(task_ws, lambda i: not i.alive and i.state != "cancelled")
    assert done.state == "finished", done.message
    assert run_info(task_ws.root, done.name).status["ok"] == done.status["total"]


def test_generated_markup_is_shown_as_text(task_ws: Workspace) -> None:
    evil = "<script>alert('x')</script><img src=x onerror=alert(1)> :red[boo] [a](javascript:x)"
    out = task_ws.generated_dir / "evil_20250101_000000.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    sample = {"id": 0, "image_1": "images/chart_0000.jpg", "keyword": evil, "prompt_idx": 0,
              "icl_indices": [0], "conversations": [{"from": "human", "value": evil},
                                                   {"from": "gpt", "value": evil}]}
    out.write_text(json.dumps({"image_folder": "", "len_samples": 1, "start_idx": 0, "end_idx": 1,
                               "num_prompts": 1, "mode": evil, "model": evil,
                               "input_folder": task_ws.settings.data.input_folder,
                               "samples": [sample]}))
    at = app_test(task_ws).run()
    at.switch_page("pages/6_review.py").run()
    no_errors(at)
    assert live_markup(markdown_strings(at)) == []  # nothing a browser would turn into markup
    assert f"Q: {evil}" in plain_strings(at)
