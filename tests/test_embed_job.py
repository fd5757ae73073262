"""The workspace's background embedding job (mminstruct.app.embed) and its memory-mapped result:
started by Explore in a child process that survives a page switch and a new session (a reload),
progress in the sidebar, pause / cancel, resume after SIGKILL from the vector cache, a second start
refused (app and command line), the command line filling the cache ahead, and two sessions
reading one memory map. On the demo (24 reference charts, 48 candidates) with the tiny CLIP, fp32
(the precision check of ``auto`` is not what these test)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mminstruct.app import embed
from mminstruct.app.curation import load_embeddings, result_path
from mminstruct.app.embed import (JobOptions, JobRunning, cancel_job, job_paths, job_status,
                                  pause_job, run_job, start_job)
from mminstruct.app.workspace import Workspace
from mminstruct.embed.clip import open_cache, parse_model_spec
from mminstruct.embed.vectors import array_fingerprint
from tests.fixtures.app import DEMO_SIZE, REPO, app_test, no_errors
from ui.state import _EMBEDDINGS, forget_embeddings

N_REF, N_CAND = DEMO_SIZE
FP32 = JobOptions(precision="fp32", batch_size=8)


@pytest.fixture
def ws(demo_ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    demo_ws.settings.partition.projection = "pca"  # UMAP's first call compiles for ~15 s
    demo_ws.save()
    monkeypatch.setattr(embed, "DEFAULT_PRECISION", "fp32")
    forget_embeddings()
    return demo_ws


@pytest.fixture
def child_jobs(ws: Workspace, monkeypatch: pytest.MonkeyPatch):
    """The job in its own process, as the app starts it; every child still running at the end
    is killed (its process group: it was started in its own session)."""
    monkeypatch.setattr(embed, "_LAUNCH", embed._spawn)
    yield
    st = job_status(ws)
    if st.alive and st.pid:
        os.killpg(st.pid, signal.SIGKILL)


def _wait(cond: Callable[[], bool], timeout: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _cached_vectors(ws: Workspace) -> int:
    spec = parse_model_spec(ws.settings.partition.clip_model)
    return len(open_cache(ws.cache_dir, spec.identity(ws.cache_dir)).vectors)


def _metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _sidebar_text(at) -> str:
    return " ".join(str(getattr(e, "value", "")) for e in at.sidebar.markdown) + " " + \
        " ".join(str(e.value) for e in at.sidebar.caption)


# ----------------------------------------------------------------------------------------------
# Fast: the job in this process


def test_a_paused_then_cancelled_job_keeps_its_batches_and_the_next_run_resumes(ws: Workspace) -> None:
    paths = job_paths(ws)
    paths.folder.mkdir(parents=True, exist_ok=True)
    pause_job(ws)  # pauses after its first batch
    errors: list[BaseException] = []

    def go() -> None:
        try:
            run_job(ws, FP32, token="t1", handle_signals=False)
        except BaseException as e:  # noqa: BLE001 — the thread's outcome, checked below
            errors.append(e)

    t = threading.Thread(target=go)
    t.start()
    _wait(lambda: job_status(ws).state == "paused", what="the pause")
    st = job_status(ws)
    assert st.alive and st.done == 8 and st.total == N_REF + N_CAND
    with pytest.raises(JobRunning, match="already running"):
        start_job(ws, FP32)  # the lock is held: refused
    cancel_job(ws)
    t.join(60)
    assert len(errors) == 1 and isinstance(errors[0], embed.Cancelled)
    st = job_status(ws)
    assert (st.state, st.alive) == ("cancelled", False)
    assert _cached_vectors(ws) == 8  # the finished batch stays in the cache
    assert load_embeddings(ws) is None  # no result for the pages: nothing half-written
    res = run_job(ws, FP32, token="t2", handle_signals=False)
    assert (res["state"], res["n_cached"], res["n_computed"]) == ("finished", 8, N_REF + N_CAND - 8)
    assert job_status(ws).state == "finished"


def test_the_command_line_refuses_a_workspace_whose_job_runs(ws: Workspace, capsys) -> None:
    lock = embed._Lock(job_paths(ws).lock)
    assert lock.acquire()
    try:
        assert embed.main([str(ws.root), "--precision", "fp32"]) == 3
        assert "already running" in capsys.readouterr().err
    finally:
        lock.release()
    assert embed.main([str(ws.root), "--precision", "fp32"]) == 0
    assert load_embeddings(ws) is not None


def test_two_sessions_on_one_workspace_read_one_memory_map(ws: Workspace) -> None:
    run_job(ws, FP32, handle_signals=False)
    a, b = load_embeddings(ws), load_embeddings(ws)  # as two sessions of one server would
    assert a is not None and b is not None and a is not b
    assert isinstance(a.source, np.memmap) and a.source is b.source
    assert np.shares_memory(a.reference.vectors, b.reference.vectors)
    assert np.shares_memory(a.candidates.vectors, b.all_vectors)  # all_vectors is no copy
    # the file is named by its content and holds exactly the vectors the cache has
    vec_file = Path(a.source.filename)
    assert vec_file.parent == result_path(ws).parent
    assert vec_file.name == f"vectors-{array_fingerprint(np.load(vec_file))[:40]}.npy"
    # and through the app: two sessions, one copy in the server's memory
    first, second = app_test(ws).run(), app_test(ws).run()
    for at in (first, second):
        at.switch_page("pages/2_explore.py").run()
        no_errors(at)
    assert len(_EMBEDDINGS) == 1
    only = next(iter(_EMBEDDINGS.values()))
    assert Path(only.source.filename) == vec_file
    forget_embeddings()  # the workspace changes: the mapping is let go
    assert not _EMBEDDINGS


# ----------------------------------------------------------------------------------------------
# Slow: the job in a child process, as the app runs it


@pytest.mark.slow
def test_the_app_starts_the_job_which_survives_a_page_switch_and_a_reload(ws: Workspace,
                                                                         child_jobs) -> None:
    at = app_test(ws).run()
    at.switch_page("pages/2_explore.py").run()
    no_errors(at)
    pause_job(ws)  # holds the job after its first batch, so that it is seen running
    first = job_status(ws)
    assert first.alive and first.pid and first.pid != os.getpid()
    assert any("Embedding runs in the background" in i.value for i in at.info)
    assert not at.get("plotly_chart")  # the page did not embed in its own run
    _wait(lambda: job_status(ws).state == "paused", what="the first batch")
    side = app_test(ws).run()  # AppTest draws the sidebar on a session's first run
    bar = side.sidebar.get("progress")
    assert len(bar) == 1 and bar[0].proto.text.startswith(f"Embedding paused · {job_status(ws).done}")
    assert {b.label for b in side.sidebar.button} >= {"Continue", "Cancel"}
    at.switch_page("pages/1_data.py").run()  # another page: usable, and the job goes on
    no_errors(at)
    assert job_status(ws).pid == first.pid and job_status(ws).alive
    reload = app_test(ws).run()  # a new session, as after a browser reload
    reload.switch_page("pages/2_explore.py").run()
    no_errors(reload)
    again = job_status(ws)
    assert (again.token, again.pid, again.alive) == (first.token, first.pid, True)  # not restarted
    pause_job(ws, False)
    _wait(lambda: job_status(ws).state == "finished", what="the job's end")
    reload.run()
    no_errors(reload)
    assert _metrics(reload)["Embedded now / from cache"] == f"{N_REF + N_CAND} / 0"
    assert len(reload.get("plotly_chart")) == 1
    assert any((ws.cache_dir / "projections").glob("projection-pca-*.npy"))
    at.switch_page("pages/3_partition.py").run()
    no_errors(at)
    assert job_status(ws).token == first.token  # Partition read the result; no new job


@pytest.mark.slow
def test_cancel_then_embed_the_rest(ws: Workspace, child_jobs) -> None:
    at = app_test(ws).run()
    at.switch_page("pages/2_explore.py").run()
    pause_job(ws)
    _wait(lambda: job_status(ws).state == "paused", what="the first batch")
    side = app_test(ws).run()  # AppTest draws the sidebar on a session's first run
    assert side.sidebar.button(key="sb_embed_cancel").label == "Cancel"
    cancel_job(ws)  # what the button does (AppTest reruns no sidebar after its first run)
    _wait(lambda: not job_status(ws).alive, what="the cancel")
    assert job_status(ws).state == "cancelled"
    at.run()
    assert any("cancelled" in i.value for i in at.info)
    assert 0 < _cached_vectors(ws) < N_REF + N_CAND
    at.button(key="embed_retry").click().run()  # "Embed the rest": a new job
    _wait(lambda: job_status(ws).state == "finished", what="the second job")
    at.run()
    no_errors(at)
    assert len(at.get("plotly_chart")) == 1


@pytest.mark.slow
def test_a_killed_job_resumes_from_the_vectors_it_cached(ws: Workspace, child_jobs) -> None:
    start_job(ws, FP32)
    pause_job(ws)
    _wait(lambda: job_status(ws).state == "paused", what="the first batch")
    st = job_status(ws)
    done = st.done
    assert 0 < done < N_REF + N_CAND
    os.killpg(st.pid, signal.SIGKILL)
    _wait(lambda: not job_status(ws).alive, what="the kill")
    assert job_status(ws).state == "interrupted"
    assert _cached_vectors(ws) == done
    start_job(ws, FP32)  # the lock died with the process: a new start is allowed
    _wait(lambda: job_status(ws).state == "finished", what="the resumed job")
    ended = embed._read_json(job_paths(ws).exit)
    assert (ended["n_cached"], ended["n_computed"]) == (done, N_REF + N_CAND - done)
    assert load_embeddings(ws).n == N_REF + N_CAND


@pytest.mark.slow
def test_a_second_start_is_refused_by_the_app_and_the_command_line(ws: Workspace,
                                                                    child_jobs) -> None:
    start_job(ws, FP32)
    pause_job(ws)
    _wait(lambda: job_status(ws).state == "paused", what="the first batch")
    with pytest.raises(JobRunning, match="already running"):
        start_job(ws, FP32)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cli = subprocess.run([sys.executable, "-m", "mminstruct.app.embed", str(ws.root),
                          "--precision", "fp32"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert cli.returncode == 3 and "already running" in cli.stderr
    cancel_job(ws)
    pause_job(ws, False)
    _wait(lambda: not job_status(ws).alive, what="the cancel")


@pytest.mark.slow
def test_embed_ahead_on_the_command_line_then_the_app_only_reads(ws: Workspace,
                                                                 monkeypatch) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cli = subprocess.run([sys.executable, "-m", "mminstruct.app.embed", str(ws.root),
                          "--precision", "fp32"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert f"embedded {N_REF + N_CAND} images" in cli.stdout
    token = job_status(ws).token

    def no_job(*a, **k):
        raise AssertionError("the app started a job although the cache was filled")

    monkeypatch.setattr(embed, "_LAUNCH", no_job)
    at = app_test(ws).run()
    at.switch_page("pages/2_explore.py").run()
    no_errors(at)
    assert len(at.get("plotly_chart")) == 1
    assert job_status(ws).token == token


def test_the_workspaces_ray_address_goes_to_the_job_the_app_starts(
        demo_ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """Explore's "Ray cluster for the embedding job" field: the job the app starts (no options
    given) sends the pool there; empty, this machine's cores."""
    seen: list[JobOptions] = []
    monkeypatch.setattr(embed, "_LAUNCH", lambda ws, options, token, python: (
        seen.append(options), job_status(ws))[1])
    demo_ws.settings.partition.embed_ray_address = "127.0.0.1:6379"
    demo_ws.save()
    start_job(Workspace.open(demo_ws.root))
    assert seen[-1].ray_address == "127.0.0.1:6379"
    assert "--ray_address" in seen[-1].argv() and "127.0.0.1:6379" in seen[-1].argv()
    demo_ws.settings.partition.embed_ray_address = ""
    demo_ws.save()
    start_job(Workspace.open(demo_ws.root))
    assert seen[-1].ray_address is None and "--ray_address" not in seen[-1].argv()


