"""The ``mminstruct`` command: ``--help`` lists the steps in pipeline order, every step's ``--help``
is its module's, and each step runs for real through the console script pip generates from
``pyproject.toml`` (installed with ``--target`` into a temporary folder), on the demo data against
the local OpenAI-compatible server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from mminstruct import commands
from mminstruct.commands import STEPS, main
from mminstruct.demo import DEMO_KEYWORDS, DEMO_MODEL
from tests.conftest import REPO
from tests.fixtures.llm import subprocess_env

ORDER = ["task", "prompts", "generate", "batch", "judge", "quality", "export", "merge", "app"]
MODULE_PROG = {"task": "mminstruct.task_file_generator", "prompts": "mminstruct.prompt_generator",
               "generate": "mminstruct.data_generator", "batch": "mminstruct.batch_data_generator",
               "judge": "mminstruct.judge", "quality": "mminstruct.quality",
               "export": "mminstruct.export", "merge": "mminstruct.batch_data_generator merge"}


def test_help_lists_the_steps_in_pipeline_order(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert listed == ORDER == [s.name for s in STEPS]
    assert main([]) == 2  # no step: the list, on stderr, and a usage exit status


def test_the_console_script_is_declared():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"mminstruct": "mminstruct.commands:main"}


@pytest.mark.parametrize("step", [s for s in ORDER if s != "app"])
def test_each_steps_help_is_its_modules(step, capsys):
    if not commands.BY_NAME[step].available:
        assert main([step, "--help"]) == 2
        assert "is not in this installation" in capsys.readouterr().err
        pytest.skip(f"{step}: its module is not in this branch yet")
    assert main([step, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m {MODULE_PROG[step]}")


def test_an_unknown_step_lists_the_steps(capsys):
    assert main(["generat"]) == 2
    err = capsys.readouterr().err
    assert "unknown step 'generat'; choose one of: task, prompts, generate" in err


# ---------------------------------------------------------------------------- the real script


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    """``mminstruct`` as pip installs it from this checkout's pyproject.toml (no dependencies;
    the code it runs is this checkout's, first on PYTHONPATH)."""
    src = tmp_path_factory.mktemp("src")
    shutil.copy(REPO / "pyproject.toml", src / "pyproject.toml")
    shutil.copytree(REPO / "mminstruct", src / "mminstruct",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    target = tmp_path_factory.mktemp("target")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--no-build-isolation", "--no-index", "--target", str(target), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    exe = target / "bin" / "mminstruct"
    assert exe.is_file() and os.access(exe, os.X_OK)
    return exe


def _env(tmp: Path) -> dict[str, str]:
    env = subprocess_env()
    env["MMINSTRUCT_CACHE_DIR"] = str(tmp / "cache")
    env["HF_DATASETS_CACHE"] = str(tmp / "hf_cache")
    return env


def _run(script: Path, *args: str, env: dict[str, str], cwd: Path = REPO) -> str:
    r = subprocess.run([str(script), *args], capture_output=True, text=True, env=env, cwd=cwd,
                       timeout=600)
    assert r.returncode == 0, (args[:2], r.stderr[-3000:])
    return r.stdout


@pytest.mark.slow  # one process per step (~2 s each)
def test_every_steps_help_through_the_console_script(script, tmp_path):
    env = _env(tmp_path)
    out = _run(script, "--help", env=env)
    assert [ln.split()[0] for ln in out.splitlines() if ln.startswith("  ")] == ORDER
    for step in ORDER:
        if not commands.BY_NAME[step].available:
            continue
        out = _run(script, step, "--help", env=env)
        assert "usage:" in out.lower(), step
        if step == "app":
            assert "streamlit run" in out.lower() or "--server.port" in out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # the demo CLIP, a pipeline of subprocesses, a Streamlit server: ~1 min
def test_one_real_run_of_every_step_through_the_console_script(script, tmp_path, stub):
    env = _env(tmp_path)
    ws = tmp_path / "ws"
    data_file = Path(subprocess.run(
        [sys.executable, "-m", "mminstruct.demo", "--output_folder", str(ws), "--n_reference", "16",
         "--n_candidates", "16", "--quiet"], capture_output=True, text=True, env=env, cwd=REPO,
        timeout=600, check=True).stdout.strip().splitlines()[-1])
    out = ws / "out"
    last = lambda s: s.strip().splitlines()[-1]  # noqa: E731  (each step prints its file last)

    task = Path(last(_run(script, "task", "--data_file", data_file.name, "--input_folder", str(ws),
                          "--candidate_folder", "pool", "--keywords", *DEMO_KEYWORDS,
                          "--model_name", DEMO_MODEL, "--output_folder", str(out),
                          "--output_prefix", "demo", "--gpu", "-1", env=env)))
    assert [sg["keyword"] for sg in json.loads(task.read_text())["subgroups"]] == list(DEMO_KEYWORDS)

    prompts = Path(last(_run(script, "prompts", "--task_desc", str(task.relative_to(ws)),
                             "--input_folder", str(ws), "--output_folder", str(ws),
                             "--file_prefix", "demo", "--total_gen", "8", "--mode", "vqa_nr",
                             "--num_icl_samples", "1", "--seed", "0", env=env)))
    n_prompts = len(json.loads(prompts.read_text())["prompts"])

    common = ["--input_folder", str(ws), "--output_folder", str(out), "--prompt_file", prompts.name,
              "--base_url", stub.url, "--concurrency", "4", "--timeout", "10"]
    generated = Path(last(_run(script, "generate", *common, "--file_prefix", "g", env=env)))
    assert json.loads(generated.read_text())["len_samples"] == n_prompts

    batch = Path(last(_run(script, "batch", *common, "--file_prefix", "b", "--num_parallel", "2",
                           env=env)))
    assert json.loads(batch.read_text())["len_samples"] == n_prompts

    est = json.loads(last(_run(script, "judge", "--generated_file", str(generated), "--output",
                               str(tmp_path / "g.scores.jsonl"), "--input_folder", str(ws),
                               "--base_url", stub.url, "--estimate_only", env=env)))
    assert est["requests"] == n_prompts and est["image_tokens"] > 0  # the judge's cost estimate

    report = tmp_path / "quality.json"
    _run(script, "quality", "--generated_file", str(generated), "--output", str(report), env=env)
    assert json.loads(report.read_text())["summary"]["samples"] == n_prompts

    hf_dir = tmp_path / "hf"
    assert Path(last(_run(script, "export", "--generated_file", str(generated), "--format", "hf",
                          "--output", str(hf_dir), env=env))) == hf_dir
    import datasets

    ds = datasets.load_dataset(str(hf_dir), split="train", cache_dir=str(tmp_path / "hfc"))
    assert len(ds) == n_prompts and ds[0]["image"] is not None

    merged = Path(last(_run(script, "merge", "--run_id", "b_shard", "--folder_path",
                            str(out / "generated_data"), "--output_folder", str(tmp_path / "m"),
                            env=env)))
    assert merged == tmp_path / "m" / "b_shard.json"
    assert len(json.loads(merged.read_text())["samples"]) == n_prompts

    # app: the Streamlit server comes up and answers its health check, then is stopped
    port = _free_port()
    proc = subprocess.Popen([str(script), "app", "--server.port", str(port),
                             "--server.headless", "true"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline, body = time.monotonic() + 120, ""
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health",
                                            timeout=2) as r:
                    body = r.read().decode()
                    break
            except OSError:
                time.sleep(0.5)
        assert body == "ok", proc.stdout.read().decode()[-2000:] if proc.poll() is not None else body
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
