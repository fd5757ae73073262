"""The README's promise: a fresh clone's tests pass with nothing beside it (no ``../shared``), also
under ``CI=true``. The clone is what ``git clone`` gives — the files git tracks (plus new files
not yet committed, so the check runs on the code under review) — in a folder with nothing beside
it; the tests that read fixtures run there with and without ``CI=true``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.fixtures.real import REQUIRE_SHARED

#: Every test module that reads the real-world fixtures (``real_fixtures``, ``shared_fixtures``,
#: ``fixture_tree``); ``test_every_fixture_user_is_listed`` keeps the list whole.
FIXTURE_TESTS = ("tests/test_formats.py", "tests/test_records_load.py", "tests/test_messages.py",
                 "tests/test_prompts.py")


def _clone(dest: Path) -> Path:
    """The repository's files as a clone has them: ``git ls-files`` (tracked and new, not ignored)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout.decode()
    dest.mkdir()
    for rel in filter(None, listed.split("\0")):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def _pytest(repo: Path, *tests: str, **env_extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"CI", "PYTHONPATH", REQUIRE_SHARED}}
    env.update(PYTHONPATH=str(repo), **env_extra)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests,
                           "tests/test_fresh_clone.py::test_copy_runs_its_own_code"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=600)


def test_copy_runs_its_own_code():
    # Run inside the copy: the code under test is the copy's, not an installed one.
    import mminstruct
    import tests
    assert Path(mminstruct.__file__).resolve().parents[1] == Path(tests.__file__).resolve().parents[1]


def test_every_fixture_user_is_listed():
    users = {f"tests/{p.name}" for p in (REPO / "tests").glob("test_*.py")
             if re.search(r"\b(real_fixtures|shared_fixtures|fixture_tree)\b", p.read_text())
             and p.name != "test_fresh_clone.py"}
    assert users <= set(FIXTURE_TESTS), sorted(users - set(FIXTURE_TESTS))


def _counts(out: str) -> dict[str, int]:
    return {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|errors?|skipped)", out)}


@pytest.mark.slow  # pytest subprocesses over the fixture tests, ~30 s on a busy 2-core machine
def test_fixture_tests_pass_in_a_fresh_clone_with_and_without_ci(tmp_path):
    repo = _clone(tmp_path / "clone")
    assert not (repo.parent / "shared").exists() and not (repo / ".venv").exists()
    for env in ({}, {"CI": "true"}):
        r = _pytest(repo, *FIXTURE_TESTS, **env)
        out = r.stdout + r.stderr
        counts = _counts(r.stdout.strip().splitlines()[-1] if r.stdout.strip() else out)
        assert r.returncode == 0, (env, out[-3000:])
        assert counts.get("passed", 0) >= 40 and counts.get("skipped", 0) >= 10, (env, counts)
        assert "failed" not in counts and "error" not in counts and "errors" not in counts
        assert "no shared fixtures at" in out  # the skips say why

    # A CI job that provides the originals asks for them, and then their absence fails.
    r = _pytest(repo, "tests/test_formats.py", CI="true", **{REQUIRE_SHARED: "1"})
    assert r.returncode == 1 and f"{REQUIRE_SHARED}=1 but the shared fixtures are not at" in r.stdout
