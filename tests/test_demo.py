"""The offline demo: deterministic charts, answers right w.r.t. the drawn data, a workspace that loads
cleanly, and a demo CLIP whose zero-shot keyword partition of held-out charts is right."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from statistics import mean

import pytest

from mminstruct.demo import DEMO_KEYWORDS, DEMO_MODEL, build_demo_workspace, model_files, read_labels
from mminstruct.demo.charts import (CHART_TYPES, HELDOUT_LOOKS, SUBTYPES, TRAIN_LOOKS, chart_jpeg,
                                    chart_seed, make_spec, render_chart)
from mminstruct.demo.questions import chart_questions
from mminstruct.demo.workspace import MANIFEST_NAME, reference_record, reference_spec
from mminstruct.errors import ConfigError
from mminstruct.data.records import load_data_file
from mminstruct.data.images import list_image_files

REPO = Path(__file__).resolve().parent.parent
KEYWORD_OF = {"bar": "bar chart", "line": "line chart", "pie": "pie chart", "scatter": "scatter plot"}


# ----------------------------------------------------------------------------------------------
# Charts


def test_same_seed_draws_the_same_bytes_and_other_seeds_differ():
    seed = chart_seed(0, "reference", 5)
    assert chart_jpeg(make_spec(seed)) == chart_jpeg(make_spec(seed))
    specs = [make_spec(chart_seed(0, "reference", i)) for i in range(12)]
    assert len({(s.kind, s.title, s.series) for s in specs}) == 12
    assert chart_seed(0, "reference", 1) != chart_seed(0, "candidate", 1) != chart_seed(1, "reference", 1)


def test_every_type_and_subtype_draws_at_its_size():
    for kind in CHART_TYPES:
        for sub in SUBTYPES[kind]:
            spec = make_spec(1000 + len(sub), kind=kind, subtype=sub)
            img = render_chart(spec)
            assert img.size == (spec.width, spec.height)
            assert 320 <= max(img.size) <= 480
            colours = img.convert("RGB").getcolors(maxcolors=1 << 16)
            assert colours is None or len(colours) > 20, f"{kind}/{sub} drew an almost empty image"


def test_held_out_looks_are_disjoint_from_training_looks():
    assert not set(TRAIN_LOOKS.sheets) & set(HELDOUT_LOOKS.sheets)
    assert not set(TRAIN_LOOKS.fonts) & set(HELDOUT_LOOKS.fonts)
    specs = [make_spec(chart_seed(0, "heldout", i), looks="heldout") for i in range(20)]
    assert all(s.sheet in HELDOUT_LOOKS.sheets and s.font in HELDOUT_LOOKS.fonts for s in specs)


def test_bad_kind_names_the_choices():
    with pytest.raises(ConfigError, match="unknown chart type 'pi'; choose one of: bar, line, pie, scatter"):
        make_spec(1, kind="pi")


# ----------------------------------------------------------------------------------------------
# Answers, recomputed here from the chart's data


def _num(v: float) -> str:
    return str(int(v)) if float(v) == int(v) else f"{v:g}"


def _single(values, pick) -> int | None:
    best = pick(values)
    hits = [i for i, v in enumerate(values) if v == best]
    return hits[0] if len(hits) == 1 else None


def _expected(spec, kind: str, p: dict) -> str | None:
    """The right answer of a question kind, computed from the chart's data (not by the generator)."""
    cats, names = list(spec.categories), list(spec.series_names)
    v = list(spec.values)
    col = lambda c: [s.values[cats.index(c)] for s in spec.series]  # noqa: E731
    series = lambda n: list(spec.series[names.index(n)].values)  # noqa: E731
    if kind in ("bar_max", "pie_largest"):
        return cats[v.index(max(v))]
    if kind in ("bar_min", "pie_smallest"):
        return cats[v.index(min(v))]
    if kind in ("bar_value", "line_value"):
        return _num(v[cats.index(p.get("category", p.get("x")))])
    if kind == "bar_diff":
        return _num(abs(v[cats.index(p["a"])] - v[cats.index(p["b"])]))
    if kind == "bar_compare":
        return "Yes" if v[cats.index(p["a"])] > v[cats.index(p["b"])] else "No"
    if kind == "bar_count":
        return str(len(cats))
    if kind == "bar_sum":
        return _num(sum(v))
    if kind in ("group_top_series", "multi_top_series"):
        c = col(p.get("category", p.get("x")))
        return names[c.index(max(c))]
    if kind == "group_value":
        return _num(series(p["series"])[cats.index(p["category"])])
    if kind in ("group_top_category", "multi_peak"):
        s = series(p["series"])
        return cats[s.index(max(s))]
    if kind in ("group_series_count", "multi_count", "scatter_groups"):
        return str(len(spec.series))
    if kind == "stack_total":
        return _num(sum(col(p["category"])))
    if kind == "stack_tallest":
        totals = [sum(col(c)) for c in cats]
        return cats[totals.index(max(totals))]
    if kind == "line_peak":
        return cats[v.index(max(v))]
    if kind == "line_low":
        return cats[v.index(min(v))]
    if kind == "line_trend":
        return "Increase" if v[cats.index(p["to"])] > v[cats.index(p["from"])] else "Decrease"
    if kind == "line_change":
        return _num(abs(v[cats.index(p["to"])] - v[cats.index(p["from"])]))
    if kind == "line_count":
        return str(len(cats))
    if kind == "multi_value":
        return _num(series(p["series"])[cats.index(p["x"])])
    if kind == "pie_count":
        return str(len(cats))
    if kind == "pie_share":
        return f"{_num(v[cats.index(p['category'])])}%"
    if kind == "pie_pair":
        return f"{_num(v[cats.index(p['a'])] + v[cats.index(p['b'])])}%"
    points = [pt for g in spec.points for pt in g]
    if kind == "scatter_corr":
        xs, ys = [q[0] for q in points], [q[1] for q in points]
        mx, my = mean(xs), mean(ys)
        cov = sum((x - mx) * (y - my) for x, y in points)
        return "Positive" if cov > 0 else "Negative"
    if kind == "scatter_count":
        return str(len(points))
    if kind == "scatter_group_mean":
        means = [mean(q[1] for q in g) for g in spec.points]
        return names[means.index(max(means))]
    if kind == "scatter_group_count":
        return str(len(spec.points[names.index(p["series"])]))
    return None


