"""Every error behaviour ends as a success or a recorded failure with its class; run-stopping
errors leave the rest for --resume; bad arguments are one line and a non-zero exit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mminstruct.commands.generate import main
from mminstruct.generate.runlog import iter_records, list_runs
from mminstruct.generate.manifest import manifest_path_for
from tests.fixtures.llm import FAKE_KEY, gen_args, make_prompt_workspace

# behaviour → (outcome, items or None); "ok" prompts give min_gen (2) items
CASES: dict[str, tuple[str, int | None]] = {
    "429,ok": ("ok", 2),
    "429": ("rate_limit", None),
    "500,ok": ("ok", 2),
    "503,503,ok": ("ok", 2),
    "500": ("server", None),
    "slow,ok": ("ok", 2),
    "slow": ("timeout", None),
    "drop,ok": ("ok", 2),
    "drop": ("connection", None),
    "malformed": ("ok", 2),
    "fenced": ("ok", 2),
    "prose": ("ok", 2),
    "object": ("ok", 1),
    "wrapped": ("ok", 2),
    "count=3": ("ok", 3),
    "garbage": ("ok", 1),
    "garbage!": ("bad_json", None),
    "missing_key": ("ok", 1),
    "missing_key!": ("schema_mismatch", None),
    "length": ("length", None),
    "refusal": ("refusal", None),
    "refusal_text": ("refusal", None),
    "filtered": ("content_filter", None),
    "content_filter": ("content_filter", None),
    "context_length": ("context_length", None),
    "image_rejected": ("image_rejected", None),
    "bad_request": ("bad_request", None),
}
BEHAVIOURS = list(CASES)


def _records(ws) -> dict[int, dict]:
    [run] = list_runs(ws.output_folder, "gen")
    recs: dict[int, dict] = {}
    for _, rec in iter_records(run.log_path):
        assert rec["prompt_idx"] not in recs, "one record per prompt"
        recs[rec["prompt_idx"]] = rec
    return recs


@pytest.mark.slow  # three 4-second timeouts in a row for the "slow" prompt
def test_every_behaviour_ends_as_success_or_recorded_failure(stub, tmp_path: Path,
                                                             capsys) -> None:
    # "slow" answers far past the timeout, and the timeout is far past what an ok answer takes on a
    # busy machine: no ok reply can turn into a timeout
    stub.state.config.slow_seconds = 30.0
    stub.state.config.retry_after = 0.3
    n = len(BEHAVIOURS) + 2
    ws = make_prompt_workspace(tmp_path, "vqa", n, min_gen=2,
                               behaviours=dict(enumerate(BEHAVIOURS)))
    # prompt n-2: its candidate image is missing; prompt n-1: not a prompt object at all
    pf = json.loads(ws.prompt_file.read_text())
    pf["prompts"][n - 2]["prompt"][-1] = "pool/missing.jpg"
    pf["prompts"][n - 1] = {"keyword": "k", "prompt": "not a list"}
    ws.prompt_file.write_text(json.dumps(pf))
    rc = main(gen_args(ws, stub, "--max_retries", "2", "--timeout", "4", concurrency=16))
    captured = capsys.readouterr()
    out = Path(captured.out.strip().splitlines()[-1])
    assert rc == 4  # finished, output written, some prompts failed for good
    assert "prompts failed for good (" in captured.err and "exit status 4" in captured.err
    recs = _records(ws)
    assert sorted(recs) == list(range(n))
    for i, b in enumerate(BEHAVIOURS):
        outcome, items = CASES[b]
        rec = recs[i]
        if outcome == "ok":
            assert rec["outcome"] == "ok", (b, rec)
            assert rec["n_items"] == items, b
        else:
            assert (rec["outcome"], rec["error_class"]) == ("failed", outcome), (b, rec)
            assert rec["message"]
    assert (recs[n - 2]["error_class"], recs[n - 1]["error_class"]) == ("image_error",
                                                                        "bad_prompt")
    assert "pool/missing.jpg" in recs[n - 2]["message"]
    assert str(n - 2) not in stub.stats()["ids"]  # nothing was sent for it
    # retries and fixes are counted per prompt
    by_b = {b: recs[i] for i, b in enumerate(BEHAVIOURS)}
    assert by_b["500"]["attempts"] == 3 and by_b["500"]["errors"] == {"server": 3}
    assert by_b["503,503,ok"]["retries"] == 2
    assert by_b["429,ok"]["seconds"] >= 0.3  # Retry-After honoured over the 0.01 s back-off
    assert by_b["garbage"]["fixes"] == 1 and by_b["garbage!"]["fixes"] == 1
    assert "raw" in by_b["garbage!"] and "probably blue" in by_b["garbage!"]["raw"]
    assert by_b["fenced"]["parse"] == "fenced" and by_b["malformed"]["parse"] == "repaired"
    # the manifest counts every outcome and every error
    manifest = json.loads(manifest_path_for(out).read_text())
    counts = manifest["counts"]
    expected: dict[str, int] = {}
    for outcome, _ in CASES.values():
        expected[outcome] = expected.get(outcome, 0) + 1
    expected["image_error"] = expected["bad_prompt"] = 1
    assert counts["by_outcome"] == dict(sorted(expected.items(), key=lambda kv: (
        kv[0] != "ok", kv[0])))
    assert counts["prompts"] == n and counts["succeeded"] == expected["ok"]
    assert counts["prompts_with_wrong_item_count"] == 4  # object, count=3, garbage, missing_key
    errors = manifest["errors_by_class"]
    assert errors["rate_limit"] == 1 + 3 and errors["server"] == 1 + 2 + 3
    assert errors["timeout"] == 1 + 3 and errors["connection"] == 1 + 3
    samples = json.loads(out.read_text())["samples"]
    ok_items = sum(r["n_items"] for r in recs.values() if r["outcome"] == "ok")
    assert len(samples) == 2 * ok_items


def test_quota_stops_the_run_and_resume_finishes_it(stub, tmp_path: Path, capsys) -> None:
    stub.state.config.quota_after = 3
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 10, min_gen=1)
    rc = main(gen_args(ws, stub, concurrency=1))
    err = capsys.readouterr().err
    assert rc == 3
    assert "quota" in err and "--resume" in err
    [run] = list_runs(ws.output_folder, "gen")
    assert run.read_meta()["state"] == "stopped"
    logged = [r for _, r in iter_records(run.log_path)]
    assert [r["prompt_idx"] for r in logged] == [0, 1, 2]  # the quota'd prompt is not recorded
    assert not list((ws.output_folder / "generated_data").glob("*.json"))
    stub.state.config.quota_after = None  # topped up
    stub.state.reset()
    rc = main(gen_args(ws, stub, "--resume", concurrency=1))
    out = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0
    assert sorted(map(int, stub.stats()["ids"])) == list(range(3, 10))  # only the rest re-sent
    data = json.loads(out.read_text())
    assert sorted(s["prompt_idx"] for s in data["samples"]) == list(range(10))
    assert out.name.startswith(f"gen_{run.stamp}")


@pytest.mark.parametrize("behaviour,words", [("auth", "authentication failed"),
                                             ("not_found", "not found")])
def test_auth_and_unknown_model_stop_the_run(behaviour, words, stub, tmp_path: Path,
                                             capsys) -> None:
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 4, min_gen=1, behaviours={0: behaviour})
    rc = main(gen_args(ws, stub, concurrency=1))
    err = capsys.readouterr().err
    assert rc == 3 and words in err
    assert FAKE_KEY not in err  # the 401 body echoes the key; it is redacted
    [run] = list_runs(ws.output_folder, "gen")
    assert [r for _, r in iter_records(run.log_path)] == []


def test_retry_failed_resends_transient_failures_of_a_finished_run(stub, tmp_path: Path,
                                                                   capsys) -> None:
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 4, min_gen=1, behaviours={1: "500,500,ok",
                                                                            2: "garbage!"})
    assert main(gen_args(ws, stub, "--max_retries", "1")) == 4  # prompts 1 and 2 failed
    first = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(json.loads(first.read_text())["samples"]) == 2
    before = dict(stub.stats()["ids"])
    assert main(gen_args(ws, stub, "--max_retries", "1", "--resume", "--retry_failed")) == 4
    out = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert out == first  # the same run, its output rewritten
    sent = {k: v - before.get(k, 0) for k, v in stub.stats()["ids"].items()
            if v != before.get(k, 0)}
    assert sent == {"1": 1}  # the server error is re-sent (and now succeeds); bad JSON is not
    data = json.loads(out.read_text())
    assert sorted(s["prompt_idx"] for s in data["samples"]) == [0, 1, 3]
    manifest = json.loads(manifest_path_for(out).read_text())
    assert manifest["counts"]["by_outcome"] == {"ok": 3, "bad_json": 1}


def test_dry_run_writes_batch_requests_and_calls_nothing(stub, tmp_path: Path, capsys) -> None:
    ws = make_prompt_workspace(tmp_path, "vqa", 5, min_gen=2)
    pf = json.loads(ws.prompt_file.read_text())
    pf["prompts"][3]["prompt"][-1] = "pool/missing.jpg"
    ws.prompt_file.write_text(json.dumps(pf))
    rc = main(gen_args(ws, stub, "--dry_run", "--max_tokens", "500"))
    out = capsys.readouterr()
    assert rc == 0
    batch = Path(out.out.strip().splitlines()[-1])
    assert batch.name.endswith(".batch.jsonl")
    lines = [json.loads(x) for x in batch.read_text().splitlines()]
    assert [x["custom_id"] for x in lines] == ["0", "1", "2", "4"]
    assert all(x["method"] == "POST" and x["url"] == "/v1/chat/completions" for x in lines)
    assert lines[0]["body"]["model"] == "gpt-4o" and lines[0]["body"]["max_tokens"] == 500
    assert stub.stats()["requests"] == 0
    sidecar = batch.parent / "manifests" / batch.name.replace(".batch.jsonl", ".batch.manifest.json")
    manifest = json.loads(sidecar.read_text())
    assert manifest["requests"] == 4 and manifest["skipped_prompts"][0]["prompt_idx"] == 3
    # the dry-run body is exactly what a real run sends
    assert main(gen_args(ws, stub, "--max_tokens", "500", "--num_prompts", "1",
                         concurrency=1)) == 0
    assert stub.state.recent[0] == lines[0]["body"]


@pytest.mark.parametrize("change,message", [
    (["--prompt_file", "nope.json"], "prompt file 'nope.json' not found"),
    (["--concurrency", "0"], "concurrency is 0"),
    (["--resume"], "no unfinished run"),
    (["--max_image_side", "4"], "max_image_side is 4"),
    (["--base_url", "localhost:8000"], "not an http(s) URL"),
])
def test_bad_arguments_are_one_line(change, message, stub, tmp_path: Path, capsys) -> None:
    ws = make_prompt_workspace(tmp_path, "vqa", 1)
    args = gen_args(ws, stub)
    for flag, value in zip(change[::2], change[1::2] or [None]):
        if value is None:
            args.append(flag)
        elif flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err


def test_no_key_without_a_local_server_is_one_line(stub, tmp_path: Path, capsys,
                                                   monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    ws = make_prompt_workspace(tmp_path, "vqa", 1)
    args = gen_args(ws, stub)
    i = args.index("--base_url")
    del args[i:i + 2]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "$OPENAI_API_KEY" in err
    assert not (ws.output_folder / "generated_data").exists()  # no run folder left behind


def test_resume_refuses_changed_parameters(stub, tmp_path: Path, capsys) -> None:
    stub.state.config.quota_after = 1
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 3, min_gen=1)
    assert main(gen_args(ws, stub, concurrency=1)) == 3
    stub.state.config.quota_after = None
    assert main(gen_args(ws, stub, "--resume", "--model_name", "other")) == 2
    err = capsys.readouterr().err
    assert "model_name was 'gpt-4o', now 'other'" in err
