"""Promises about the package as a whole: what importing it costs, what a run without Ray imports,
and how the app server is exposed."""

from __future__ import annotations

import json
import pkgutil
import socket
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest

import mminstruct
from tests.fixtures.llm import gen_args, make_prompt_workspace, subprocess_env

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("ray", "streamlit", "torch", "open_clip", "umap", "faiss", "torchvision")


def _modules() -> list[str]:
    """Every module of the core, except the optional Ray layer and ``__main__`` entry points."""
    return sorted(m.name for m in pkgutil.walk_packages(mminstruct.__path__, "mminstruct.")
                  if not m.name.startswith("mminstruct.distributed.")
                  and not m.name.endswith("__main__"))


def _run_python(code: str, *args: str, timeout: float = 300) -> dict:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_every_core_module_loads_nothing_heavy() -> None:
    mods = _modules()
    assert "mminstruct.generate.engine" in mods and "mminstruct.clip" in mods
    found = _run_python("""
        import importlib, json, sys
        for name in sys.argv[1:]:
            importlib.import_module(name)
        heavy = %r
        print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(heavy))))
    """ % (HEAVY,), *mods)
    assert found == [], f"importing the core loaded {found}: import them inside the functions that use them"


@pytest.mark.slow
def test_a_generation_run_without_ray_address_never_imports_ray(stub, tmp_path: Path) -> None:
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 4, min_gen=1)
    result = _run_python("""
        import json, sys
        from mminstruct.data_generator import main
        rc = main(sys.argv[1:])
        print(json.dumps({"rc": rc, "ray": sorted(m for m in sys.modules if m.split('.')[0] == 'ray')}))
    """, *gen_args(ws, stub, concurrency=2))
    assert result == {"rc": 0, "ray": []}
    assert stub.stats()["successes"] == 4  # the run really went through the server


def test_streamlit_config_binds_loopback_with_xsrf_and_no_telemetry() -> None:
    cfg = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] == "127.0.0.1"
    assert cfg["server"]["enableXsrfProtection"] is True
    assert cfg["browser"]["gatherUsageStats"] is False


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of sockets listening on ``port`` (from /proc/net/tcp and tcp6)."""
    out = set()
    for name in ("tcp", "tcp6"):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, _remote, state = line.split()[1:4]
            addr, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                out.add(addr)
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net/tcp")
def test_the_app_server_listens_on_loopback_only(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**subprocess_env(), "MMINSTRUCT_HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        addrs: set[str] = set()
        while not addrs:
            assert proc.poll() is None, "streamlit exited"
            assert time.monotonic() < deadline, "streamlit did not listen within 90 s"
            time.sleep(0.2)
            addrs = _listening_addresses(port)
        # 0100007F is 127.0.0.1 (little-endian hex); 00000000 or :: would be every interface
        assert addrs == {"0100007F"}, addrs
    finally:
        proc.terminate()
        proc.wait(timeout=30)