def test_a_new_process_reads_the_jobs_result_without_decoding_an_image(
        ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """The job decoded every image; a server reading its result (after a restart) has the same
    records — the one whose image is broken left out, its problem listed. With the images that
    passed remembered (the job's check fills the workspace's ``ImageChecks``), that is the Data
    page's own parse, in which only the broken image is decoded again: one copy of the records
    for both pages. Without (an older workspace), a parse that checks no image, rebuilt from the
    job's check. An image broken since the job: not the job's records (its job runs again)."""
    from pathlib import Path

    from mminstruct.app.curation import load_workspace_data
    from mminstruct.data import records as records_mod

    data = load_workspace_data(ws)
    broken = data.image_path(data.records[2])
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    records_mod.forget_parsed()
    want = load_workspace_data(ws)  # as the job loads it: every image decoded
    assert len(want.records) == len(data.records) - 1
    run_job(ws, JobOptions(precision="fp32"), token="tok", handle_signals=False)

    def same(got) -> None:
        assert [r.index for r in got.records] == [r.index for r in want.records]
        assert [(p.index, p.reason) for p in got.report.problems] == \
            [(p.index, p.reason) for p in want.report.problems]

    records_mod.forget_parsed()  # a new server process: nothing parsed yet
    opened: list[str] = []
    real = records_mod.open_image
    monkeypatch.setattr(records_mod, "open_image",
                        lambda q, **k: opened.append(Path(q).name) or real(q, **k))
    emb = load_embeddings(ws)
    same(emb.data)
    assert opened == [broken.name]  # the failure only: a failure is never remembered
    assert emb.question(0) == want.records[emb.reference.sample_idx[0]].question
    assert load_workspace_data(ws) is emb.data and opened == [broken.name]  # the Data page's
    monkeypatch.undo()
    # an older workspace (no remembered checks): rebuilt from the job's check, nothing checked
    (ws.cache_dir / records_mod.ImageChecks.FILE).unlink()
    records_mod.forget_parsed()
    monkeypatch.setattr(records_mod, "check_image_paths",
                        lambda *a, **k: pytest.fail("an image was checked again"))
    same(load_embeddings(ws).data)
    monkeypatch.undo()
    # the Data page parsed it (decoded) in this process: that very object is used
    records_mod.forget_parsed()
    shown = load_workspace_data(ws)
    assert load_embeddings(ws).data is shown
    # another image broken since the job: these are not the job's records
    data.image_path(data.records[4]).write_bytes(b"broken too")
    records_mod.forget_parsed()
    assert load_embeddings(ws) is None
