"""Exit statuses a script can rely on, and the early stop when a run's first requests all fail alike."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mminstruct.commands import batch as bdg
from mminstruct.commands.generate import EXIT_CODES, EXIT_FAILED_PROMPTS, EXIT_STOPPED, main
from mminstruct.generate.job import EARLY_STOP_AFTER
from mminstruct.generate.runlog import iter_records, list_runs
from tests.conftest import REPO
from tests.fixtures.llm import FAKE_KEY, gen_args, make_prompt_workspace


def test_a_run_with_prompts_failed_for_good_exits_4_with_the_summary(stub, tmp_path: Path, capsys):
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 6, min_gen=1,
                               behaviours={1: "500", 4: "bad_request"})
    rc = main(gen_args(ws, stub, "--max_retries", "1", concurrency=2))
    out, err = capsys.readouterr()
    assert rc == EXIT_FAILED_PROMPTS == 4
    assert "4 prompts ok, 2 failed" in err
    assert "2 prompts failed for good (1 bad_request, 1 server)" in err or \
        "2 prompts failed for good (1 server, 1 bad_request)" in err
    assert Path(out.strip().splitlines()[-1]).is_file()  # the output is still written and named


def test_a_clean_run_exits_0(stub, tmp_path: Path, capsys):
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 3, min_gen=1)
    assert main(gen_args(ws, stub)) == 0
    assert "failed for good" not in capsys.readouterr().err


def test_sharded_run_with_failures_exits_4(stub, tmp_path: Path, capsys):
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 6, min_gen=1, behaviours={5: "bad_request"})
    assert bdg.main(gen_args(ws, stub, "--num_parallel", "2")) == EXIT_FAILED_PROMPTS
    assert "1 prompt failed for good (1 bad_request)" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["mminstruct.data_generator", "mminstruct.batch_data_generator"])
def test_help_lists_the_exit_codes(module):
    r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert r.returncode == 0
    for code in EXIT_CODES:
        assert f"\n  {code:<4}" in r.stdout
    assert "some prompts failed for good" in r.stdout


def test_readme_lists_the_exit_codes():
    readme = (REPO / "README.md").read_text()
    for code, what in EXIT_CODES.items():
        assert f"| {code} |" in readme, f"exit status {code} ({what}) missing from the README"


def test_first_requests_all_failing_alike_stop_the_run_with_the_server_answer(stub, tmp_path, capsys):
    """A LiteLLM proxy answers a wrong key with HTTP 400 "No connected db.": not an auth status, but
    every request fails the same way; the run stops after the first 8 instead of sending all 30."""
    stub.state.config.default_behaviour = "no_db"
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 30, min_gen=1)
    rc = main(gen_args(ws, stub, concurrency=2))
    err = capsys.readouterr().err
    assert rc == EXIT_STOPPED
    assert f"the first {EARLY_STOP_AFTER} requests all failed the same way" in err
    assert "HTTP 400" in err and "No connected db." in err and "--resume" in err
    assert FAKE_KEY not in err
    sent = stub.stats()["requests"]
    assert EARLY_STOP_AFTER <= sent <= EARLY_STOP_AFTER + 2  # the 2 in flight at most
    [run] = list_runs(ws.output_folder, "gen")
    meta = run.read_meta()
    assert meta["state"] == "stopped" and len(meta["resend"]) >= EARLY_STOP_AFTER
    assert not list((ws.output_folder / "generated_data").glob("gen_*.json"))

    # Fixed (the right key): --resume sends those prompts again with the rest, and finishes.
    stub.state.config.default_behaviour = "ok"
    stub.state.reset()
    rc = main(gen_args(ws, stub, "--resume", concurrency=2))
    out = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0
    assert sorted(map(int, stub.stats()["ids"])) == list(range(30))
    assert sorted(s["prompt_idx"] for s in json.loads(out.read_text())["samples"]) == list(range(30))


def test_no_early_stop_when_the_first_failures_differ_or_some_succeed(stub, tmp_path, capsys):
    # 10 failures of two statuses first, then successes: the run goes to the end (exit 4).
    behaviours = {i: ("bad_request" if i % 2 else "image_rejected") for i in range(10)}
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 14, min_gen=1, behaviours=behaviours)
    rc = main(gen_args(ws, stub, concurrency=1))
    assert rc == EXIT_FAILED_PROMPTS
    [run] = list_runs(ws.output_folder, "gen")
    assert len([r for _, r in iter_records(run.log_path)]) == 14
    # the same failure, but a success among the first 8: no early stop either
    stub.state.reset()
    ws = make_prompt_workspace(tmp_path / "b", "vqa_nr", 12, min_gen=1,
                               behaviours={i: "bad_request" for i in range(12) if i != 3})
    assert main(gen_args(ws, stub, concurrency=1)) == EXIT_FAILED_PROMPTS
    assert stub.stats()["requests"] == 12


def test_early_stop_counts_the_first_requests_of_all_shards(stub, tmp_path, capsys):
    stub.state.config.default_behaviour = "no_db"
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 40, min_gen=1)
    rc = bdg.main(gen_args(ws, stub, "--num_parallel", "4", concurrency=2))
    err = capsys.readouterr().err
    assert rc == EXIT_STOPPED and "No connected db." in err and "4 of 4 shard(s) unfinished" in err
    assert stub.stats()["requests"] <= EARLY_STOP_AFTER + 2  # not 8 per shard
    stub.state.config.default_behaviour = "ok"
    stub.state.reset()
    assert bdg.main(gen_args(ws, stub, "--num_parallel", "4", "--resume", concurrency=2)) == 0
    assert sorted(map(int, stub.stats()["ids"])) == list(range(40))


def test_a_server_that_is_down_stops_early_too(tmp_path, capsys, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 30, min_gen=1)
    args = ["--input_folder", str(ws.input_folder), "--output_folder", str(ws.output_folder),
            "--prompt_file", ws.prompt_name, "--file_prefix", "down", "--concurrency", "2",
            "--base_url", f"http://127.0.0.1:{port}/v1", "--max_retries", "0", "--timeout", "2"]
    assert main(args) == EXIT_STOPPED
    err = capsys.readouterr().err
    assert f"the first {EARLY_STOP_AFTER} requests all failed the same way: connection failed" in err
    [run] = list_runs(ws.output_folder, "down")
    assert len([r for _, r in iter_records(run.log_path)]) <= EARLY_STOP_AFTER + 2  # not all 30
