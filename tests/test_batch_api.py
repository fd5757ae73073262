"""``--batch_api``: generation through the OpenAI Batch API against the local server's /v1/files and
/v1/batches (tests/batch_server.py) — the same output as online, files within the limits, expired
batches and failed lines resubmitted under a budget, failed and cancelled batches, kill -9 while
polling then --resume, Azure routing, and the key in no file and no log line."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mminstruct.commands.generate import main
from mminstruct.errors import ConfigError
from mminstruct.generate import GenerationConfig, run_async
from mminstruct.generate.batch_files import STATE_FILE, to_ranges
from mminstruct.generate.runlog import iter_records, list_runs
from mminstruct.llm.client import EndpointConfig
from mminstruct.generate.manifest import manifest_path_for
from tests.batch_server import BatchConfig, BatchStubServer
from tests.fixtures.llm import FAKE_KEY, gen_args, make_prompt_workspace, subprocess_env
from tests.openai_server import StubConfig

SECRET_PART = FAKE_KEY.split("SECRET-")[1]
FAST = ("--batch_api", "--batch_poll_seconds", "0.02", "--batch_poll_max_seconds", "0.05")


@pytest.fixture(scope="module")
def batch_server() -> BatchStubServer:
    server = BatchStubServer().start()
    yield server
    server.stop()


@pytest.fixture
def bstub(batch_server: BatchStubServer, monkeypatch: pytest.MonkeyPatch) -> BatchStubServer:
    """The server with fresh counters, files and batches; the fake key in the environment."""
    batch_server.state.config = StubConfig()
    batch_server.state.reset()
    batch_server.batches.reset()
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    return batch_server


def _last_line(capsys) -> Path:
    return Path(capsys.readouterr().out.strip().splitlines()[-1])


def _samples(path: Path) -> list[dict]:
    return json.loads(path.read_text())["samples"]


def _manifest(out: Path) -> dict:
    return json.loads(manifest_path_for(out).read_text())


def _records(ws, prefix: str) -> list[dict]:
    [run] = list_runs(ws.output_folder, prefix)
    return [r for _, r in iter_records(run.log_path)]


def _by_idx(records: list[dict]) -> dict[int, dict]:
    return {r["prompt_idx"]: r for r in records}


def _uploaded_lines(server: BatchStubServer) -> list[dict]:
    files = server.batches.files
    return [json.loads(x) for b in server.batches.batches.values()
            for x in files[b.input_file_id].data.decode().splitlines()]


# ----------------------------------------------------------------------------------------------


def test_batch_run_matches_the_online_engine_and_sends_the_dry_run_lines(
        bstub, tmp_path: Path, capsys) -> None:
    n = 6
    ws = make_prompt_workspace(tmp_path, "vqa", n, min_gen=2, behaviours={
        1: "fenced", 2: "garbage", 3: "refusal", 4: "context_length"})
    assert main(gen_args(ws, bstub, *FAST, prefix="batch")) == 4  # 3 and 4 fail for good
    batch_out = _last_line(capsys)
    assert bstub.batches.stats()["batches"] == 1
    assert main(gen_args(ws, bstub, prefix="online")) == 4
    online_out = _last_line(capsys)

    assert _samples(batch_out) == _samples(online_out)
    assert {s["prompt_idx"] for s in _samples(batch_out)} == {0, 1, 2, 5}
    mb, mo = _manifest(batch_out), _manifest(online_out)
    assert mb["counts"]["by_outcome"] == mo["counts"]["by_outcome"] == {
        "ok": 4, "refusal": 1, "context_length": 1}
    records = _by_idx(_records(ws, "batch"))
    assert sorted(records) == list(range(n))
    assert all(r["via"] == "batch_api" and r["batch"] for r in records.values())
    assert records[2]["fixes"] == 1 and records[2]["parse"] == "json"  # fixed online
    assert mb["batch_api"]["used"] is True and mb["batch_api"]["by_status"] == {"completed": 1}
    assert mb["parameters"]["batch_api"] is True
    cost = mb["cost"]
    assert cost["pricing"] == "batch_api" and cost["batch_tokens"]["input"] > 0
    assert cost["online_tokens"]["input"] > 0  # the format fix went online, at full price
    assert cost["usd"] < cost["usd_at_standard_prices"]

    # the uploaded file is exactly what --dry_run writes
    assert main(gen_args(ws, bstub, "--dry_run", prefix="dry")) == 0
    dry = Path(capsys.readouterr().out.strip().splitlines()[-1])
    [upload] = bstub.batches.batches.values()
    assert bstub.batches.files[upload.input_file_id].data == dry.read_bytes()


def test_every_answer_shape_gives_the_same_samples_online_and_through_the_batch_api(
        bstub, tmp_path: Path, capsys) -> None:
    """The same answer texts, read by the one parser (``RunJob.parse_answer``) from an online
    response and from a batch's output line, become the same records and samples — including
    the repairs and the format-fix calls (sent online in both)."""
    shapes = {0: "ok", 1: "prose", 2: "object", 3: "wrapped", 4: "malformed", 5: "count=1",
              6: "missing_key", 7: "garbage", 8: "refusal_text", 9: "garbage!"}
    ws = make_prompt_workspace(tmp_path, "vqa", len(shapes), min_gen=2, behaviours=shapes)
    assert main(gen_args(ws, bstub, *FAST, prefix="b")) == 4  # 8 and 9 fail
    batch_out = _last_line(capsys)
    assert main(gen_args(ws, bstub, prefix="o")) == 4
    online_out = _last_line(capsys)

    keys = ("outcome", "items", "n_items", "dropped", "parse", "fixes", "error_class")
    batch = {i: {k: r.get(k) for k in keys} for i, r in _by_idx(_records(ws, "b")).items()}
    online = {i: {k: r.get(k) for k in keys} for i, r in _by_idx(_records(ws, "o")).items()}
    assert batch == online
    assert [online[i]["parse"] for i in range(8)] == [
        "json", "prose", "json/object", "json/wrapped", "repaired", "json", "json", "json"]
    # the stub's fixed answers hold one item (a fix prompt asks for no count)
    assert [online[i]["n_items"] for i in range(8)] == [2, 2, 1, 2, 2, 1, 1, 1]
    assert (online[6]["fixes"], online[7]["fixes"]) == (1, 1)
    assert (online[8]["error_class"], online[9]["error_class"]) == ("refusal", "bad_json")
    assert _samples(batch_out) == _samples(online_out)
    assert len(_samples(online_out)) == 2 * 12  # vqa: two samples per item


def test_requests_are_split_within_the_request_and_byte_limits(bstub, tmp_path: Path,
                                                               capsys) -> None:
    n = 7
    ws = make_prompt_workspace(tmp_path, "vqa_nr", n, min_gen=1)
    bstub.batches.config.max_requests = 3  # the server refuses a bigger file
    assert main(gen_args(ws, bstub, *FAST, "--batch_max_requests", "3", prefix="n")) == 0
    out = _last_line(capsys)
    assert [u["lines"] for u in bstub.batches.stats()["uploads"]] == [3, 3, 1]
    assert sorted(int(x["custom_id"]) for x in _uploaded_lines(bstub)) == list(range(n))
    assert sorted({s["prompt_idx"] for s in _samples(out)}) == list(range(n))
    # --dry_run with the same limit writes the same three files
    assert main(gen_args(ws, bstub, "--dry_run", "--batch_max_requests", "3", prefix="dry")) == 0
    dry = [Path(x) for x in capsys.readouterr().out.split()]
    uploaded = [bstub.batches.files[b.input_file_id].data
                for b in bstub.batches.batches.values()]
    assert [f.read_bytes() for f in dry] == uploaded

    # requests of ~8.5 kB, and one of ~26 kB (prompt 6's 2000×1000 image), in 20 kB files
    bstub.batches.reset(BatchConfig(max_bytes=20_000))
    assert main(gen_args(ws, bstub, *FAST, "--batch_max_mb", str(20_000 / 2**20),
                         prefix="bytes")) == 4  # the one request over the file limit failed
    out = _last_line(capsys)
    uploads = bstub.batches.stats()["uploads"]
    assert [u["lines"] for u in uploads] == [2, 2, 2]
    assert all(10_000 < u["bytes"] <= 20_000 for u in uploads)
    assert set(bstub.batches.stats()["statuses"].values()) == {"completed"}
    assert sorted({s["prompt_idx"] for s in _samples(out)}) == list(range(6))
    big = _by_idx(_records(ws, "bytes"))[6]
    assert big["error_class"] == "bad_request" and "more than a batch file may hold" in \
        big["message"]


def test_an_expired_batch_keeps_its_results_and_resubmits_the_rest(bstub, tmp_path: Path,
                                                                  capsys) -> None:
    n = 5
    ws = make_prompt_workspace(tmp_path, "vqa", n, min_gen=2)
    bstub.batches.config.expire_after = {1: 2}  # the first batch runs 2 lines, then expires
    assert main(gen_args(ws, bstub, *FAST, prefix="exp")) == 0
    out = _last_line(capsys)
    stats = bstub.batches.stats()
    assert list(stats["statuses"].values()) == ["expired", "completed"]
    assert [u["lines"] for u in stats["uploads"]] == [5, 3]
    assert bstub.stats()["ids"] == {str(i): 1 for i in range(n)}  # every request ran once
    assert sorted({s["prompt_idx"] for s in _samples(out)}) == list(range(n))
    records = _by_idx(_records(ws, "exp"))
    assert len(_records(ws, "exp")) == n
    kept = [i for i, r in records.items() if r["attempts"] == 1]
    again = [i for i, r in records.items() if r["attempts"] == 2]
    assert len(kept) == 2 and len(again) == 3
    assert all(records[i]["errors"] == {"timeout": 1} for i in again)
    m = _manifest(out)
    assert m["batch_api"]["by_status"] == {"expired": 1, "completed": 1}
    assert m["batch_api"]["batches"][0]["recorded"] == {"ok": 2, "expired": 3}


def test_failed_lines_are_resubmitted_then_recorded_with_their_class(bstub, tmp_path: Path,
                                                                    capsys) -> None:
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 5, min_gen=1, behaviours={
        0: "500,ok", 1: "500", 2: "context_length", 3: "429,429,ok", 4: "drop,ok"})
    assert main(gen_args(ws, bstub, *FAST, "--batch_max_submits", "2", prefix="f")) == 4
    out = _last_line(capsys)
    records = _by_idx(_records(ws, "f"))
    assert len(_records(ws, "f")) == 5  # one record each, the final one
    assert records[0]["outcome"] == "ok" and records[0]["errors"] == {"server": 1}
    assert records[0]["attempts"] == 2
    assert records[1]["error_class"] == "server" and records[1]["errors"] == {"server": 2}
    assert records[2]["error_class"] == "context_length" and records[2]["attempts"] == 1
    assert records[3]["error_class"] == "rate_limit" and records[3]["attempts"] == 2
    assert records[4]["outcome"] == "ok"  # a line error object (server_error), then ok
    assert bstub.stats()["ids"] == {"0": 2, "1": 2, "2": 1, "3": 2, "4": 2}
    assert [u["lines"] for u in bstub.batches.stats()["uploads"]] == [5, 4]
    m = _manifest(out)
    assert m["counts"]["by_outcome"] == {"ok": 2, "server": 1, "context_length": 1,
                                         "rate_limit": 1}
    assert {s["prompt_idx"] for s in _samples(out)} == {0, 4}


def _config(ws, server, **kw) -> GenerationConfig:
    return GenerationConfig(
        input_folder=ws.input_folder, output_folder=ws.output_folder, prompt_file=ws.prompt_name,
        file_prefix=kw.pop("file_prefix", "api"), endpoint=kw.pop("endpoint", None)
        or EndpointConfig(base_url=server.url), batch_api=True, batch_poll_seconds=0.02,
        batch_poll_max_seconds=0.05, status_interval=0.05, retry_base_delay=0.01,
        retry_max_delay=0.05, **kw)


def test_failed_and_cancelled_batches_are_recorded_and_resumed(bstub, tmp_path: Path) -> None:
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 4, min_gen=1)
    # a batch refused for capacity: its prompts go into a new batch
    bstub.batches.config.fail = {1: "token_limit_exceeded"}
    result = asyncio.run(run_async(_config(ws, bstub, file_prefix="failed")))
    assert result.state == "finished"
    m = json.loads(result.manifest.read_text())["batch_api"]
    assert [b["status"] for b in m["batches"]] == ["failed", "completed"]
    assert m["batches"][0]["errors"][0]["code"] == "token_limit_exceeded"
    assert sorted({s["prompt_idx"] for s in _samples(result.output)}) == [0, 1, 2, 3]

    # a batch cancelled at the provider: the run ends cancelled; --resume submits it again
    bstub.batches.reset(BatchConfig(hold=True))

    async def cancel_at_provider() -> object:
        task = asyncio.create_task(run_async(_config(ws, bstub, file_prefix="cancel")))
        deadline = time.monotonic() + 60
        while bstub.batches.retrieves < 2:
            assert time.monotonic() < deadline, "the run did not poll its batch twice within 60 s"
            await asyncio.sleep(0.01)
        [bid] = bstub.batches.batches
        async with httpx.AsyncClient() as c:
            r = await c.post(f"{bstub.url}/batches/{bid}/cancel")
            assert r.json()["status"] == "cancelling"
        return await task

    result = asyncio.run(cancel_at_provider())
    assert result.state == "cancelled" and "--resume" in result.message
    state = json.loads((result.run_dir / STATE_FILE).read_text())
    assert [p["status"] for p in state["parts"]] == ["cancelled"]
    bstub.batches.config.hold = False
    result = asyncio.run(run_async(_config(ws, bstub, file_prefix="cancel", resume=True)))
    assert result.state == "finished" and result.run_dir is not None
    assert list(bstub.batches.stats()["statuses"].values()) == ["cancelled", "completed"]
    assert sorted({s["prompt_idx"] for s in _samples(result.output)}) == [0, 1, 2, 3]


def test_kill_9_while_polling_then_resume_creates_no_batch_twice(bstub, tmp_path: Path,
                                                                 capsys) -> None:
    n = 6
    ws = make_prompt_workspace(tmp_path, "vqa", n, min_gen=1, behaviours={4: "500,ok"})
    bstub.batches.config.hold = True  # batches stay in progress: the process keeps polling
    args = gen_args(ws, bstub, *FAST, "--batch_max_requests", "2", prefix="killed")
    proc = subprocess.Popen([sys.executable, "-m", "mminstruct.data_generator", *args],
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (bstub.batches.stats()["batches"] == 3
                                               and bstub.batches.retrieves >= 9):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert SECRET_PART not in stderr.decode()
    [run] = list_runs(ws.output_folder, "killed")
    assert list(iter_records(run.log_path)) == []  # nothing finished yet

    # online --resume would abandon the open batches: refused
    assert main(gen_args(ws, bstub, "--resume", prefix="killed")) == 2
    assert "resume it with --batch_api" in capsys.readouterr().err

    # and pretend the crash came between creating the third batch and recording its id
    state_path = run.path / STATE_FILE
    state = json.loads(state_path.read_text())
    state["parts"][2].update(batch_id=None, stage="uploaded", creating=True, status=None)
    state_path.write_text(json.dumps(state))

    bstub.batches.config.hold = False
    assert main(gen_args(ws, bstub, *FAST, "--resume", prefix="killed")) == 0
    out = _last_line(capsys)
    stats = bstub.batches.stats()
    assert stats["batches"] == 4  # the three of the first session + one for prompt 4's 500
    assert [u["lines"] for u in stats["uploads"]] == [2, 2, 2, 1]
    assert stats["lists"] >= 1  # the third batch was found, not created again
    records = [r for _, r in iter_records(run.log_path)]
    assert sorted(r["prompt_idx"] for r in records) == list(range(n))  # once each
    assert sorted({s["prompt_idx"] for s in _samples(out)}) == list(range(n))
    assert bstub.stats()["ids"] == {**{str(i): 1 for i in range(n)}, "4": 2}


def test_failed_file_and_batch_calls_are_retried_by_the_engines_rules(bstub, tmp_path: Path,
                                                                     capsys) -> None:
    """A 500 on the upload, a 429 on the batch's creation and a 503 on the download are each
    retried once (the engine's retry classes and back-off, ``Caller.retrying``); a 500 on a
    poll is classified alike and tried at the next poll. The run finishes as if nothing
    happened and the status counts the errors and retries."""
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 3, min_gen=1)
    bstub.batches.config.faults = {"upload": [500], "create": [429], "content": [503],
                                   "retrieve": [500]}
    assert main(gen_args(ws, bstub, *FAST, prefix="flaky")) == 0
    out = _last_line(capsys)
    calls = bstub.batches.stats()["calls"]
    assert (calls["upload"], calls["create"], calls["content"]) == (2, 2, 2)
    assert calls["list"] == 1  # before the creation's retry: was it made after all? (no)
    assert calls["retrieve"] >= 2
    assert bstub.batches.stats()["batches"] == 1 and len(bstub.batches.files) == 2
    assert sorted(s["prompt_idx"] for s in _samples(out)) == [0, 1, 2]
    session = _manifest(out)["last_session"]
    assert session["errors_by_class"] == {"server": 3, "rate_limit": 1}
    assert session["retries"] == 3  # the poll is not retried in place


def test_a_401_on_the_upload_stops_at_once_with_one_clear_message(bstub, tmp_path: Path,
                                                                  capsys) -> None:
    """auth is not retried (its rule stops the run): one upload, the message names the step and
    the class, the key is not in it, nothing is recorded, and --resume uploads the part."""
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 2, min_gen=1)
    bstub.batches.config.faults = {"upload": [401, 401, 401]}
    rc = main(gen_args(ws, bstub, *FAST, prefix="denied"))
    err = capsys.readouterr().err
    assert rc == 3
    assert bstub.batches.stats()["calls"] == {"upload": 1}
    assert "Batch API: cannot upload w01_p001: HTTP 401" in err
    assert "authentication failed" in err
    assert SECRET_PART not in err
    [run] = list_runs(ws.output_folder, "denied")
    assert list(iter_records(run.log_path)) == []
    assert [p["stage"] for p in json.loads((run.path / STATE_FILE).read_text())["parts"]] == \
        ["built"]
    bstub.batches.config.faults = {}
    assert main(gen_args(ws, bstub, *FAST, "--resume", prefix="denied")) == 0
    assert sorted(s["prompt_idx"] for s in _samples(_last_line(capsys))) == [0, 1]


def test_a_401_on_a_poll_stops_the_run_and_resume_polls_the_same_batch(bstub, tmp_path: Path,
                                                                       capsys) -> None:
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 2, min_gen=1)
    bstub.batches.config.faults = {"retrieve": [401]}
    assert main(gen_args(ws, bstub, *FAST, prefix="poll401")) == 3
    err = capsys.readouterr().err
    assert "authentication failed" in err and "still open at the provider" in err
    assert bstub.batches.stats()["calls"]["retrieve"] == 1  # not retried
    assert main(gen_args(ws, bstub, *FAST, "--resume", prefix="poll401")) == 0
    assert bstub.batches.stats()["batches"] == 1  # polled again, not resubmitted
    assert sorted(s["prompt_idx"] for s in _samples(_last_line(capsys))) == [0, 1]


def test_azure_batches_use_the_resource_routes_and_the_deployment(bstub, tmp_path: Path,
                                                                  monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", FAKE_KEY)
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 3, min_gen=1, behaviours={1: "garbage"})
    endpoint = EndpointConfig(azure_endpoint=bstub.base, azure_deployment="my-batch-dep",
                              api_version="2024-10-21")
    result = asyncio.run(run_async(_config(ws, bstub, endpoint=endpoint,
                                           generator_model="gpt-4o-mini")))
    assert result.state == "finished"
    assert bstub.batches.stats()["prefixes"].keys() == {"openai"}
    [batch] = bstub.batches.batches.values()
    assert batch.endpoint == "/chat/completions"
    lines = _uploaded_lines(bstub)
    assert {x["body"]["model"] for x in lines} == {"my-batch-dep"}
    assert {x["url"] for x in lines} == {"/chat/completions"}
    assert bstub.stats()["paths"].get("/openai/deployments/my-batch-dep/chat/completions") == 1
    assert sorted({s["prompt_idx"] for s in _samples(result.output)}) == [0, 1, 2]
    assert hashlib.sha256(FAKE_KEY.encode()).hexdigest() in bstub.stats()["key_sha256"]


def test_the_key_reaches_the_server_and_no_file_or_log_line(bstub, tmp_path: Path) -> None:
    ws = make_prompt_workspace(tmp_path, "vqa", 3, min_gen=1, behaviours={1: "auth"})
    args = gen_args(ws, bstub, *FAST, "--debug", prefix="secret")
    done = subprocess.run([sys.executable, "-m", "mminstruct.data_generator", *args],
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
    # the 401 line (whose body echoes the key) stops the run after its batch is recorded
    assert done.returncode == 3, done.stderr
    assert "Incorrect API key provided" in done.stderr and "DEBUG" in done.stderr
    assert hashlib.sha256(FAKE_KEY.encode()).hexdigest() in bstub.stats()["key_sha256"]
    [run] = list_runs(ws.output_folder, "secret")
    assert sorted(r["prompt_idx"] for _, r in iter_records(run.log_path)) == [0, 2]
    kept = list((run.path / "batches").glob("*.errors.jsonl"))  # --debug keeps the results
    assert kept and b"Incorrect API key provided" in kept[0].read_bytes()
    leaks = [str(f) for f in tmp_path.rglob("*")
             if f.is_file() and SECRET_PART.encode() in f.read_bytes()]
    assert leaks == [] and SECRET_PART not in done.stdout + done.stderr


def test_batch_data_generator_shards_through_the_batch_api(bstub, tmp_path: Path,
                                                          capsys) -> None:
    from mminstruct.commands.batch import main as batch_main

    ws = make_prompt_workspace(tmp_path, "vqa", 5, min_gen=1)
    args = gen_args(ws, bstub, *FAST, prefix="sh")
    args[args.index("--concurrency"):args.index("--concurrency") + 2] = ["--num_parallel", "2"]
    assert batch_main(args) == 0
    out = _last_line(capsys)
    assert bstub.batches.stats()["batches"] == 2  # one per shard
    assert sorted({s["prompt_idx"] for s in _samples(out)}) == list(range(5))
    m = _manifest(out)
    assert m["batch_api"] == {"used": True, "batches": 2, "waves": 1}
    cost = m["cost"]
    assert cost["batch_tokens"]["input"] == m["tokens"]["input"] > 0
    assert cost["usd"] == cost["usd_if_batch_api"] < cost["usd_at_standard_prices"]


def test_batch_settings_are_validated(tmp_path: Path, capsys) -> None:
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 1, min_gen=1)
    for bad, name in [({"batch_poll_seconds": 0}, "batch_poll_seconds"),
                      ({"batch_max_requests": 50_001}, "batch_max_requests"),
                      ({"batch_max_bytes": 300 * 2**20}, "batch_max_bytes"),
                      ({"batch_completion_window": "soon"}, "batch_completion_window"),
                      ({"batch_max_submits": 0}, "batch_max_submits")]:
        with pytest.raises(ConfigError, match=name):
            GenerationConfig(input_folder=ws.input_folder, output_folder=ws.output_folder,
                             prompt_file=ws.prompt_name, file_prefix="x", **bad)
    cfg = GenerationConfig(input_folder=ws.input_folder, output_folder=ws.output_folder,
                           prompt_file=ws.prompt_name, file_prefix="x", batch_poll_seconds=900)
    assert cfg.batch_poll_max_seconds == 900
    assert main(["--input_folder", str(ws.input_folder), "--prompt_file", ws.prompt_name,
                 "--file_prefix", "x", "--batch_api", "--batch_max_requests", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "batch_max_requests" in err[0] and "50000" in err[0]


def test_index_runs() -> None:
    assert to_ranges([]) == []
    assert to_ranges([0, 1, 2, 5, 7, 8]) == [[0, 3], [5, 6], [7, 9]]


def test_the_sharded_progress_line_counts_every_shards_prompts(bstub, tmp_path: Path,
                                                               capsys) -> None:
    # It said "11/11 prompts in 4 shards" for 42 prompts: the first shard's status alone.
    from mminstruct.commands.batch import main as batch_main

    ws = make_prompt_workspace(tmp_path, "vqa_nr", 42, min_gen=1)
    args = gen_args(ws, bstub, *FAST, prefix="pl")
    args[args.index("--concurrency"):args.index("--concurrency") + 2] = ["--num_parallel", "4"]
    assert batch_main(args) == 0
    lines = re.findall(r"^\d+/(\d+) prompts in 4 shards, ", capsys.readouterr().err, re.MULTILINE)
    assert lines and set(lines) == {"42"}, lines
