"""mminstruct.partition.taskfile and the step-1 command line: config validation, task file contents,
candidate pools, path safety, caching, and end-to-end runs."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from mminstruct.embed import clip
from mminstruct.commands import task as task_file_generator
from mminstruct.errors import ConfigError, DataFileError, ModelSpecError, UnsafePathError
from mminstruct.data.formats import TASK_KEYS, load_task_file
from mminstruct.partition.taskfile import TaskFileConfig, build_task_file, generate_task_file
from tests.fixtures.images import draw_shape, make_shapes_dataset, save_jpeg


REPO = Path(__file__).resolve().parent.parent
KEYWORDS = ["red circle", "blue square"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("MMINSTRUCT_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def shapes(tmp_path: Path):
    """A private, writable copy of the shapes dataset."""
    return make_shapes_dataset(tmp_path / "shapes", n_ref=9, n_pool=12)


def config(shapes, tiny_clip, tmp_path: Path, **kw) -> TaskFileConfig:
    base = dict(data_file="data.json", input_folder=shapes.root, output_folder=tmp_path / "out",
                keywords=KEYWORDS, clip_model=tiny_clip.spec, gpu=-1, batch_size=8, num_workers=0)
    base.update(kw)
    return TaskFileConfig(**base)


# ----------------------------------------------------------------------------------------------
# Config validation


@pytest.mark.parametrize("keywords, match", [
    ([], "keyword list is empty"),
    (["bar chart", "Bar  Chart"], "keyword 'Bar Chart' is given twice \\(also as 'bar chart'\\)"),
    (["pie", " PIE "], "given twice"),
    (["ok", "  "], "empty or not a string"),
    (["ok", 3], "empty or not a string"),
    ("bar chart", "must be a list of strings"),
])
def test_bad_keyword_lists_are_refused(keywords, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TaskFileConfig(data_file="d.json", keywords=keywords, clip_model=clip.DEFAULT_CLIP_MODEL)


@pytest.mark.parametrize("field, value, match", [
    ("batch_size", 0, "batch_size must be an integer ≥ 1, got 0"),
    ("batch_size", True, "batch_size"),
    ("batch_size", "8", "batch_size"),
    ("gpu", -2, "gpu must be an integer ≥ -1"),
    ("candidates_per_keyword", 0, "candidates_per_keyword must be an integer ≥ 1"),
    ("num_workers", -1, "num_workers must be an integer ≥ 0"),
    ("min_similarity", 1.5, "between -1 and 1, got 1.5"),
    ("min_similarity", float("nan"), "between -1 and 1"),
    ("output_prefix", "a/b", "output_prefix"),
    ("output_prefix", "", "output_prefix"),
    ("templates", ["no slot"], "exactly once"),
    ("data_file", "", "data_file is required"),
])
def test_bad_numbers_and_names_are_refused(field: str, value, match: str) -> None:
    kw = dict(data_file="d.json", keywords=["a"], clip_model=clip.DEFAULT_CLIP_MODEL)
    kw[field] = value
    with pytest.raises(ConfigError, match=match):
        TaskFileConfig(**kw)


def test_an_unknown_model_is_refused_at_config_time() -> None:
    with pytest.raises(ModelSpecError, match="unknown CLIP architecture"):
        TaskFileConfig(data_file="d.json", keywords=["a"], clip_model="ResNet-9000:x")


def test_keywords_are_tidied_and_templates_expanded() -> None:
    cfg = TaskFileConfig(data_file="d.json", keywords=["  bar   chart ", "map"], templates="default",
                         clip_model=clip.DEFAULT_CLIP_MODEL)
    assert cfg.keywords == ["bar chart", "map"] and cfg.templates == clip.DEFAULT_TEMPLATES


# ----------------------------------------------------------------------------------------------
# Building the task file


def _check_accounting(task, n_samples: int, pool: set[str], root: Path) -> None:
    refs = [i for sg in task.subgroups for i in sg.reference_sample_idx]
    cands = [c for sg in task.subgroups for c in sg.candidate_image_paths]
    assert len(refs) == len(set(refs)) and len(cands) == len(set(cands))
    meta = task.extra["mminstruct"]
    unassigned = set(meta["unassigned"]["reference_sample_idx"])
    no_image = set(meta["skipped"]["samples_without_image"])
    failed = {x["sample_idx"] for x in meta["skipped"]["reference_images"]}
    assert set(refs) | unassigned | no_image | failed == set(range(n_samples))
    assert set(cands) <= pool
    for c in cands:
        assert not Path(c).is_absolute() and (root / c).is_file()
    for sg in task.subgroups:
        assert len(sg.extra["reference_scores"]) == len(sg.reference_sample_idx)
        assert len(sg.extra["reference_margins"]) == len(sg.reference_sample_idx)
        assert len(sg.extra["candidate_scores"]) == len(sg.candidate_image_paths)


def test_task_file_has_mm_gens_schema_and_accounts_for_everything(shapes, tiny_clip,
                                                                  tmp_path: Path) -> None:
    cfg = config(shapes, tiny_clip, tmp_path, candidate_folder="pool")
    path = generate_task_file(cfg, now=datetime(2024, 9, 18, 13, 58, 8))
    assert path == tmp_path / "out" / "task_file_2024_09_18_13:58:08.json"
    raw = json.loads(path.read_text())
    assert list(raw)[:4] == list(TASK_KEYS)
    assert raw["image_folder"] == "images"
    assert raw["dataset_description"] == "recognising simple shapes"
    assert [sg["keyword"] for sg in raw["subgroups"]] == KEYWORDS
    for sg in raw["subgroups"]:  # what an MM-Gen reader uses
        assert isinstance(sg["reference_sample_idx"], list)
        assert isinstance(sg["candidate_image_paths"], list)
    assert raw["samples"][0]["image_1"] == "ref_000.jpg"
    assert raw["samples"][0]["conversations"][0]["from"] == "human"

    task = load_task_file(path)
    pool = {k for k in shapes.labels if k.startswith("pool/")}
    _check_accounting(task, 9, pool, shapes.root)
    assert sum(len(sg.candidate_image_paths) for sg in task.subgroups) == len(pool)  # argmax: all
    assert sum(len(sg.reference_sample_idx) for sg in task.subgroups) == 9
    meta = task.extra["mminstruct"]
    assert meta["keywords"] == KEYWORDS and meta["model"] == tiny_clip.spec
    assert meta["model_identity"].startswith(f"{tiny_clip.arch}:sha256=")


def test_top_k_candidates_per_keyword(shapes, tiny_clip, tmp_path: Path) -> None:
    build = build_task_file(config(shapes, tiny_clip, tmp_path, candidate_folder="pool",
                                   candidates_per_keyword=4, templates=["default"]))
    groups = [sg.candidate_image_paths for sg in build.task.subgroups]
    assert [len(g) for g in groups] == [4, 4]
    assert not set(groups[0]) & set(groups[1])
    scores = [sg.extra["candidate_scores"] for sg in build.task.subgroups]
    assert all(s == sorted(s, reverse=True) for s in scores)


def test_large_pools_take_the_faiss_path_with_the_same_result(tmp_path: Path) -> None:
    import numpy as np

    from mminstruct.partition.taskfile import select_top_k

    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(3_000, 32)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    kw = vecs[[0, 1, 2]] + 0.3 * vecs[[3, 4, 5]]  # keywords near the pool, overlapping lists
    kw /= np.linalg.norm(kw, axis=1, keepdims=True)
    cfg = TaskFileConfig(data_file="d.json", keywords=["a", "b", "c"], candidates_per_keyword=50,
                         clip_model="RN50:openai", cache_dir=str(tmp_path))
    brute = select_top_k(vecs, kw, cfg, faiss_min_pool=10**9)
    via_faiss = select_top_k(vecs, kw, cfg, faiss_min_pool=1)
    assert [list(map(int, ids)) for ids in via_faiss.ids] == [list(map(int, ids)) for ids in brute.ids]
    assert (tmp_path / "faiss").is_dir() and any((tmp_path / "faiss").iterdir())  # cached index


def test_min_similarity_leaves_everything_unassigned_and_says_so(shapes, tiny_clip,
                                                                 tmp_path: Path) -> None:
    build = build_task_file(config(shapes, tiny_clip, tmp_path, candidate_folder="pool",
                                   min_similarity=1.0))
    assert all(not sg.reference_sample_idx and not sg.candidate_image_paths
               for sg in build.task.subgroups)
    meta = build.task.extra["mminstruct"]
    assert meta["unassigned"]["reference_sample_idx"] == list(range(9))
    assert len(meta["unassigned"]["candidate_image_paths"]) == 12
    assert "reference samples under min_similarity (unassigned) (9)" in build.report.summary()


def test_odd_records_are_reported_and_nothing_else_is_lost(shapes, tiny_clip,
                                                           tmp_path: Path) -> None:
    # A header that reads but a body that does not decode: passes the loader, fails the embedding.
    corrupt = save_jpeg(draw_shape("circle", 1, (200, 160)), shapes.image_dir / "corrupt.jpg")
    corrupt.write_bytes(corrupt.read_bytes()[: corrupt.stat().st_size * 2 // 3])
    data = json.loads(shapes.data_file.read_text())
    qa = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A shape."}]
    data["samples"] += [
        {"id": "text-only", "conversations": qa},
        {"id": "corrupt", "image_1": "corrupt.jpg", "conversations": qa},
        {"id": "missing", "image_1": "nope.jpg", "conversations": qa},
        {"id": "escape", "image_1": "../data.json", "conversations": qa},
        {"id": "no-answer", "image_1": "ref_000.jpg", "conversations": qa[:1]},
    ]
    shapes.data_file.write_text(json.dumps(data))
    build = build_task_file(config(shapes, tiny_clip, tmp_path))
    task = build.task
    assert len(task.samples) == 11  # 9 + text-only + corrupt; the 3 bad records are skipped
    ids = [s.get("id") for s in task.samples]
    meta = task.extra["mminstruct"]
    assert meta["skipped"]["samples_without_image"] == [ids.index("text-only")]
    assert [x["sample_idx"] for x in meta["skipped"]["reference_images"]] == [ids.index("corrupt")]
    skipped = {r["id"]: r["reason"] for r in meta["skipped"]["records"]}
    assert set(skipped) == {"missing", "escape", "no-answer"}
    assert "unsafe path" in skipped["escape"] and "image missing" in skipped["missing"]
    _check_accounting(task, 11, set(), shapes.root)
    summary = build.report.summary()
    assert "samples without an image" in summary and "could not be embedded" in summary
    # named like every other bad record: its record index and id, not a bare "sample N"
    assert f"record {ids.index('corrupt')} (id 'corrupt'): " in summary
    assert "no candidate pool given" in summary


def test_candidate_file_of_paths_refuses_escapes_unless_allowed(shapes, tiny_clip,
                                                                tmp_path: Path) -> None:
    outside = save_jpeg(draw_shape("circle", 3), tmp_path / "elsewhere" / "out.jpg")
    lst = shapes.root / "candidates.txt"
    lst.write_text("# candidate list\npool/a/cand_000.jpg\n\n../elsewhere/out.jpg\n"
                   f"{outside}\npool/missing.jpg\npool/b/cand_002.jpg\n")
    build = build_task_file(config(shapes, tiny_clip, tmp_path, candidate_file="candidates.txt"))
    assert build.candidate_paths == ["pool/a/cand_000.jpg", "pool/b/cand_002.jpg"]
    problems = dict(build.report.candidate_problems)
    assert "escapes" in problems["../elsewhere/out.jpg"]
    assert "absolute image path" in problems[str(outside)]
    assert "does not exist" in problems["pool/missing.jpg"]

    build = build_task_file(config(shapes, tiny_clip, tmp_path, candidate_file="candidates.txt",
                                   allow_outside_paths=True))
    assert str(outside.resolve()) in build.candidate_paths
    assert len(build.candidate_paths) == 3  # ../elsewhere/out.jpg and the absolute path are one file


def test_candidate_file_can_be_a_llava_data_file(shapes, tiny_clip, tmp_path: Path) -> None:
    qa = [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A."}]
    cand = shapes.root / "more.json"
    cand.write_text(json.dumps([{"image": "pool/a/cand_000.jpg", "conversations": qa},
                                {"images": ["pool/b/cand_002.jpg", "pool/b/cand_003.jpg"],
                                 "conversations": qa},
                                {"image": "pool/none.jpg", "conversations": qa}]))
    build = build_task_file(config(shapes, tiny_clip, tmp_path, candidate_file=cand))
    assert sorted(build.candidate_paths) == ["pool/a/cand_000.jpg", "pool/b/cand_002.jpg",
                                             "pool/b/cand_003.jpg"]
    assert any("image missing" in why for _, why in build.report.candidate_problems)


def test_candidate_folder_outside_the_input_folder(shapes, tiny_clip, tmp_path: Path) -> None:
    outside = tmp_path / "outside_pool"
    save_jpeg(draw_shape("square", 4), outside / "x.jpg")
    with pytest.raises(UnsafePathError, match="--allow_outside_paths"):
        build_task_file(config(shapes, tiny_clip, tmp_path, candidate_folder=outside))
    build = build_task_file(config(shapes, tiny_clip, tmp_path, candidate_folder=outside,
                                   allow_outside_paths=True))
    assert build.candidate_paths == [str((outside / "x.jpg").resolve())]


def test_unicode_file_names(tmp_path: Path, tiny_clip) -> None:
    root = tmp_path / "données"
    save_jpeg(draw_shape("circle", 1), root / "images" / "cercle_été_图.jpg")
    save_jpeg(draw_shape("square", 2), root / "candidats" / "carré_ß_写真.jpg")
    qa = [{"from": "human", "value": "<image>\nQuelle forme ?"}, {"from": "gpt", "value": "Un cercle."}]
    (root / "données.json").write_text(json.dumps(
        {"image_folder": "images", "samples": [{"image": "cercle_été_图.jpg", "conversations": qa}]},
        ensure_ascii=False), encoding="utf-8")
    cfg = TaskFileConfig(data_file=root / "données.json", keywords=["cercle", "carré"],
                         candidate_folder=root / "candidats", clip_model=tiny_clip.spec, gpu=-1,
                         output_folder=tmp_path / "out", num_workers=0)
    task = load_task_file(generate_task_file(cfg))
    assert task.samples[0]["image_1"] == "cercle_été_图.jpg"
    cands = [c for sg in task.subgroups for c in sg.candidate_image_paths]
    assert cands == ["candidats/carré_ß_写真.jpg"]


def test_data_file_is_looked_up_in_the_input_folder_then_here(shapes, tiny_clip,
                                                              tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="data file 'nope.json' not found"):
        build_task_file(config(shapes, tiny_clip, tmp_path, data_file="nope.json"))
    with pytest.raises(DataFileError, match="input folder .* does not exist"):
        build_task_file(config(shapes, tiny_clip, tmp_path, input_folder=tmp_path / "none"))
    # No input folder: the data file's own folder.
    build = build_task_file(config(shapes, tiny_clip, tmp_path, data_file=shapes.data_file,
                                   input_folder=None))
    assert len(build.task.samples) == 9


def test_a_second_build_loads_no_model(shapes, tiny_clip, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(shapes, tiny_clip, tmp_path, candidate_folder="pool", cache_dir=tmp_path / "c")
    first = build_task_file(cfg)
    monkeypatch.setattr(clip, "load_clip", lambda *a, **k: pytest.fail("model loaded on a cache hit"))
    second = build_task_file(cfg)
    assert [sg.to_json() for sg in second.task.subgroups] == [sg.to_json() for sg in first.task.subgroups]


def test_progress_reports_both_stages(shapes, tiny_clip, tmp_path: Path) -> None:
    seen: dict[str, tuple[int, int]] = {}
    build_task_file(config(shapes, tiny_clip, tmp_path, candidate_folder="pool"),
                    progress=lambda stage, done, total: seen.__setitem__(stage, (done, total)))
    assert seen == {"reference images": (9, 9), "candidate images": (12, 12)}


# ----------------------------------------------------------------------------------------------
# The command line


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch):
    """Run main() in this process, restoring the logging setup it changes."""
    ours, root = logging.getLogger("mminstruct"), logging.getLogger()
    saved = (ours.level, ours.propagate, list(ours.handlers), root.level, list(root.handlers))
    yield task_file_generator.main
    ours.setLevel(saved[0])
    ours.propagate = saved[1]
    ours.handlers[:] = saved[2]
    root.setLevel(saved[3])
    root.handlers[:] = saved[4]


def test_cli_in_process_writes_the_task_file(cli, shapes, tiny_clip, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    rc = cli(["--data_file", "data.json", "--input_folder", str(shapes.root), "--output_folder",
              str(tmp_path / "out"), "--keywords", *KEYWORDS, "--model_name", tiny_clip.spec,
              "--gpu", "-1", "--candidate_folder", "pool", "--num_workers", "0",
              "--output_prefix", "shapes"])
    out = capsys.readouterr()
    assert rc == 0
    path = Path(out.out.strip().splitlines()[-1])
    assert path.parent == tmp_path / "out" and path.name.startswith("shapes_")
    assert load_task_file(path).subgroups[0].keyword == "red circle"
    assert "task file written to" in out.err


@pytest.mark.parametrize("args, match", [
    (["--keywords"], "expected at least one argument"),
    (["--keywords", "a", "--batch_size", "x"], "invalid int value: 'x'"),
    (["--keywords", "a", "A"], "given twice"),
    (["--keywords", "a", "--min_similarity", "2"], "min_similarity"),
    (["--keywords", "a", "--model_name", "ViT-B-32:nope"], "unknown pretrained tag"),
])
def test_cli_bad_arguments_are_one_line(cli, args, match: str, capsys: pytest.CaptureFixture) -> None:
    try:
        rc = cli(["--data_file", "data.json", *args])
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and match in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_bad_data_file_is_one_line(cli, tiny_clip, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('[{"image": "a.jpg", "conversations": [')
    rc = cli(["--data_file", str(bad), "--keywords", "a", "--model_name", tiny_clip.spec])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().splitlines()[-1].startswith("error: ")
    assert "not valid JSON" in err and "Traceback" not in err


def _run_cli(*args: str, cwd: Path, env_cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MMINSTRUCT_CACHE_DIR": str(env_cache), "PYTHONPATH": str(REPO),
           "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "mminstruct.task_file_generator", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_end_to_end_in_a_subprocess(shapes, tiny_clip, tmp_path: Path) -> None:
    args = ["--data_file", "data.json", "--input_folder", str(shapes.root), "--output_folder", "out",
            "--keywords", *KEYWORDS, "--model_name", tiny_clip.spec, "--gpu", "0",
            "--candidate_folder", "pool", "--candidates_per_keyword", "3", "--batch_size", "4"]
    first = _run_cli(*args, cwd=tmp_path, env_cache=tmp_path / "c")
    assert first.returncode == 0, first.stderr
    path = tmp_path / first.stdout.strip().splitlines()[-1]
    task = load_task_file(path)
    assert [len(sg.candidate_image_paths) for sg in task.subgroups] == [3, 3]
    _check_accounting(task, 9, {k for k in shapes.labels if k.startswith("pool/")}, shapes.root)
    assert "using the CPU" in first.stderr and "loaded CLIP" in first.stderr
    second = _run_cli(*args, "--output_prefix", "again", cwd=tmp_path, env_cache=tmp_path / "c")
    assert second.returncode == 0 and "loaded CLIP" not in second.stderr  # all cached
    again = load_task_file(tmp_path / second.stdout.strip().splitlines()[-1])
    assert [sg.to_json() for sg in again.subgroups] == [sg.to_json() for sg in task.subgroups]


@pytest.mark.slow
def test_cli_refuses_escaping_paths_in_a_subprocess(shapes, tiny_clip, tmp_path: Path) -> None:
    outside = save_jpeg(draw_shape("circle", 9), tmp_path / "outside" / "ö_图表.jpg")
    common = ["--data_file", "data.json", "--input_folder", str(shapes.root), "--keywords",
              *KEYWORDS, "--model_name", tiny_clip.spec, "--output_folder", str(tmp_path / "out")]
    bad = _run_cli(*common, "--candidate_folder", str(outside.parent), cwd=tmp_path,
                   env_cache=tmp_path / "c")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("error: candidate folder")
    ok = _run_cli(*common, "--candidate_folder", str(outside.parent), "--allow_outside_paths",
                  cwd=tmp_path, env_cache=tmp_path / "c")
    assert ok.returncode == 0, ok.stderr
    task = load_task_file(ok.stdout.strip().splitlines()[-1])
    assert [c for sg in task.subgroups for c in sg.candidate_image_paths] == [str(outside.resolve())]
    usage = _run_cli("--keywords", "a", cwd=tmp_path, env_cache=tmp_path / "c")
    assert usage.returncode == 2 and len(usage.stderr.strip().splitlines()) == 1
    assert "--data_file" in usage.stderr
