"""The API key reaches the server and nothing else: no file the run wrote, no log line, no output
— even with --debug, and even when the server echoes the key back in an error."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from tests.fixtures.llm import FAKE_KEY, gen_args, make_prompt_workspace, subprocess_env

SECRET_PART = FAKE_KEY.split("SECRET-")[1]


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mminstruct.data_generator", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def _leaks(root: Path, *texts: str) -> list[str]:
    found = [f"output stream {i}" for i, t in enumerate(texts) if SECRET_PART in t]
    for f in root.rglob("*"):
        if f.is_file() and SECRET_PART.encode() in f.read_bytes():
            found.append(str(f))
    return found


def test_key_is_used_but_never_written(stub, tmp_path: Path) -> None:
    ws = make_prompt_workspace(tmp_path, "vqa", 6, min_gen=1,
                               behaviours={1: "429,ok", 2: "garbage", 3: "garbage!",
                                           4: "500,ok"})
    env = subprocess_env()
    done = _run(gen_args(ws, stub, "--debug"), env)
    assert done.returncode == 4, done.stderr  # prompt 3 failed for good
    assert "DEBUG" in done.stderr  # debug logging really was on
    # the key went to the server …
    assert hashlib.sha256(FAKE_KEY.encode()).hexdigest() in stub.stats()["key_sha256"]
    # … and a server that echoes it in a 401 body makes it reach error paths and logs too
    ws2 = make_prompt_workspace(tmp_path / "second", "vqa", 2, min_gen=1,
                                behaviours={0: "auth"})
    stopped = _run(gen_args(ws2, stub, "--debug", concurrency=1), env)
    assert stopped.returncode == 3
    assert "Incorrect API key provided" in stopped.stderr
    assert _leaks(tmp_path, done.stdout, done.stderr, stopped.stdout, stopped.stderr) == []


def test_azure_endpoint_with_key_from_the_environment(stub, tmp_path: Path) -> None:
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 2, min_gen=1)
    env = subprocess_env()
    del env["OPENAI_API_KEY"]
    env["AZURE_OPENAI_API_KEY"] = FAKE_KEY
    args = gen_args(ws, stub, "--model_name", "my-deployment")
    i = args.index("--base_url")
    args[i:i + 2] = ["--azure_endpoint_url", stub.base, "--api_version", "2024-10-21"]
    done = _run(args, env)
    assert done.returncode == 0, done.stderr
    stats = stub.stats()
    assert stats["paths"] == {"/openai/deployments/my-deployment/chat/completions": 2}
    assert hashlib.sha256(FAKE_KEY.encode()).hexdigest() in stats["key_sha256"]
    assert _leaks(tmp_path, done.stdout, done.stderr) == []