def _check_qa(spec, qa) -> str:
    kind = qa.kind.removesuffix("_mc")
    want = _expected(spec, kind, qa.params)
    assert want is not None, f"no independent check for question kind {qa.kind}"
    if qa.kind.endswith("_mc"):
        options = dict(re.findall(r"^([A-D])\. (.+)$", qa.question, flags=re.M))
        assert sorted(options) == ["A", "B", "C", "D"], qa.question
        assert len(set(options.values())) == 4
        picked = options[qa.answer]
        if kind == "scatter_corr":
            assert picked == f"{want} correlation", (qa.question, qa.answer)
        else:
            assert picked == want, (qa.question, qa.answer)
    else:
        assert qa.answer == want, (spec.kind, qa.question, qa.answer, want)
    for value in qa.params.values():  # what the question is about is named in it
        if isinstance(value, str):
            assert value in qa.question
    return qa.kind


def test_answers_are_right_for_the_drawn_data():
    kinds: Counter = Counter()
    for i in range(160):
        spec = make_spec(chart_seed(11, "qa-test", i), kind=CHART_TYPES[i % 4])
        for qa in chart_questions(spec, random.Random(i)):
            kinds[_check_qa(spec, qa)] += 1
    # every question kind the generator knows was produced and checked
    assert len(kinds) >= 30, kinds
    assert {"bar_max_mc", "line_peak_mc", "pie_largest_mc", "scatter_corr_mc", "pie_count",
            "line_value", "stack_total", "multi_top_series"} <= set(kinds)


def test_ambiguous_questions_are_left_out():
    spec = make_spec(chart_seed(2, "x", 0), kind="line", subtype="single")
    flat = type(spec.series[0])(spec.series[0].name, tuple(5.0 for _ in spec.categories))
    tied = type(spec)(**{**spec.__dict__, "series": (flat,)})
    kinds = {q.kind for q in chart_questions(tied, random.Random(0))}
    assert not kinds & {"line_peak", "line_peak_mc", "line_low", "line_trend"}
    assert "line_value" in kinds


# ----------------------------------------------------------------------------------------------
# Workspace


