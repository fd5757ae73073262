"""Shared test setup. Fixtures live in tests/fixtures/*, one module a concern (loaded as plugins).

Fast tests run by default; ``--run-slow`` adds the slow (and ray) ones, ``--run-browser`` the
Playwright one, ``--all`` everything (what CI runs).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Keep every test on the CPU and off the network.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Explore loads the text model in a worker ahead of the first search (app.text_encoder.warm): off
# here, so that a page test starts no torch process it does not use (tests/test_app_memory.py
# turns it on to test it)
os.environ.setdefault("MMINSTRUCT_TEXT_WARMUP", "0")

pytest_plugins = [
    "tests.fixtures.images",
    "tests.fixtures.clip",
    "tests.fixtures.llm",
    "tests.fixtures.demo",
    "tests.fixtures.app",
    "tests.fixtures.real",
    "tests.fixtures.browser",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow / ray")
    parser.addoption("--run-browser", action="store_true", help="also run tests marked browser")
    parser.addoption("--all", action="store_true", help="run every test (slow, ray, browser)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_all = config.getoption("--all")
    run_slow = run_all or config.getoption("--run-slow")
    run_browser = run_all or config.getoption("--run-browser")
    skip_slow = pytest.mark.skip(reason="slow: run with --run-slow or --all")
    skip_browser = pytest.mark.skip(reason="browser: run with --run-browser or --all")
    for item in items:
        if "browser" in item.keywords and not run_browser:
            item.add_marker(skip_browser)
        elif ("slow" in item.keywords or "ray" in item.keywords) and not run_slow:
            item.add_marker(skip_slow)
