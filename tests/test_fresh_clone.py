"""The format tests pass from a copy of the repository with nothing beside it (no ``../shared``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")


def _copy_repo(dest: Path) -> Path:
    dest.mkdir()
    for name in ("mminstruct", "tests"):
        shutil.copytree(REPO / name, dest / name, ignore=_IGNORE)
    shutil.copy(REPO / "pyproject.toml", dest / "pyproject.toml")
    return dest


def _pytest(repo: Path, **env_extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"CI", "PYTHONPATH"}}
    env.update(PYTHONPATH=str(repo), **env_extra)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_formats.py", "tests/test_fresh_clone.py::test_copy_runs_its_own_code"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=300)


def test_copy_runs_its_own_code():
    # Run inside the copy: the code under test is the copy's, not an installed one.
    import mminstruct
    import tests
    assert Path(mminstruct.__file__).resolve().parents[1] == Path(tests.__file__).resolve().parents[1]


@pytest.mark.slow  # two pytest subprocesses, ~4 s each on a busy 2-core machine
def test_format_tests_pass_without_shared_fixtures(tmp_path):
    repo = _copy_repo(tmp_path / "clone")
    assert not (repo.parent / "shared").exists()
    r = _pytest(repo)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    passed = int(re.search(r"(\d+) passed", out).group(1))
    skipped = int(re.search(r"(\d+) skipped", out).group(1))
    assert passed >= 30 and skipped >= 10 and "failed" not in out and "error" not in out.lower()
    assert "no shared fixtures at" in out  # the skips say why

    # Under CI=true the shared-fixture half must run, so its absence fails.
    r = _pytest(repo, CI="true")
    assert r.returncode == 1 and "CI=true but the shared fixtures are not at" in r.stdout