def test_workspace_loads_cleanly_and_labels_cover_every_image(small_demo_workspace):
    ws = small_demo_workspace
    df = load_data_file(ws.data_file)
    assert df.report.skipped == 0 and len(df.records) == 12
    assert df.dataset_description and df.image_root == ws.image_folder.resolve()
    labels = read_labels(ws.labels_file)
    on_disk = {p.relative_to(ws.root).as_posix() for p in list_image_files(ws.root)}
    assert set(labels) == on_disk and len(on_disk) == 12 + 8
    assert set(labels.values()) <= set(CHART_TYPES)
    assert len(list_image_files(ws.candidate_folder)) == 8
    raw = json.loads(ws.labels_file.read_text())
    for i, rec in enumerate(df.records):
        spec = reference_spec(ws.seed, i)
        assert labels[f"images/{rec.images[0]}"] == spec.kind == raw[f"images/{rec.images[0]}"]["type"]
        assert raw[f"images/{rec.images[0]}"]["subtype"] == spec.subtype
        assert rec.turns[0].value.startswith("<image>\n")
        assert rec.to_sample() == reference_record(ws.seed, i)
        assert df.image_path(rec).read_bytes() == chart_jpeg(spec)
    assert "demo-charts" in ws.readme.read_text()


def test_rerun_is_a_no_op_and_a_killed_build_resumes(small_demo_workspace, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(small_demo_workspace.root, root)
    again = build_demo_workspace(root, seed=3, n_reference=12, n_candidates=8, workers=1)
    assert again.rendered == 0
    # a build killed half-way: some images missing, the manifest not marked complete
    for name in ("images/chart_0002.jpg", "pool/cand_0005.jpg"):
        (root / name).unlink()
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    (root / MANIFEST_NAME).write_text(json.dumps({**manifest, "complete": False}))
    kept = (root / "images/chart_0000.jpg").stat().st_mtime_ns
    resumed = build_demo_workspace(root, seed=3, n_reference=12, n_candidates=8, workers=1)
    assert resumed.rendered == 2
    assert (root / "images/chart_0000.jpg").stat().st_mtime_ns == kept
    for name in ("images/chart_0002.jpg", "pool/cand_0005.jpg"):
        assert (root / name).read_bytes() == (small_demo_workspace.root / name).read_bytes()


def test_other_parameters_rebuild_without_stale_images(small_demo_workspace, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(small_demo_workspace.root, root)
    ws = build_demo_workspace(root, seed=4, n_reference=5, n_candidates=3, workers=1)
    assert ws.rendered == 8
    assert len(list_image_files(root)) == 8 == len(read_labels(ws.labels_file))
    assert (root / "images/chart_0000.jpg").read_bytes() != \
        (small_demo_workspace.root / "images/chart_0000.jpg").read_bytes()


@pytest.mark.parametrize("kwargs, message", [
    ({"n_reference": 0}, "n_reference is 0"),
    ({"seed": -1}, "seed is -1"),
    ({"n_candidates": "many"}, "n_candidates is 'many'"),
])
def test_bad_parameters_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build_demo_workspace(tmp_path, **kwargs)


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "mminstruct.demo", *args], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=300)


def test_cli_prints_the_data_file_last_and_refuses_bad_arguments(tmp_path):
    out = _run_cli("--output_folder", str(tmp_path / "w"), "--n_reference", "3", "--n_candidates", "2",
                   "--quiet")
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    assert Path(last) == tmp_path / "w" / "demo_charts.json" and Path(last).is_file()
    bad = _run_cli("--output_folder", str(tmp_path / "x"), "--n_reference", "0")
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: n_reference is 0; expected an integer ≥ 1"
    (tmp_path / "file").write_text("x")
    clash = _run_cli("--output_folder", str(tmp_path / "file"))
    assert clash.returncode == 2 and "exists and is not a folder" in clash.stderr
    assert "Traceback" not in bad.stderr + clash.stderr


@pytest.mark.slow
def test_default_workspace_is_complete_and_deterministic(tmp_path):
    ws = build_demo_workspace(tmp_path / "a")
    df = load_data_file(ws.data_file)
    assert (len(df.records), df.report.skipped) == (150, 0)
    labels = read_labels(ws.labels_file)
    assert len(labels) == 750 == len(list_image_files(ws.root))
    counts = Counter(labels.values())
    assert set(counts) == set(CHART_TYPES) and min(counts.values()) >= 60
    other = build_demo_workspace(tmp_path / "b", n_reference=10, n_candidates=10)
    assert other.data_file.read_text().count('"id"') == 10
    for name in ("images/chart_0003.jpg", "pool/cand_0007.jpg"):
        assert (ws.root / name).read_bytes() == (other.root / name).read_bytes()


# ----------------------------------------------------------------------------------------------
# The demo CLIP


