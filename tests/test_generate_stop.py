"""How a run stops when the endpoint can never succeed, and the parameters a model family refuses.

* A wrong key (401, or a gateway's 400 saying the key is invalid) stops dispatch at once and cancels
  what is in flight: at most ``concurrency + 8`` requests, whatever the concurrency.
* An endpoint answering 5xx to everything stops after ``TRANSIENT_STOP_AFTER`` failed attempts
  (plus those in flight), not after every prompt has spent its retries.
* No ``_GatheringFuture exception was never retrieved`` at exit.
* o-series / GPT-5 bodies carry no ``temperature``; a 400 naming an unsupported parameter is
  retried once without it, with a warning.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mminstruct.commands.generate import EXIT_OK, EXIT_STOPPED, main
from mminstruct.generate.control import TRANSIENT_STOP_AFTER
from mminstruct.generate.runlog import list_runs
from mminstruct.llm.requests import request_body
from tests.conftest import REPO
from tests.fixtures.llm import FAKE_KEY, gen_args, make_prompt_workspace, subprocess_env


def _run_cli(ws, stub, *extra: str, concurrency: int) -> subprocess.CompletedProcess:
    """data_generator in its own process: what asyncio prints at exit is seen."""
    return subprocess.run([sys.executable, "-m", "mminstruct.data_generator",
                           *gen_args(ws, stub, *extra, concurrency=concurrency)],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize("behaviour", ["auth", "auth400"])
def test_a_wrong_key_at_concurrency_64_costs_at_most_72_requests(stub, tmp_path, behaviour):
    stub.state.config.default_behaviour = behaviour
    stub.state.config.latency = 0.05  # requests are in flight when the first 401 comes back
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 300, min_gen=1)
    r = _run_cli(ws, stub, concurrency=64)
    assert r.returncode == EXIT_STOPPED, r.stderr[-2000:]
    assert "authentication failed" in r.stderr and "--resume" in r.stderr
    assert stub.stats()["requests"] <= 64 + 8
    assert "never retrieved" not in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert FAKE_KEY not in r.stderr


def test_a_quota_stop_is_not_doomed_and_prints_no_traceback(stub, tmp_path):
    # Only a doomed stop skips the grace: a quota stop lets the requests in flight finish.
    stub.state.config.quota_after = 4
    stub.state.config.latency = 0.05
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 40, min_gen=1)
    r = _run_cli(ws, stub, concurrency=8)
    assert r.returncode == EXIT_STOPPED and "quota" in r.stderr
    assert "never retrieved" not in r.stderr


@pytest.mark.parametrize("concurrency", [2, 64])
def test_an_endpoint_failing_everything_with_500_stops_within_the_bound(stub, tmp_path, capsys,
                                                                        concurrency):
    stub.state.config.default_behaviour = "500"
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 200, min_gen=1)
    rc = main(gen_args(ws, stub, "--max_retries", "5", concurrency=concurrency))
    err = capsys.readouterr().err
    assert rc == EXIT_STOPPED
    assert f"{TRANSIENT_STOP_AFTER} requests failed and none succeeded" in err
    assert stub.stats()["requests"] <= TRANSIENT_STOP_AFTER + concurrency  # was 400+
    # Fixed: --resume sends every prompt and finishes.
    stub.state.config.default_behaviour = "ok"
    stub.state.reset()
    assert main(gen_args(ws, stub, "--resume", concurrency=concurrency)) == EXIT_OK
    assert sorted(map(int, stub.stats()["ids"])) == list(range(200))


def test_5xx_after_a_success_do_not_stop_the_run(stub, tmp_path, capsys):
    # The bound is for an endpoint that never answers: once one request succeeded, prompts spend
    # their own retries (here 30 prompts x 2 attempts of 500 > the bound).
    behaviours = {i: "500" for i in range(1, 31)}
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 31, min_gen=1, behaviours=behaviours)
    rc = main(gen_args(ws, stub, "--max_retries", "1", concurrency=1))
    assert rc != EXIT_STOPPED
    assert stub.stats()["requests"] == 1 + 30 * 2


@pytest.mark.parametrize("model", ["o1", "o3-mini", "o4-mini-2025-04-16", "gpt-5", "gpt-5-mini",
                                   "openai/o3", "azure/gpt-5-nano"])
def test_reasoning_models_get_no_temperature_or_top_p(model):
    body = request_body(model, [], temperature=0.7, top_p=0.9, max_tokens=100)
    assert "temperature" not in body and "top_p" not in body
    assert body["max_completion_tokens"] == 100 and "max_tokens" not in body


def test_other_models_keep_temperature():
    body = request_body("gpt-4o", [], temperature=0.7, top_p=0.9, max_tokens=100)
    assert body["temperature"] == 0.7 and body["top_p"] == 0.9 and body["max_tokens"] == 100


def test_request_bodies_for_o_series_carry_no_temperature(stub, tmp_path, capsys):
    stub.state.config.reject_params = ["temperature"]  # what OpenAI answers o3-mini
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 4, min_gen=1)
    rc = main(gen_args(ws, stub, "--model_name", "o3-mini", "--temperature", "0.7",
                       "--max_tokens", "500", concurrency=2))
    assert rc == EXIT_OK
    bodies = list(stub.state.recent)
    assert bodies and all("temperature" not in b for b in bodies)
    assert all(b["max_completion_tokens"] == 500 for b in bodies)
    assert stub.stats()["requests"] == 4
    assert "--temperature not sent: model 'o3-mini' does not take temperature" in capsys.readouterr().err


def test_a_400_naming_an_unsupported_parameter_is_retried_once_without_it(stub, tmp_path, capsys):
    stub.state.config.reject_params = ["temperature"]  # a model the name rule does not know
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 5, min_gen=1)
    rc = main(gen_args(ws, stub, "--model_name", "acme-reasoner", "--temperature", "0.2",
                       concurrency=1))
    err = capsys.readouterr().err
    assert rc == EXIT_OK
    assert stub.stats()["requests"] == 5 + 1  # the first prompt once more; the others never send it
    assert err.count("refused the parameter 'temperature'") == 1
    [run] = list_runs(ws.output_folder, "gen")
    recs = [json.loads(line) for line in run.log_path.read_text().splitlines()]
    assert all(r["outcome"] == "ok" for r in recs)


def test_a_400_for_another_reason_is_not_retried(stub, tmp_path, capsys):
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 3, min_gen=1, behaviours={0: "bad_request"})
    main(gen_args(ws, stub, "--temperature", "0.2", concurrency=1))
    assert stub.stats()["requests"] == 3
