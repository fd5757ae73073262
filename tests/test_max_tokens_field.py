"""o-series (and GPT-5) models take the token limit as max_completion_tokens, not max_tokens:
checked on the request bodies the local server received, and on the --dry_run Batch API lines."""

from __future__ import annotations

import json

import pytest

from mminstruct.commands.generate import main
from mminstruct.errors import ConfigError
from mminstruct.llm.requests import max_tokens_key, needs_max_completion_tokens, request_body
from tests.fixtures.llm import gen_args, make_prompt_workspace


@pytest.mark.parametrize("model,needs", [
    ("o1", True), ("o1-mini", True), ("o1-2024-12-17", True), ("o3", True), ("o3-mini", True),
    ("o4-mini", True), ("openai/o3-mini", True), ("azure/o1", True), ("gpt-5", True),
    ("gpt-5-mini", True), ("gpt-4o", False), ("gpt-4o-mini", False), ("gpt-4.1", False),
    ("llava-1.5", False), ("Qwen/Qwen2-VL-7B-Instruct", False), ("omni-model", False),
])
def test_which_models_need_max_completion_tokens(model, needs):
    assert needs_max_completion_tokens(model) is needs


def test_request_body_key():
    assert "max_tokens" in request_body("gpt-4o", [], max_tokens=5)
    body = request_body("o3-mini", [], max_tokens=5)
    assert body["max_completion_tokens"] == 5 and "max_tokens" not in body
    assert "max_tokens" in request_body("o3-mini", [], max_tokens=5, max_tokens_field="max_tokens")
    assert "max_completion_tokens" in request_body("my-deployment", [], max_tokens=5,
                                                   max_tokens_field="max_completion_tokens")
    assert set(request_body("o3", [])) == {"model", "messages"}  # no limit: no key
    with pytest.raises(ConfigError, match="unknown max_tokens_field 'max'; choose one of: auto, "
                                          "max_tokens, max_completion_tokens"):
        max_tokens_key("o3", "max")


@pytest.mark.parametrize("model,extra,key", [
    ("o4-mini", [], "max_completion_tokens"),
    ("gpt-4o", [], "max_tokens"),
    ("gpt-4o", ["--max_tokens_field", "max_completion_tokens"], "max_completion_tokens"),
    ("o3", ["--max_tokens_field", "max_tokens"], "max_tokens"),
])
def test_the_server_receives_the_right_key(stub, tmp_path, capsys, model, extra, key):
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 2, min_gen=1)
    assert main(gen_args(ws, stub, "--model_name", model, "--max_tokens", "700", *extra)) == 0
    bodies = list(stub.state.recent)
    assert len(bodies) == 2
    other = "max_tokens" if key == "max_completion_tokens" else "max_completion_tokens"
    assert all(b[key] == 700 and other not in b and b["model"] == model for b in bodies)


def test_dry_run_lines_use_the_same_key(stub, tmp_path, capsys):
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 2, min_gen=1)
    assert main(gen_args(ws, stub, "--model_name", "o1", "--max_tokens", "300", "--dry_run")) == 0
    files = capsys.readouterr().out.strip().splitlines()
    lines = [json.loads(x) for f in files for x in open(f, encoding="utf-8")]
    assert lines and all(x["body"]["max_completion_tokens"] == 300 and "max_tokens" not in x["body"]
                         for x in lines)


def test_bad_field_is_one_line(stub, tmp_path, capsys):
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 1, min_gen=1)
    with pytest.raises(SystemExit) as e:
        main(gen_args(ws, stub, "--max_tokens_field", "max"))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "invalid choice: 'max'" in err
