"""The judge (``python -m mminstruct.judge``) against a real local HTTP judge that scores by a rule
this test knows (``tests.openai_server``'s ``judge`` rule): planted bad samples (answers moved to
another image, objects in no image, questions of another task) score low, the others high."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from mminstruct.cache import file_sha256
from mminstruct.generate.runlog import iter_records, list_runs
from mminstruct.commands.judge import main
from mminstruct.quality.judge import EXIT_BUDGET, read_scores, summary_path
from mminstruct.quality.rubric import DEFAULT_RUBRIC, load_rubric
from tests.batch_server import BatchStubServer
from tests.fixtures.llm import FAKE_KEY, subprocess_env
from tests.make_quality_fixture import JudgeSet, make_judge_set
from tests.openai_server import StubConfig

FAST = ("--retry_base_delay", "0.01", "--retry_max_delay", "0.05", "--timeout", "10")


@pytest.fixture
def judge_set(tmp_path: Path) -> JudgeSet:
    return make_judge_set(tmp_path / "set")


@pytest.fixture
def judge_stub(stub, judge_set: JudgeSet):
    stub.state.config.judge = judge_set.rule
    return stub


def mark(js: JudgeSet, behaviours: dict[int, str] | None = None) -> None:
    """Put ``%%id:ID%%`` (the server counts requests per id) and ``%%stub:B%%`` markers into the
    questions of the generated file."""
    doc = json.loads(js.generated.read_text())
    for s in doc["samples"]:
        b = (behaviours or {}).get(s["id"])
        s["conversations"][0]["value"] += f" %%id:{s['id']}%%" + (f" %%stub:{b}%%" if b else "")
    js.generated.write_text(json.dumps(doc))


def args(js: JudgeSet, server, out: Path, *extra: str, concurrency: int = 4) -> list[str]:
    return ["--generated_file", str(js.generated), "--output", str(out), "--base_url",
            server.url, "--model_name", "gpt-4o-mini", "--concurrency", str(concurrency),
            *FAST, *extra]


def lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in out.read_text().splitlines()]


def summary(out: Path) -> dict:
    return json.loads(summary_path(out).read_text())


def run_log(js: JudgeSet, out: Path) -> list[dict]:
    [run] = list_runs(js.generated.parent, "judge_" + out.name.removesuffix(".jsonl"))
    return [r for _, r in iter_records(run.log_path)]


# ----------------------------------------------------------------------------------------------


def test_planted_samples_score_low_and_the_rest_high(judge_stub, judge_set, tmp_path, capsys):
    js = judge_set
    before = file_sha256(js.generated)
    out = tmp_path / "scores.jsonl"
    assert main(args(js, judge_stub, out, "--truth", str(js.truth))) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    got = lines(out)
    assert len(got) == js.n and len({g["id"] for g in got}) == js.n
    low = {g["id"] for g in got if g["overall"] < 3}
    assert low == js.bad
    for g in got:
        assert set(g["scores"]) == set(DEFAULT_RUBRIC.aspects) == set(g["rationale"])
        assert g["judge"] == {"model": "gpt-4o-mini", "rubric": DEFAULT_RUBRIC.hash}
        if g["id"] in js.bad:
            kind = js.kinds[g["id"]]
            if kind == "wrong_task":
                assert g["scores"]["task_fit"] == 1
            else:
                assert g["scores"]["visual_faithfulness"] == 1 and g["scores"]["task_fit"] == 5
                assert "not supported by the image" in g["rationale"]["visual_faithfulness"]
    s = summary(out)
    assert s["planted"] == {**s["planted"], "bad": len(js.bad), "good": js.n - len(js.bad),
                            "roc_auc": 1.0}
    assert s["judged"] == js.n and s["complete"] is True
    assert set(s["by_subgroup"]) == {g["keyword"] for g in got}
    assert "vqa/concise" in s["by_mode"] and s["tokens"]["input"] > 0 and s["cost_usd"] > 0
    # the request carried the image (downscaled JPEG) and the prompt's in-context examples
    body = judge_stub.state.recent[-1]
    user = body["messages"][1]["content"]
    assert user[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert "In-context examples" in user[1]["text"] and "Subgroup (task):" in user[1]["text"]
    assert file_sha256(js.generated) == before  # never modified


def test_max_cost_stops_early_and_resume_judges_each_sample_once(judge_stub, judge_set, tmp_path,
                                                                capsys):
    js = judge_set
    mark(js)
    out = tmp_path / "scores.jsonl"
    # about 700 input tokens a request at gpt-4o-mini prices: $0.002 buys about a dozen
    assert main(args(js, judge_stub, out, "--max_cost", "0.002")) == EXIT_BUDGET
    err = capsys.readouterr().err
    assert "cap" in err and "--resume" in err
    first = lines(out)
    assert 0 < len(first) < js.n
    s = summary(out)
    assert s["complete"] is False and s["cost_usd"] <= 0.002
    assert sum(judge_stub.stats()["ids"].values()) == len(first)  # nothing sent unrecorded

    # the cap counts what the run spent before: resuming under the same cap sends nothing
    sent = sum(judge_stub.stats()["ids"].values())
    assert main(args(js, judge_stub, out, "--resume", "--max_cost", "0.002")) == EXIT_BUDGET
    assert sum(judge_stub.stats()["ids"].values()) == sent and len(lines(out)) == len(first)
    assert main(args(js, judge_stub, out, "--resume", "--max_cost", "10")) == 0
    done = lines(out)
    assert len(done) == js.n and summary(out)["complete"] is True
    assert Counter(judge_stub.stats()["ids"].values()) == {1: js.n}  # no sample judged twice
    assert sorted(r["prompt_idx"] for r in run_log(js, out)) == list(range(js.n))


@pytest.mark.slow
def test_kill_9_mid_run_then_resume(stub, judge_set, tmp_path):
    js = judge_set
    mark(js)
    stub.state.config = StubConfig(judge=js.rule, latency=0.05)
    out = tmp_path / "scores.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "mminstruct.judge",
                             *args(js, stub, out, concurrency=2)],
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    runs = js.generated.parent / "generated_data" / "runs"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        logs = list(runs.glob("judge_scores_*/log.jsonl")) if runs.is_dir() else []
        if logs and len(logs[0].read_text().splitlines()) >= 10:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    killed_at = len(run_log(js, out))
    assert 10 <= killed_at < js.n and not out.exists()
    sent_before = sum(stub.stats()["ids"].values())
    stub.state.config.latency = 0
    done = subprocess.run([sys.executable, "-m", "mminstruct.judge",
                           *args(js, stub, out), "--resume"], env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(r["prompt_idx"] for r in run_log(js, out)) == list(range(js.n))  # once each
    assert len(lines(out)) == js.n
    # the resume sent only what the log lacked
    assert sum(stub.stats()["ids"].values()) - sent_before == js.n - killed_at
    assert FAKE_KEY not in done.stderr


def test_malformed_answers_are_repaired_or_recorded_unjudged(judge_stub, judge_set, tmp_path,
                                                             capsys):
    js = judge_set
    ids = sorted({i for i in range(js.n)} - js.bad)[:4]
    mark(js, {ids[0]: "malformed", ids[1]: "garbage", ids[2]: "garbage!", ids[3]: "fenced"})
    out = tmp_path / "scores.jsonl"
    assert main(args(js, judge_stub, out)) == 4  # finished, one sample failed for good
    got = {g["id"]: g for g in lines(out)}
    assert len(got) == js.n
    for i in (ids[0], ids[1], ids[3]):
        assert got[i]["overall"] == 5.0
    assert got[ids[2]]["scores"] is None and got[ids[2]]["error"] == "bad_json"
    log = {r["sample_id"]: r for r in run_log(js, out)}
    assert log[ids[1]]["fixes"] == 1 and log[ids[1]]["parse"] == "fixed"
    assert log[ids[0]]["fixes"] == 0
    s = summary(out)
    assert s["unjudged"] == 1 and s["unjudged_by_class"] == {"bad_json": 1}
    assert "1 prompt failed for good (1 bad_json)" in capsys.readouterr().err


def test_sample_is_stratified_per_subgroup_with_a_confidence_interval(judge_stub, judge_set,
                                                                      tmp_path):
    js = judge_set
    out = tmp_path / "s.jsonl"
    assert main(args(js, judge_stub, out, "--sample", "0.4")) == 0
    doc = json.loads(js.generated.read_text())
    per_kw = Counter(s["keyword"] for s in doc["samples"])
    got = Counter(g["keyword"] for g in lines(out))
    assert got == {k: max(1, math.ceil(0.4 * n)) for k, n in per_kw.items()}
    s = summary(out)
    lo, hi = s["overall"]["ci95"]
    assert lo < s["overall"]["mean"] < hi and s["samples_in_file"] == js.n


def test_repeat_reports_self_agreement(judge_stub, judge_set, tmp_path):
    js = judge_set
    out = tmp_path / "r.jsonl"
    assert main(args(js, judge_stub, out, "--repeat", "2", "--sample", "0.3")) == 0
    got = lines(out)
    assert all(len(g["repeats"]) == 2 for g in got)
    agreement = summary(out)["agreement"]
    assert set(agreement) == set(DEFAULT_RUBRIC.aspects)
    assert all(a["exact"] == 1.0 and a["within_1"] == 1.0 and a["pairs"] == len(got)
               for a in agreement.values())  # the rule is deterministic
    assert judge_stub.stats()["requests"] == 2 * len(got)


def test_batch_api_path(judge_set, tmp_path, monkeypatch, capsys):
    js = judge_set
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    with BatchStubServer(StubConfig(judge=js.rule)) as server:
        out = tmp_path / "b.jsonl"
        assert main(args(js, server, out, "--batch_api", "--batch_poll_seconds", "0.02",
                         "--batch_poll_max_seconds", "0.05")) == 0
        assert server.batches.stats()["batches"] == 1
    got = lines(out)
    assert {g["id"] for g in got if g["overall"] < 3} == js.bad and len(got) == js.n
    assert all(r["via"] == "batch_api" for r in run_log(js, out))
    # the batch's tokens are priced at the Batch API's discount
    s = summary(out)
    assert s["cost_usd"] < 0.15e-6 * s["tokens"]["input"] + 0.6e-6 * s["tokens"]["output"]


def test_dry_run_writes_the_requests_and_calls_nothing(judge_stub, judge_set, tmp_path, capsys):
    js = judge_set
    out = tmp_path / "d.jsonl"
    assert main(args(js, judge_stub, out, "--dry_run")) == 0
    batch = Path(capsys.readouterr().out.strip().splitlines()[-1])
    reqs = [json.loads(x) for x in batch.read_text().splitlines()]
    assert len(reqs) == js.n and judge_stub.stats()["requests"] == 0
    assert "on these aspects: visual_faithfulness" in reqs[0]["body"]["messages"][0]["content"]


@pytest.mark.parametrize("text,suffix,expect", [
    ("{", ".json", "not valid JSON"),
    ('{"aspects": {}}', ".json", "'aspects' must be a non-empty object"),
    ('{"aspects": {"Bad Name": "x"}}', ".json", "aspect name 'Bad Name'"),
    ('{"aspects": {"a": "x"}, "scale": [5, 1]}', ".json", "'scale' is [5, 1]"),
    ('{"aspects": {"a": "x"}, "overall": "median"}', ".json", "unknown overall 'median'"),
    ('{"aspects": {"a": "x"}, "colour": 1}', ".json", "unknown key 'colour'"),
    ("aspects: [unclosed", ".yaml", "not valid YAML"),
])
def test_rubric_file_errors_are_one_line(tmp_path, judge_set, capsys, text, suffix, expect):
    bad = tmp_path / f"rubric{suffix}"
    bad.write_text(text)
    rc = main(["--generated_file", str(judge_set.generated), "--output", str(tmp_path / "x.jsonl"),
               "--rubric", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith(f"error: rubric file {bad}: ") and expect in err[0]


def test_a_rubric_file_replaces_the_default(judge_stub, judge_set, tmp_path):
    js = judge_set
    rubric = tmp_path / "r.yaml"
    rubric.write_text("aspects:\n  visual_faithfulness: Only what the image shows.\n"
                      "  fluency: Reads well.\nscale: [0, 10]\noverall: min\n")
    r = load_rubric(rubric)
    out = tmp_path / "y.jsonl"
    assert main(args(js, judge_stub, out, "--rubric", str(rubric))) == 0
    got = lines(out)
    assert all(set(g["scores"]) == {"visual_faithfulness", "fluency"} for g in got)
    assert all(g["judge"]["rubric"] == r.hash != DEFAULT_RUBRIC.hash for g in got)
    bad = [g for g in got if g["id"] in js.bad and js.kinds[g["id"]] != "wrong_task"]
    assert bad and all(g["overall"] == 0 and g["scores"]["fluency"] == 10 for g in bad)
    assert summary(out)["aspects"]["fluency"]["distribution"]["10"] == len(got)


def test_read_scores_names_a_bad_line(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text('{"id": 1, "overall": 4}\nnot json\n')
    from mminstruct.errors import DataFileError

    with pytest.raises(DataFileError, match=r"s.jsonl: line 2 is not JSON"):
        read_scores(p)


def test_export_min_score_drops_exactly_the_planted_samples(judge_stub, judge_set, tmp_path,
                                                            capsys):
    from mminstruct.export.formats import main as export_main

    js = judge_set
    out = tmp_path / "scores.jsonl"
    assert main(args(js, judge_stub, out)) == 0
    dest = tmp_path / "export.json"
    assert export_main(["--generated_file", str(js.generated), "--format", "mmgen",
                        "--output", str(dest), "--scores", str(out), "--min_score", "3"]) == 0
    assert f"{len(js.bad)} sample(s) scored below 3 left out" in capsys.readouterr().err
    kept = {s["id"] for s in json.loads(dest.read_text())["samples"]}
    all_ids = {s["id"] for s in json.loads(js.generated.read_text())["samples"]}
    assert kept == all_ids - js.bad
    # --min_score without the scores: one line
    assert export_main(["--generated_file", str(js.generated), "--format", "mmgen", "--output",
                        str(tmp_path / "e2.json"), "--min_score", "3"]) == 2
    assert capsys.readouterr().err.strip() == "error: --min_score needs --scores (the judge's " \
                                              "scores file)"


@pytest.mark.slow
def test_the_app_launches_the_judge_as_a_background_run(judge_stub, judge_set, tmp_path):
    """The Generate page's "Judge a finished run": a detached run with the generation runs'
    status, its scores where Review looks, resumable like them."""
    import shutil

    from mminstruct.app.review import load_scores, scores_path_for
    from mminstruct.app.runs import judge_config, list_app_runs, run_info, start_run
    from mminstruct.app.workspace import Workspace

    js = judge_set
    ws = Workspace.open(tmp_path / "ws", create=True)
    ws.settings.endpoint.base_url = judge_stub.url
    ws.settings.endpoint.generator_model = "gpt-4o-mini"
    ws.save()
    ws.generated_dir.mkdir(parents=True, exist_ok=True)
    gen = ws.generated_dir / "run_20260101_000000.json"
    shutil.copy(js.generated, gen)
    cfg = judge_config(ws, gen, "judge_one", sample=0.5)
    info = start_run(ws.root, cfg, api_key=FAKE_KEY)
    assert info.record["kind"] == "judge"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and run_info(ws.root, "judge_one").state != "finished":
        time.sleep(0.1)
    info = run_info(ws.root, "judge_one")
    assert info.state == "finished", info.message
    assert info.status["done"] == info.status["total"] > 0 and info.status["mode"] == "judge"
    scores = load_scores(scores_path_for(gen))
    assert len(scores) == info.status["total"]
    assert [i.name for i in list_app_runs(ws.root)] == ["judge_one"]


def test_the_rubric_reads_what_judges_send_and_refuses_off_scale_scores():
    from mminstruct.llm.errors import BadJSONError, SchemaMismatchError

    r = DEFAULT_RUBRIC
    got = r.parse('Sure. {"scores": {"visual_faithfulness": "4", "correctness": 5.0, '
                  '"task_fit": {"score": 3, "rationale": "close"}}, '
                  '"rationale": {"visual_faithfulness": "ok", "correctness": "right"}}')
    assert got["scores"] == {"visual_faithfulness": 4, "correctness": 5, "task_fit": 3}
    assert got["overall"] == 4.0 and got["rationale"]["task_fit"] == "close"
    with pytest.raises(SchemaMismatchError, match="off the scale 1-5"):
        r.parse('{"scores": {"visual_faithfulness": 7, "correctness": 5, "task_fit": 5}}')
    with pytest.raises(SchemaMismatchError, match="no score for 'task_fit'"):
        r.parse('{"scores": {"visual_faithfulness": 3, "correctness": 5}}')
    with pytest.raises(BadJSONError):
        r.parse("I rate it highly.")


def test_the_quality_report_carries_the_score_distributions(judge_stub, judge_set, tmp_path):
    from mminstruct.quality.report import main as quality_main

    js = judge_set
    out = tmp_path / "scores.jsonl"
    assert main(args(js, judge_stub, out)) == 0
    rep = tmp_path / "q.json"
    assert quality_main(["--generated_file", str(js.generated), "--output", str(rep),
                         "--scores", str(out)]) == 0
    j = json.loads(rep.read_text())["summary"]["judge"]
    got = lines(out)
    assert j["all"]["judged"] == js.n
    assert sum(j["all"]["overall_counts"].values()) == js.n
    assert {k: v["judged"] for k, v in j["by_subgroup"].items()} == \
        dict(Counter(g["keyword"] for g in got))
    assert {k: v["judged"] for k, v in j["by_mode"].items()} == dict(Counter(g["mode"] for g in got))
    wrong = [g for g in got if g["id"] in js.bad and js.kinds[g["id"]] == "wrong_task"]
    assert j["by_mode"]["vqa"]["judged"] == len(wrong)  # the wrong-task samples have no variant
    assert j["by_mode"]["vqa"]["aspect_means"]["task_fit"] == 1.0
    assert j["judges"] == [{"model": "gpt-4o-mini", "rubric": DEFAULT_RUBRIC.hash}]
