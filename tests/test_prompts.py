"""Step 2: allocation, the sampler, ICL text, modes, reproducibility and the command line."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from mminstruct.errors import ConfigError, InputError
from mminstruct.data.formats import Subgroup, TaskFile, is_prompt_image, load_prompt_file
from mminstruct.data.records import parse_record
from mminstruct.data.modes import Mode
from mminstruct.prompts.plan import (CyclicSampler, PromptConfig, allocate, icl_text, ordinal,
                                plan_prompts, prepare_plan, rewrite_image_tokens)
from tests.conftest import REPO
from tests.fixtures.images import draw_shape, save_jpeg


def test_allocation_is_mmgen_ceil_rule():
    assert allocate([2, 1], 10, 2) == [4, 2]  # ceil(10*2/3/2), ceil(10*1/3/2)
    assert allocate([1203, 198, 519], 150_000, 1) == [93985, 15469, 40547]
    assert allocate([5, 0], 10, 1) == [10, 0]
    assert allocate([0, 0], 10, 1) == [0, 0]


def test_sampler_never_hands_out_a_short_batch():
    s = CyclicSampler(list(range(5)), random.Random(0))
    draws = [s.draw(2) for _ in range(50)]
    assert all(len(d) == 2 and len(set(d)) == 2 for d in draws)
    counts = Counter(i for d in draws for i in d)
    assert max(counts.values()) - min(counts.values()) <= 1  # 100 draws over 5 items: 20 each


def test_sampler_is_without_replacement_within_a_pass():
    items = list(range(7))
    s = CyclicSampler(items, random.Random(1))
    first_pass = [s.draw_one() for _ in range(7)]
    second_pass = [s.draw_one() for _ in range(7)]
    assert sorted(first_pass) == items and sorted(second_pass) == items
    assert first_pass != second_pass  # reshuffled
    assert sorted(CyclicSampler([1, 2], random.Random(0)).draw(5)) == [1, 2]  # fewer than asked: all


def test_ordinals_and_token_rewrite():
    assert [ordinal(n) for n in (1, 2, 10, 11, 12, 13, 21, 22, 23, 101, 111)] == [
        "first", "second", "tenth", "11th", "12th", "13th", "21st", "22nd", "23rd", "101st", "111th"]
    assert [ordinal(n) for n in (14, 20, 24, 30, 110, 113, 311, 1000)] == [
        "14th", "20th", "24th", "30th", "110th", "113th", "311th", "1000th"]
    assert rewrite_image_tokens("<image>\nWhat is it?", 1) == "Refer to the first image.\nWhat is it?"
    assert rewrite_image_tokens("Compare <image_1> and <image>.", 3) == \
        "Compare Refer to the third image. and Refer to the fourth image.."
    assert rewrite_image_tokens("Image1: <ImageHere>; no token after", 2).startswith("Image1: Refer to the second image.")
    assert rewrite_image_tokens("no token", 1) == "no token"


def test_icl_text_keeps_every_turn():
    rec = parse_record(0, {"image": "a.jpg", "conversations": [
        {"from": "system", "value": "be brief"},
        {"from": "human", "value": "<image>\nQ1?"}, {"from": "gpt", "value": "A1 "},
        {"from": "human", "value": "Q2?"}, {"from": "gpt", "value": "A2"}]})
    assert icl_text(rec, 2) == "Q: Refer to the second image.\nQ1?\n A: A1\nQ: Q2?\n A: A2"


def _task(tmp_path: Path, n_circle=4, n_square=2, n_cands=(6, 3), multi_image=False) -> TaskFile:
    (tmp_path / "imgs").mkdir(exist_ok=True)
    samples, circle, square = [], [], []
    for i in range(n_circle + n_square):
        save_jpeg(draw_shape("circle", i), tmp_path / "imgs" / f"{i}.jpg")
        images = [f"{i}.jpg", f"{i}.jpg"] if multi_image and i == 0 else f"{i}.jpg"
        rec = parse_record(i, {"id": i, "image": images, "conversations": [
            {"from": "human", "value": "<image>\nWhat shape?" + (" <image>" if multi_image and i == 0 else "")},
            {"from": "gpt", "value": f"answer {i}"}]})
        samples.append(rec.to_sample())
        (circle if i < n_circle else square).append(i)
    cands = []
    for k, n in zip(("c", "s"), n_cands):
        names = [f"pool/{k}{j}.jpg" for j in range(n)]
        for name in names:
            save_jpeg(draw_shape("circle", 99), tmp_path / name)
        cands.append(names)
    return TaskFile("imgs", "shapes", [Subgroup("circle", circle, cands[0]),
                                        Subgroup("square", square, cands[1])], samples)


def _config(tmp_path, **kw) -> PromptConfig:
    base = dict(task_desc="task.json", file_prefix="t", total_gen=12, input_folder=str(tmp_path),
                output_folder=str(tmp_path), num_icl_samples=2, mode="vqa", seed=7)
    base.update(kw)
    return PromptConfig(**base)


def test_prompt_layout_and_allocation(tmp_path):
    task = _task(tmp_path)
    pf = plan_prompts(task, _config(tmp_path))
    by_kw = Counter(p.keyword for p in pf.prompts)
    assert by_kw == {"circle": 8, "square": 4}  # shares 4/6 and 2/6 of 12
    p = pf.prompts[0]
    assert p.prompt[0] == "Example 1" and p.prompt[3] == "Example 2"
    assert p.prompt[1] == f"imgs/{p.icl_indices[0]}.jpg" and p.prompt[4] == f"imgs/{p.icl_indices[1]}.jpg"
    assert p.prompt[2].startswith("Q: Refer to the first image.\nWhat shape?\n A: answer ")
    assert p.prompt[5].startswith("Q: Refer to the second image.")
    assert p.prompt[-1].startswith("pool/c") and len(p.prompt) == 7
    assert all(len(set(q.icl_indices)) == 2 for q in pf.prompts)
    assert all(set(q.icl_indices) <= {0, 1, 2, 3} for q in pf.prompts if q.keyword == "circle")
    assert pf.to_json()["allocation"] == {"circle": 8, "square": 4}


def test_candidates_drawn_without_replacement_then_reshuffled(tmp_path):
    pf = plan_prompts(_task(tmp_path, n_cands=(6, 3)), _config(tmp_path, total_gen=12))
    circle = [p.prompt[-1] for p in pf.prompts if p.keyword == "circle"]
    assert len(set(circle[:6])) == 6  # the first pass uses every candidate once
    # the second pass reuses as few images as it can: each candidate at most twice
    assert sorted(Counter(circle).values()) == [1] * (12 - len(circle)) + [2] * (len(circle) - 6)


def test_multi_image_examples_count_ordinals_across_the_prompt(tmp_path):
    task = _task(tmp_path, multi_image=True)
    pf = plan_prompts(task, _config(tmp_path, num_icl_samples=3, total_gen=30))
    for p in pf.prompts:
        images = [x for x in p.prompt[:-1] if is_prompt_image(x)]
        texts = " ".join(x for x in p.prompt if x.startswith("Q:"))
        for n in range(1, len(images) + 1):
            assert f"Refer to the {ordinal(n)} image." in texts
        assert f"Refer to the {ordinal(len(images) + 1)} image." not in texts


@pytest.mark.parametrize("mode", list(Mode))
def test_modes_carry_icl_and_candidate_as_specified(tmp_path, mode):
    pf = plan_prompts(_task(tmp_path), _config(tmp_path, mode=mode.value))
    for p in pf.prompts:
        has_icl = any(x == "Example 1" for x in p.prompt)
        assert has_icl == mode.carries_icl and bool(p.icl_indices) == mode.carries_icl
        ends_with_candidate = p.prompt[-1].startswith("pool/") if p.prompt else False
        assert ends_with_candidate == mode.carries_candidate
    assert pf.mode is mode


def test_seed_makes_it_reproducible_and_subgroups_independent(tmp_path):
    task = _task(tmp_path)
    a = plan_prompts(task, _config(tmp_path)).to_json()
    assert plan_prompts(task, _config(tmp_path)).to_json() == a
    assert plan_prompts(task, _config(tmp_path, seed=8)).to_json()["prompts"] != a["prompts"]
    task.subgroups[1].candidate_image_paths = task.subgroups[1].candidate_image_paths[:2]
    b = plan_prompts(task, _config(tmp_path)).to_json()
    assert [p for p in b["prompts"] if p["keyword"] == "circle"] == \
        [p for p in a["prompts"] if p["keyword"] == "circle"]


def test_missing_images_are_left_out_and_reported(tmp_path):
    task = _task(tmp_path)
    (tmp_path / "imgs" / "1.jpg").unlink()
    (tmp_path / "pool" / "c0.jpg").unlink()
    plan = prepare_plan(task, _config(tmp_path))
    assert [p.index for p in plan.excluded_samples] == [1]
    assert plan.missing_candidates == ["pool/c0.jpg"]
    pf = plan_prompts(task, _config(tmp_path), plan)
    assert all(1 not in p.icl_indices and p.prompt[-1] != "pool/c0.jpg" for p in pf.prompts)


def test_a_candidate_outside_the_input_folder_is_left_out_like_a_missing_one(tmp_path):
    (tmp_path / "in").mkdir()
    task = _task(tmp_path / "in")
    outside = tmp_path / "elsewhere.jpg"
    save_jpeg(draw_shape("circle", 0), outside)  # exists, but outside --input_folder
    task.subgroups[0].candidate_image_paths.append(str(outside))
    plan = prepare_plan(task, _config(tmp_path / "in"))
    assert plan.missing_candidates == [str(outside)]
    pf = plan_prompts(task, _config(tmp_path / "in"), plan)
    assert all(p.prompt[-1] != str(outside) for p in pf.prompts)


def test_subgroup_without_candidates_is_one_clear_error(tmp_path):
    task = _task(tmp_path)
    task.subgroups[1].candidate_image_paths = []
    with pytest.raises(InputError, match="subgroup 'square' needs 4 prompts but has no usable candidate"):
        plan_prompts(task, _config(tmp_path))
    plan_prompts(task, _config(tmp_path, mode="tqa"))  # tqa shows no candidate: fine


@pytest.mark.parametrize("kw,match", [
    (dict(total_gen=0), "total_gen must be an integer ≥ 1"),
    (dict(min_gen_per_candidate=-1), "min_gen_per_candidate"),
    (dict(mode="vqq"), "unknown mode 'vqq'; choose one of: vqa, vqa_nr, tqa"),
    (dict(file_prefix="a/b"), "file_prefix"),
])
def test_config_validation(tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        _config(tmp_path, **kw)


def _run(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "mminstruct.prompt_generator", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


def test_cli_on_a_real_mmgen_task_file(fixture_tree, tmp_path):
    r = _run("--task_desc", "task_files/chartqa_gen_task_desc_5cap_per_img.json",
             "--input_folder", str(fixture_tree / "sjoshi804__MM-Gen"), "--output_folder", str(tmp_path),
             "--file_prefix", "chart", "--total_gen", "1000", "--num_icl_samples", "2",
             "--mode", "vqa", "--seed", "0", "--no_check_images")
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.strip().splitlines()[-1])
    assert path.parent == tmp_path / "generated_prompts" and path.name.startswith("chart_prompts_")
    raw = json.loads(path.read_text())
    assert {"task_desc_path", "dataset_description", "num_icl_samples", "mode",
            "min_gen_per_candidate", "total_gen", "prompts"} <= set(raw)
    assert len(raw["prompts"]) == 1000 + 2  # ceil per subgroup: 627 + 104 + 271
    assert all(len(p["icl_indices"]) == 2 for p in raw["prompts"])
    # MM-Gen's data generator reads the candidate as prompt[-1] and images by extension
    assert all(p["prompt"][-1].startswith("downloaded_datasets/chartqa-train/") for p in raw["prompts"])
    assert load_prompt_file(path).mode is Mode.VQA


@pytest.mark.parametrize("args,match", [
    (["--task_desc", "nope.json", "--file_prefix", "x", "--total_gen", "5"], "nope.json: file not found"),
    (["--task_desc", "t.json", "--file_prefix", "x", "--total_gen", "5", "--mode", "vqq"], "unknown mode 'vqq'"),
    (["--task_desc", "t.json", "--file_prefix", "x", "--total_gen", "-5"], "total_gen must be"),
])
def test_cli_errors_are_one_line(tmp_path, args, match):
    r = _run(*args, "--output_folder", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert pytest.importorskip("re").search(match, lines[0])


def test_the_command_line_names_no_check_images_for_missing_images(tmp_path):
    # Some candidates missing: the warning says how to keep them; every reference refused (an
    # absolute path) or missing: the error says it too.
    task = _task(tmp_path)
    (tmp_path / "pool" / "c0.jpg").unlink()
    (tmp_path / "task.json").write_text(json.dumps(task.to_json()))
    r = _run("--task_desc", "task.json", "--input_folder", str(tmp_path), "--output_folder",
             str(tmp_path), "--file_prefix", "t", "--total_gen", "6", "--mode", "vqa", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    [warning] = [ln for ln in r.stderr.splitlines() if "candidate image(s) not found" in ln]
    assert "pool/c0.jpg" in warning and "--no_check_images" in warning
    raw = task.to_json()
    for s in raw["samples"]:
        s["image_1"] = "/elsewhere/" + s["image_1"]
    (tmp_path / "task.json").write_text(json.dumps(raw))
    r = _run("--task_desc", "task.json", "--input_folder", str(tmp_path), "--output_folder",
             str(tmp_path), "--file_prefix", "t", "--total_gen", "6", "--mode", "vqa", cwd=tmp_path)
    assert r.returncode == 2 and "--no_check_images" in r.stderr.strip().splitlines()[-1], r.stderr