def test_model_files_are_the_shipped_open_clip_config_and_checkpoint():
    config, checkpoint = model_files()
    assert config.stem == DEMO_MODEL and checkpoint.is_file()
    assert checkpoint.stat().st_size <= 10 * 1024 * 1024
    cfg = json.loads(config.read_text())
    assert {"embed_dim", "vision_cfg", "text_cfg"} <= set(cfg)
    assert DEMO_KEYWORDS == tuple(KEYWORD_OF.values())


def _zero_shot(clip, specs, templates=("{}",)) -> float:
    import io

    import torch
    from PIL import Image

    images = [clip.preprocess(Image.open(io.BytesIO(chart_jpeg(s))).convert("RGB")) for s in specs]
    kinds = list(KEYWORD_OF)
    with torch.no_grad():
        img = torch.nn.functional.normalize(clip.model.encode_image(torch.stack(images)), dim=-1)
        txt = torch.stack([
            torch.nn.functional.normalize(
                clip.model.encode_text(clip.tokenizer([t.format(KEYWORD_OF[k]) for t in templates])),
                dim=-1).mean(0)
            for k in kinds])
        txt = torch.nn.functional.normalize(txt, dim=-1)
        pred = (img @ txt.T).argmax(dim=1).tolist()
    return sum(kinds[p] == s.kind for p, s in zip(pred, specs)) / len(specs)


def _heldout(n: int, seed: int):
    return [make_spec(chart_seed(seed, "heldout-test", i), kind=CHART_TYPES[i % 4], looks="heldout")
            for i in range(n)]


def test_demo_clip_sorts_a_few_held_out_charts(demo_clip):
    assert _zero_shot(demo_clip, _heldout(12, seed=5)) >= 11 / 12


@pytest.mark.slow
@pytest.mark.parametrize("templates", [("{}",), ("a photo of a {}.",)])
def test_demo_clip_zero_shot_partition_of_held_out_charts_is_90_percent_right(demo_clip, templates):
    assert _zero_shot(demo_clip, _heldout(80, seed=1), templates) >= 0.9


@pytest.mark.slow
def test_command_line_path_on_the_demo_sorts_candidates_by_chart_type(tmp_path):
    """demo workspace → task file with the candidate pool (demo CLIP) → prompt file: the candidates
    of each keyword's subgroup, and the candidates its prompts show, are ≥ 90 % of that type."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "MMINSTRUCT_CACHE_DIR": str(tmp_path / "cache")}

    def run(module: str, *args: str) -> str:
        out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                             cwd=REPO, env=env, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip().splitlines()[-1]

    ws = tmp_path / "ws"
    data_file = Path(run("mminstruct.demo", "--output_folder", str(ws), "--n_reference", "40",
                         "--n_candidates", "120", "--quiet"))
    task_path = Path(run("mminstruct.task_file_generator", "--data_file", data_file.name,
                         "--input_folder", str(ws), "--candidate_folder", "pool",
                         "--keywords", *DEMO_KEYWORDS, "--model_name", DEMO_MODEL,
                         "--output_folder", str(ws / "out"), "--output_prefix", "demo", "--gpu", "-1"))
    labels = read_labels(ws / "labels.json")
    type_of = {v: k for k, v in KEYWORD_OF.items()}
    task = json.loads(task_path.read_text())
    assert [sg["keyword"] for sg in task["subgroups"]] == list(DEMO_KEYWORDS)
    assigned = 0
    for sg in task["subgroups"]:
        cands = sg["candidate_image_paths"]
        assert cands, f"no candidates for {sg['keyword']!r}"
        right = sum(labels[c] == type_of[sg["keyword"]] for c in cands)
        assert right / len(cands) >= 0.9, (sg["keyword"], right, len(cands))
        refs = [f"images/{task['samples'][i]['image_1']}" for i in sg["reference_sample_idx"]]
        assert sum(labels[r] == type_of[sg["keyword"]] for r in refs) / len(refs) >= 0.9
        assigned += len(cands)
    assert assigned >= 0.9 * 120

    prompt_path = Path(run("mminstruct.prompt_generator", "--task_desc", str(task_path.relative_to(ws)),
                           "--input_folder", str(ws), "--output_folder", str(ws / "out"),
                           "--file_prefix", "demo", "--total_gen", "60", "--num_icl_samples", "2",
                           "--seed", "0"))
    prompts = json.loads(prompt_path.read_text())["prompts"]
    assert len(prompts) >= 60
    right = 0
    for p in prompts:
        images = [x for x in p["prompt"] if x in labels]
        assert images[-1].startswith("pool/") and all(x.startswith("images/") for x in images[:-1])
        right += labels[images[-1]] == type_of[p["keyword"]]
    assert right / len(prompts) >= 0.9
