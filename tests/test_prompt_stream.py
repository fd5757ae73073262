"""The streamed prompt file (issue 20): ``write_prompts`` writes prompts as they are planned, and the
file is byte-for-byte the file the previous writer made (``plan_prompts`` → ``PromptFile.to_json``
→ ``json.dumps(…, ensure_ascii=False)``), for the demo and for a 10,000-prompt fixture.

Each fixture is checked two ways: against the in-memory (non-streamed) plan dumped as the old
writer dumped it, and against the SHA-256 of the file today's code path wrote before the streamed
writer existed (``GOLDEN``, recorded from commit 4eb26cf), so a change made to both paths at once
is caught too.
"""

from __future__ import annotations

import hashlib
import json
import random
from datetime import datetime
from pathlib import Path

import pytest

from mminstruct.demo.workspace import DESCRIPTION, KEYWORDS, candidate_name, reference_record
from mminstruct.data.formats import (PromptEntry, load_prompt_file, load_task_file, prompt_entry_text,
                                json_text, save_prompt_file)
from mminstruct.prompts.plan import PromptConfig, generate_prompt_file, plan_prompts, prepare_plan, write_prompts

NOW = datetime(2026, 12, 7, 3, 0, 0)

#: SHA-256 of the prompt file written by the previous (non-streamed) code path for each case.
GOLDEN = {
    "demo": "903b7e0a73165e70f83082388e461cfea531ed6703c589efd5d5cf8c596426e9",
    "10k": "9aa3a2c4819b243b328361bd98844a204f5a6cac7b6c52f5c7616a5aceab5cd3",
}


def demo_task(folder: Path) -> Path:
    """The demo's 150 reference records (text as the demo writes them) in 4 keyword subgroups,
    with 600 candidate names, as a task file."""
    samples = [reference_record(0, i) for i in range(150)]
    subgroups = [{"keyword": kw, "reference_sample_idx": [i for i in range(150) if i % 4 == n],
                  "candidate_image_paths": [f"pool/{candidate_name(j)}" for j in range(600)
                                            if j % 4 == n]}
                 for n, kw in enumerate(KEYWORDS)]
    path = folder / "demo_task.json"
    path.write_text(json.dumps({"image_folder": "images", "dataset_description": DESCRIPTION,
                                "subgroups": subgroups, "samples": samples}, ensure_ascii=False),
                    encoding="utf-8")
    return path


def big_task(folder: Path) -> Path:
    """400 samples with what makes encoding tricky: non-ASCII, quotes, backslashes, control
    characters, several images and image tokens, multi-turn, an invalid sample; 3 subgroups."""
    rng = random.Random(20)
    words = ["bar", "Größe", "über", "naïve", "中文", "emoji 🙂", 'say "hi"', "back\\slash",
             "tab\there", "line\nbreak", "\u2028sep", "ctrl\x01", "café", "<img>"]
    samples = []
    for i in range(400):
        n_img = 1 + (i % 3 == 0)
        turns = []
        for t in range(1 + i % 2):
            q = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + "?"
            if t == 0:
                q = ("<image>\n" * n_img) + q if i % 5 else q + " <image>" * n_img
            turns += [{"from": "human", "value": q},
                      {"from": "gpt", "value": " ".join(rng.choice(words) for _ in range(rng.randint(2, 20)))}]
        rec = {"id": f"s{i}", "conversations": turns}
        for k in range(n_img):
            rec[f"image_{k + 1}"] = f"imgs/é{i}_{k}.png"
        samples.append(rec)
    samples[17] = {"id": "bad", "conversations": []}
    subgroups = [{"keyword": kw, "reference_sample_idx": [i for i in range(400) if i % 3 == n],
                  "candidate_image_paths": [f"cands/c{n}_{j}.jpg" for j in range(50 + 30 * n)]}
                 for n, kw in enumerate(["bar chart", "pie «chart»", "line chart"])]
    path = folder / "big_task.json"
    path.write_text(json.dumps({"image_folder": "data/ünï", "dataset_description": "Tëst \"set\"",
                                "subgroups": subgroups, "samples": samples}, ensure_ascii=False),
                    encoding="utf-8")
    return path


