"""Nothing lost, nothing duplicated: kill -9 then --resume, torn log lines, pause and cancel
through the core API, and one process per run."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mminstruct.commands.generate import main
from mminstruct.errors import ConfigError
from mminstruct.generate import (GenerationConfig, RunControl, read_status, request_cancel,
                                 run_async)
from mminstruct.generate.runlog import iter_records, list_runs
from mminstruct.llm.client import EndpointConfig
from mminstruct.generate.manifest import manifest_path_for
from tests.fixtures.llm import gen_args, make_prompt_workspace, subprocess_env


def _out(capsys) -> Path:
    return Path(capsys.readouterr().out.strip().splitlines()[-1])


def _samples(path: Path) -> list[dict]:
    return json.loads(path.read_text())["samples"]


def test_kill_9_then_resume_loses_and_duplicates_nothing(stub, tmp_path: Path, capsys) -> None:
    n = 60
    stub.state.config.latency = 0.1
    ws = make_prompt_workspace(tmp_path, "vqa", n, min_gen=2,
                               behaviours={7: "429,ok", 20: "garbage", 33: "garbage!"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "mminstruct.data_generator",
         *gen_args(ws, stub, prefix="killed", concurrency=4)],
        env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log_path = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        runs = list_runs(ws.output_folder, "killed")
        if runs and runs[0].log_path.exists():
            log_path = runs[0].log_path
            if log_path.read_bytes().count(b"\n") >= 12:
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert log_path is not None
    logged = {r["prompt_idx"] for _, r in iter_records(log_path)}
    assert 12 <= len(logged) < n
    before = dict(stub.stats()["ids"])

    stub.state.config.latency = 0.0
    assert main(gen_args(ws, stub, "--resume", prefix="killed")) == 4  # prompt 33 failed for good
    resumed = _out(capsys)
    sent = {int(k) for k, v in stub.stats()["ids"].items() if v != before.get(k, 0)}
    assert sent == set(range(n)) - logged  # only the unfinished prompts were sent again
    records = [r for _, r in iter_records(log_path)]
    assert sorted(r["prompt_idx"] for r in records) == list(range(n))  # once each

    assert main(gen_args(ws, stub, prefix="clean")) == 4
    clean = _out(capsys)
    assert _samples(resumed) == _samples(clean)
    assert len(_samples(resumed)) == 2 * 2 * (n - 1) - 2  # prompt 33 failed, 20 gave 1 item
    m1 = json.loads(manifest_path_for(resumed).read_text())
    m2 = json.loads(manifest_path_for(clean).read_text())
    assert m1["counts"]["by_outcome"] == m2["counts"]["by_outcome"] == {"ok": n - 1,
                                                                        "bad_json": 1}


def test_a_torn_last_line_is_ignored_and_truncated(stub, tmp_path: Path, capsys) -> None:
    stub.state.config.quota_after = 4
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 8, min_gen=1)
    assert main(gen_args(ws, stub, concurrency=1)) == 3
    [run] = list_runs(ws.output_folder, "gen")
    with open(run.log_path, "ab") as f:
        f.write(b'{"prompt_idx": 5, "outcome": "ok", "items": [{"Q": "torn')
    assert sorted(r["prompt_idx"] for _, r in iter_records(run.log_path)) == [0, 1, 2, 3]
    stub.state.config.quota_after = None
    assert main(gen_args(ws, stub, "--resume", concurrency=1)) == 0
    out = _out(capsys)
    assert sorted(s["prompt_idx"] for s in _samples(out)) == list(range(8))
    lines = run.log_path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(x) for x in lines[:-1])


def test_a_resumed_run_sends_only_the_unfinished_prompts(stub, tmp_path: Path, capsys) -> None:
    # prompts 0-3 succeed, then the quota runs out: the run stops with 4-11 unfinished
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 12, min_gen=1)
    stub.state.config.quota_after = 4
    assert main(gen_args(ws, stub, concurrency=1)) == 3
    [run] = list_runs(ws.output_folder, "gen")
    finished = {r["prompt_idx"] for _, r in iter_records(run.log_path)}
    assert finished == {0, 1, 2, 3}
    before = stub.stats()
    stub.state.config.quota_after = None
    assert main(gen_args(ws, stub, "--resume", concurrency=2)) == 0
    after = stub.stats()
    sent = {int(k): v - before["ids"].get(k, 0) for k, v in after["ids"].items()
            if v != before["ids"].get(k, 0)}
    assert sent == {i: 1 for i in range(4, 12)}  # each unfinished prompt once, no finished one
    assert after["requests"] - before["requests"] == 8
    records = [r["prompt_idx"] for _, r in iter_records(run.log_path)]
    assert sorted(records) == list(range(12))  # once each
    out = _out(capsys)
    assert sorted(s["prompt_idx"] for s in _samples(out)) == list(range(12))


def _config(ws, stub, **kw) -> GenerationConfig:
    return GenerationConfig(
        input_folder=ws.input_folder, output_folder=ws.output_folder,
        prompt_file=ws.prompt_name, file_prefix="api",
        endpoint=EndpointConfig(base_url=stub.url), status_interval=0.05,
        retry_base_delay=0.01, retry_max_delay=0.05, **kw)


async def _until(cond, what: str, timeout: float = 60.0) -> None:
    """Poll ``cond`` (no fixed sleeps standing in for "long enough"), failing after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def test_pause_and_cancel_through_the_core_api(stub, tmp_path: Path) -> None:
    n = 40
    stub.state.config.latency = 0.05
    ws = make_prompt_workspace(tmp_path, "vqa_nr", n, min_gen=1)
    control = RunControl()
    seen: list = []

    async def scenario() -> tuple:
        task = asyncio.create_task(run_async(_config(ws, stub, concurrency=2), control=control,
                                             on_progress=seen.append))
        await _until(lambda: stub.stats()["requests"] >= 6, "6 requests")
        control.pause()

        def drained() -> bool:  # paused, every request the engine began has reached the server and ended
            st, srv = (seen[-1] if seen else None), stub.stats()
            return (st is not None and st.state == "paused" and st.requests == srv["requests"]
                    and srv["in_flight"] == 0)

        await _until(drained, "the run to report paused with every sent request answered")
        r1 = stub.stats()["requests"]
        await asyncio.sleep(0.3)  # were anything still sent, it would arrive within this
        r2 = stub.stats()["requests"]
        [run] = list_runs(ws.output_folder, "api")
        paused_status = read_status(run.path)
        control.unpause()
        await _until(lambda: stub.stats()["requests"] >= r2 + 6, "6 more requests after unpause")
        request_cancel(run.path)  # what another process (the app) would do
        result = await asyncio.wait_for(task, timeout=60)
        return r1, r2, paused_status, result, run

    r1, r2, paused_status, result, run = asyncio.run(scenario())
    assert r1 == r2  # nothing sent while paused
    assert paused_status["state"] == "paused"
    assert result.state == "cancelled" and "--resume" in result.message
    done = {r["prompt_idx"] for _, r in iter_records(run.log_path)}
    assert 6 <= len(done) < n
    assert read_status(run.path)["state"] == "cancelled"
    assert run.read_meta()["state"] == "cancelled"

    stub.state.config.latency = 0.0
    result = asyncio.run(run_async(_config(ws, stub, concurrency=4, resume=True)))
    assert result.state == "finished" and result.run_dir == run.path
    assert sorted(s["prompt_idx"] for s in _samples(result.output)) == list(range(n))
    assert not (run.path / "CANCEL").exists()
    final = read_status(run.path)
    assert final["state"] == "finished" and final["done"] == final["total"] == n


def test_one_process_per_run(stub, tmp_path: Path) -> None:
    stub.state.config.quota_after = 1
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 3, min_gen=1)
    result = asyncio.run(run_async(_config(ws, stub, concurrency=1)))
    assert result.state == "stopped"
    stub.state.config.quota_after = None
    fd = result_run_lock = list_runs(ws.output_folder, "api")[0].lock()
    try:
        with pytest.raises(ConfigError, match="being run by another process"):
            asyncio.run(run_async(_config(ws, stub, resume=True)))
    finally:
        import os

        os.close(fd)
    del result_run_lock
    assert asyncio.run(run_async(_config(ws, stub, resume=True))).state == "finished"
