"""The workspace history (``mminstruct.app.history``): every save is an entry in words, undo and
restore bring back keywords, exclusions and budgets (a restore is an entry too), the command line
lists and restores, saves merge per field, a damaged ``workspace.json`` names its last good entry,
and a process killed during saves never leaves a workspace that fails to open."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from mminstruct.app import history
from mminstruct.app.workspace import SETTINGS_NAME, Workspace
from mminstruct.errors import ConfigError, DamagedWorkspaceError

REPO = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _curated(tmp_path: Path) -> Workspace:
    ws = Workspace.open(tmp_path / "ws", create=True)
    ws.page = "Partition"
    ws.set_keywords(["bar chart", "line chart"])
    ws.save()
    ws.settings.endpoint.concurrency = 16
    ws.save()
    return ws


def test_each_save_is_an_entry_in_words(tmp_path: Path) -> None:
    ws = _curated(tmp_path)
    ws.settings.endpoint.concurrency = 37
    ws.page = "Generate"
    ws.save()
    ws.set_keywords(["bar chart", "line chart", "heat map"])
    ws.set_excluded("reference", [3, 5])
    ws.settings.prompts.budgets = {"heat map": "25%"}
    ws.save()
    ws.save()  # nothing changed: no entry
    es = history.entries(ws.root)
    assert [e.id for e in es] == [1, 2, 3, 4, 5]
    assert es[0].changes == ["workspace created"]
    assert es[3].changes == ["concurrency 16 → 37"] and es[3].page == "Generate"
    assert es[4].changes == ["keywords: + heat map", "excluded_reference: + 3, 5",
                             "budgets: + heat map=25%"]
    assert es[1].page == "Partition"


def test_undo_and_restore_bring_back_keywords_exclusions_and_budgets(tmp_path: Path) -> None:
    ws = _curated(tmp_path)
    ws.set_keywords(["bar chart", "line chart", "heat map"])
    ws.set_excluded("reference", [3, 5])
    ws.settings.prompts.budgets = {"heat map": "25%"}
    ws.save()
    good = history.entries(ws.root)[-1].id
    ws.set_keywords(["pie"])  # a regretted edit: drops the budget too
    ws.set_excluded("reference", [3, 5], excluded=False)
    ws.save()
    assert Workspace.open(ws.root).settings.prompts.budgets == {}
    new, _ = history.undo(ws.root, page="test")
    s = Workspace.open(ws.root).settings
    assert s.partition.keywords == ["bar chart", "line chart", "heat map"]
    assert s.partition.excluded_reference == [3, 5]
    assert s.prompts.budgets == {"heat map": "25%"}
    assert new is not None and new.restores == good and new.changes[0].startswith(
        f"restored entry {good}")
    history.undo(ws.root)  # the undo is an entry: undoing it brings the regretted edit back
    assert Workspace.open(ws.root).settings.partition.keywords == ["pie"]
    history.restore(ws.root, 2)  # any entry
    assert Workspace.open(ws.root).settings.partition.keywords == ["bar chart", "line chart"]
    with pytest.raises(ConfigError, match="entry 99 .* does not exist"):
        history.restore(ws.root, 99)


def test_a_task_file_written_is_kept_and_restored(tmp_path: Path) -> None:
    ws = _curated(tmp_path)
    task = ws.tasks_dir / "task.json"
    task.parent.mkdir(parents=True)
    task.write_text('{"v": 1}')
    ws.settings.task_file = str(task)
    ws.save()
    first = history.entries(ws.root)[-1]
    assert "task.json written" in first.changes
    task.write_text('{"v": 2}')  # written again under the same name
    ws.settings.endpoint.concurrency = 3
    ws.save()
    assert "task.json written" in history.entries(ws.root)[-1].changes
    _, notes = history.restore(ws.root, first.id)
    assert task.read_text() == '{"v": 1}' and any("task.json put back" in n for n in notes)


def test_the_history_is_pruned_by_its_policy(tmp_path: Path) -> None:
    ws = _curated(tmp_path)
    for i in range(12):
        ws.settings.prompts.seed = i + 1
        ws.save()
    history.prune(ws.root, max_entries=5)
    es = history.entries(ws.root)
    assert len(es) == 5 and es[-1].changes == ["seed 11 → 12"]
    states = list((history.history_dir(ws.root) / "states").glob("*.json"))
    assert len(states) == len({e.state for e in es})
    history.restore(ws.root, es[0].id)  # the oldest kept entry still restores
    assert Workspace.open(ws.root).settings.prompts.seed == 8


def test_two_writers_editing_different_fields_both_keep_them(tmp_path: Path) -> None:
    ws = _curated(tmp_path)
    a, b = Workspace.open(ws.root), Workspace.open(ws.root)  # two tabs, one loaded state
    a.settings.endpoint.timeout = 99.0
    a.set_rejected("out.json", [1])
    b.settings.prompts.total_gen = 77
    b.set_rejected("other.json", [2])
    a.save()
    b.save()
    s = Workspace.open(ws.root).settings
    assert s.endpoint.timeout == 99.0 and s.prompts.total_gen == 77
    assert s.rejected == {"out.json": [1], "other.json": [2]}


def test_concurrent_savers_under_the_lock_lose_nothing(tmp_path: Path) -> None:
    ws = _curated(tmp_path)

    def edit(i: int) -> None:
        w = Workspace.open(ws.root)
        w.set_rejected(f"out{i}.json", [i])
        w.save()

    threads = [threading.Thread(target=edit, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(Workspace.open(ws.root).settings.rejected) == sorted(
        f"out{i}.json" for i in range(8))


def test_the_command_line_lists_and_restores(tmp_path: Path) -> None:
    ws = _curated(tmp_path)
    ws.set_keywords(["heat map"])
    ws.save()
    run = [sys.executable, "-m", "mminstruct.app.history", str(ws.root)]
    out = subprocess.run(run, env=_env(), capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert [ln.split("\t")[0] for ln in lines] == ["1", "2", "3", "4"]
    assert "keywords: + heat map − bar chart, line chart" in lines[-1]
    res = subprocess.run(run + ["--restore", "3"], env=_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert Workspace.open(ws.root).settings.partition.keywords == ["bar chart", "line chart"]
    assert "restored entry 3" in history.entries(ws.root)[-1].changes[0]
    bad = subprocess.run(run + ["--restore", "42"], env=_env(), capture_output=True, text=True)
    assert bad.returncode == 2 and "entry 42" in bad.stderr


def test_a_truncated_workspace_json_names_the_last_good_entry(tmp_path: Path) -> None:
    ws = _curated(tmp_path)
    path = ws.root / SETTINGS_NAME
    path.write_text(path.read_text()[:40])  # cut by hand
    with pytest.raises(DamagedWorkspaceError, match="damaged .*history entry 3") as info:
        Workspace.open(ws.root)
    assert info.value.last_good == 3
    history.restore(ws.root, info.value.last_good)
    assert Workspace.open(ws.root).settings.endpoint.concurrency == 16


SAVER = textwrap.dedent("""
    import sys
    from mminstruct.app.workspace import Workspace
    ws = Workspace.open(sys.argv[1])
    i = 0
    print("ready", flush=True)
    while True:
        i += 1
        ws.settings.prompts.seed = i
        ws.set_excluded("reference", range(i % 50))
        ws.save()
""")


def test_sigkill_during_saves_never_leaves_a_broken_workspace(tmp_path: Path) -> None:
    ws = _curated(tmp_path)
    for k in range(12):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(ws.root)], env=_env(),
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.05 + 0.03 * k)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        Workspace.open(ws.root)  # previous or new state, never a broken file
        json.loads((ws.root / SETTINGS_NAME).read_text())
        es = history.entries(ws.root)
        history.state_of(ws.root, es[-1])  # the newest entry restores
    assert history.entries(ws.root)[-1].id > 5