CASES = {
    "demo": (demo_task, dict(total_gen=1000, num_icl_samples=2, mode="vqa", seed=0)),
    "10k": (big_task, dict(total_gen=10_000, num_icl_samples=3, mode="vqa", seed=7,
                           budgets="pie «chart»=25%")),
}


def _config(case: str, **over) -> PromptConfig:
    make, kw = CASES[case]
    return PromptConfig(task_desc=f"{case}_task.json".replace("10k", "big"), file_prefix=case,
                        **{"check_images": False, **kw, **over})


def _old_bytes(task, config) -> bytes:
    """The previous writer: the whole plan in memory, then one json.dumps (atomic_write_json)."""
    pf = plan_prompts(task, config, prepare_plan(task, config))
    return (json.dumps(pf.to_json(), indent=None, ensure_ascii=False) + "\n").encode("utf-8")


@pytest.mark.parametrize("case", list(CASES))
def test_streamed_prompt_file_is_byte_for_byte_the_previous_one(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # task_desc_path is relative: the bytes do not depend on tmp_path
    CASES[case][0](tmp_path)
    config = _config(case)
    task = load_task_file(config.task_desc_path)
    plan = prepare_plan(task, config)
    path, n = write_prompts(task, config, plan, tmp_path / "out", case, now=NOW)
    data = path.read_bytes()
    assert path.name == f"{case}_prompts_20261207_030000.json"
    assert n == len(json.loads(data)["prompts"]) == json.loads(data)["num_prompts"]
    assert data == _old_bytes(task, config)
    assert hashlib.sha256(data).hexdigest() == GOLDEN[case]


def test_cli_core_and_in_memory_writer_write_the_same_file(tmp_path, monkeypatch):
    """generate_prompt_file (the command line's core) and save_prompt_file of an in-memory plan."""
    monkeypatch.chdir(tmp_path)
    demo_task(tmp_path)
    config = _config("demo", output_folder=str(tmp_path / "cli"))
    result = generate_prompt_file(config)
    task = load_task_file(config.task_desc_path)
    pf = plan_prompts(task, config)
    saved = save_prompt_file(pf, tmp_path / "mem", "demo", now=NOW)
    assert result.path.read_bytes() == saved.read_bytes() == _old_bytes(task, config)
    assert result.n_prompts == len(pf.prompts) == len(load_prompt_file(result.path).prompts)


def test_entry_text_is_json_dumps_of_the_entry():
    for entry in (PromptEntry("kw «x»", ["Example 1", "a/b.jpg", 'Q: "q"\\\n A: \x01 🙂'], [3, 14]),
                  PromptEntry("", [], []), PromptEntry("k", ["only.png"], [])):
        text = prompt_entry_text(json_text(entry.keyword), [json_text(p) for p in entry.prompt],
                                 entry.icl_indices)
        assert text == json.dumps(entry.to_json(), ensure_ascii=False)


def test_a_failed_stream_leaves_no_file_and_keeps_the_previous(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    demo_task(tmp_path)
    config = _config("demo")
    task = load_task_file(config.task_desc_path)
    plan = prepare_plan(task, config)
    path, _ = write_prompts(task, config, plan, tmp_path / "out", "demo", now=NOW)
    before = path.read_bytes()
    plan.records.pop(plan.subgroups[1].icl_pool[0])  # planning fails part-way through the file
    with pytest.raises(KeyError):
        write_prompts(task, config, plan, tmp_path / "out", "demo", now=NOW)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_the_pages_lazy_views_are_the_plans_own_prompts(tmp_path, monkeypatch):
    """prompt_at (the preview), PlannedPrompts (a run for some subgroups) and estimate_plan
    (the estimate) draw the same prompts as the whole in-memory plan, without building it."""
    from mminstruct.app.preview import PlannedPrompts, estimate_plan, estimate_run, plan_size, prompt_at

    monkeypatch.chdir(tmp_path)
    demo_task(tmp_path)
    config = _config("demo", total_gen=300)
    task = load_task_file(config.task_desc_path)
    plan = prepare_plan(task, config)
    full = plan_prompts(task, config, plan)
    assert plan_size(plan) == len(full.prompts)
    starts, at = {}, 0
    for sp in plan.subgroups:
        starts[sp.keyword] = at
        at += sp.n_prompts
    for kw, pos in (("bar chart", 0), ("pie chart", 5), ("scatter plot", plan.subgroups[3].n_prompts - 1)):
        idx, entry = prompt_at(task, config, plan, kw, pos)
        assert idx == starts[kw] + pos and entry == full.prompts[idx]
    for i in (0, 77, len(full.prompts) - 1):
        assert prompt_at(task, config, plan, None, i) == (i, full.prompts[i])
    some = PlannedPrompts(task, config, plan).prompt_file(["line chart", "scatter plot"])
    assert some.prompts == [e for e in full.prompts if e.keyword in ("line chart", "scatter plot")]
    assert PlannedPrompts(task, config, plan).count(["line chart"]) == sum(
        e.keyword == "line chart" for e in full.prompts)
    assert estimate_plan(task, config, plan, tmp_path, "gpt-4o") == estimate_run(full, tmp_path, "gpt-4o")
    approx = estimate_plan(task, config, plan, tmp_path, "gpt-4o", sample=40)
    exact = estimate_run(full, tmp_path, "gpt-4o")
    assert not approx.exact and abs(approx.input_tokens - exact.input_tokens) < 0.1 * exact.input_tokens


def test_the_apps_background_save_writes_the_cli_bytes_and_records_the_file(tmp_path, monkeypatch):
    from mminstruct.app.preview import save_status, start_save
    from mminstruct.app.workspace import Workspace

    monkeypatch.chdir(tmp_path)
    demo_task(tmp_path)
    config = _config("demo")
    task = load_task_file(config.task_desc_path)
    plan = prepare_plan(task, config)
    ws = Workspace.open(tmp_path / "ws", create=True)
    ws.settings.prompts.file_prefix = "charts"
    ws.save()
    job = start_save(ws.root, task, config, plan)
    assert job.finished.wait(60) and job.error is None and save_status(ws.root) is job
    assert job.path.name.startswith("charts_prompts_") and job.written == 1002
    assert job.path.read_bytes() == _old_bytes(task, config)
    assert Workspace.open(ws.root).settings.prompt_file == str(job.path)


def test_prepare_plan_checks_each_image_once_across_settings_edits(tmp_path, monkeypatch):
    """The page keeps ``file_checks``: a second plan (another total_gen) stats no image again and
    decides the same."""
    from mminstruct.data.images import ImageRoot

    monkeypatch.chdir(tmp_path)
    demo_task(tmp_path)
    task = load_task_file("demo_task.json")
    for j in (j for j in range(600) if j % 8 < 4):  # half of each subgroup's candidates exist
        (tmp_path / "pool").mkdir(exist_ok=True)
        (tmp_path / "pool" / candidate_name(j)).write_bytes(b"x")
    (tmp_path / "images").mkdir()
    for i in range(150):
        (tmp_path / "images" / f"chart_{i:04d}.jpg").write_bytes(b"x")
    calls = []
    real = ImageRoot.resolve
    monkeypatch.setattr(ImageRoot, "resolve", lambda self, rel: calls.append(rel) or real(self, rel))
    checks: dict = {}
    cfg = _config("demo", check_images=True, input_folder=str(tmp_path))
    a = prepare_plan(task, cfg, checks)
    n = len(calls)
    assert n >= 150 + 600
    b = prepare_plan(task, _config("demo", check_images=True, input_folder=str(tmp_path),
                                   total_gen=5000), checks)
    assert len(calls) == n  # nothing statted again
    assert [s.candidates for s in a.subgroups] == [s.candidates for s in b.subgroups]
    assert len(a.missing_candidates) == 300 and b.missing_candidates == a.missing_candidates
    fresh = prepare_plan(task, cfg)
    assert [s.candidates for s in fresh.subgroups] == [s.candidates for s in a.subgroups]


def test_the_plans_image_check_decides_as_the_resolved_path_does(tmp_path):
    """``prepare_plan`` checks images with one ``lstat`` where it can (``ImageRoot``); what it
    decides for each path is what ``resolve_image_path(...).is_file()`` decides: a plain file, a
    folder named like an image, a missing file, a symlink inside, a symlink leaving the root, a
    folder that is a symlink leaving the root, ``..`` and an absolute path."""
    from mminstruct.data.formats import Subgroup, TaskFile
    from mminstruct.data.images import resolve_image_path
    from mminstruct.errors import InputError

    root, outside = tmp_path / "in", tmp_path / "out"
    (root / "pool" / "dir.jpg").mkdir(parents=True)
    outside.mkdir()
    (root / "pool" / "a.jpg").write_bytes(b"x")
    (outside / "o.jpg").write_bytes(b"x")
    (root / "pool" / "in.jpg").symlink_to(root / "pool" / "a.jpg")
    (root / "pool" / "out.jpg").symlink_to(outside / "o.jpg")
    (root / "away").symlink_to(outside)
    rels = ["pool/a.jpg", "pool/dir.jpg", "pool/none.jpg", "pool/in.jpg", "pool/out.jpg",
            "away/o.jpg", "pool/../pool/a.jpg", "../out/o.jpg", str(outside / "o.jpg"),
            "pool//a.jpg", "./pool/a.jpg"]
    task = TaskFile("images", "d", [Subgroup("k", [], rels)], [])
    for allow in (False, True):
        checks: dict = {}
        cfg = PromptConfig(task_desc="t.json", file_prefix="t", input_folder=str(root), mode="descript",
                           total_gen=1, check_images=True, allow_outside_paths=allow)
        plan = prepare_plan(task, cfg, checks)
        for rel in rels:
            try:
                want = resolve_image_path(root, rel, allow_outside=allow).is_file()
            except InputError as e:
                want = type(e)
            got = checks[rel] if isinstance(checks[rel], bool) else type(checks[rel])
            assert got == want, (rel, allow)
        kept = [r for r in rels if checks[r] is True]
        assert plan.subgroups[0].candidates == kept
        assert ("pool/out.jpg" in kept) is allow and "pool/a.jpg" in kept


def test_a_kept_parse_of_the_task_file_gives_the_same_plan_and_stays_unchanged(
        tmp_path, monkeypatch):
    """``parsed``: the app keeps ``task_records(task)`` per task file, so a settings edit parses
    no sample again; the plan is the one a fresh parse gives, and the kept parse is not changed
    when samples are left out for a missing image."""
    import mminstruct.prompts.plan as plan_mod
    from mminstruct.data.formats import task_records

    monkeypatch.chdir(tmp_path)
    demo_task(tmp_path)
    task = load_task_file("demo_task.json")
    (tmp_path / "images").mkdir()
    there = [i for i in range(150) if i % 8 < 4]  # half of each subgroup's images: the rest are
    for i in there:                                # left out
        (tmp_path / "images" / f"chart_{i:04d}.jpg").write_bytes(b"x")
    parsed = task_records(task)
    before = (dict(parsed[0]), list(parsed[1]))
    calls = []
    monkeypatch.setattr(plan_mod, "task_records", lambda t: calls.append(t) or task_records(t))
    cfg = _config("demo", check_images=True, input_folder=str(tmp_path), mode="tqa")
    kept = prepare_plan(task, cfg, None, parsed)
    assert calls == []
    fresh = prepare_plan(task, cfg)
    assert len(calls) == 1
    assert kept.records == fresh.records and sorted(kept.records) == there
    assert [(s.keyword, s.n_prompts, s.icl_pool) for s in kept.subgroups] == \
        [(s.keyword, s.n_prompts, s.icl_pool) for s in fresh.subgroups]
    assert [str(p) for p in kept.excluded_samples] == [str(p) for p in fresh.excluded_samples]
    assert parsed[0] == before[0] and len(parsed[0]) == 150 and parsed[1] == before[1]
