"""Quality report: the planted-defect set (precision / recall per flag, clean false positives),
the text signals, the command line (report layout, one-line errors), grounding with the tiny
CLIP, and the report a run writes beside its output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mminstruct.quality import report as quality
from mminstruct.generate.manifest import manifest_path_for
from mminstruct.quality.report import (FLAGS, QualityConfig, analyse, quality_after_run, report_path_for,
                                write_report)
from mminstruct.quality.text import (answer_matches_options, options, question_type,
                                     refusal_match, words)
from tests.fixtures.images import draw_shape, save_jpeg
from tests.make_quality_fixture import DEFAULT_SOURCE, build

DATA = Path(__file__).resolve().parent / "data" / "quality"
REASONING = "Think step by step and explain your reasoning, then give the answer."
CONCISE = "Answer concisely."


@pytest.fixture(scope="module")
def planted() -> tuple[list[dict], list[list[str]]]:
    rep = analyse(QualityConfig(str(DATA / "generated.json"), prompt_file=str(DATA / "prompts.json")))
    truth = json.loads((DATA / "truth.json").read_text())["flags"]
    return rep.samples, truth


@pytest.mark.parametrize("flag", FLAGS)
def test_each_flag_reaches_95_percent_precision_and_recall_on_the_planted_set(planted, flag) -> None:
    samples, truth = planted
    assert len(samples) == len(truth)
    planted_n = sum(flag in t for t in truth)
    assert planted_n >= 40, f"too few planted {flag} to measure"
    tp = sum(flag in s["flags"] and flag in t for s, t in zip(samples, truth))
    fp = sum(flag in s["flags"] and flag not in t for s, t in zip(samples, truth))
    precision, recall = tp / max(1, tp + fp), tp / planted_n
    assert precision >= 0.95 and recall >= 0.95, (flag, precision, recall)


def test_under_one_percent_of_clean_samples_are_flagged(planted) -> None:
    samples, truth = planted
    clean = [s for s, t in zip(samples, truth) if not t]
    assert len(clean) >= 500
    assert sum(1 for s in clean if s["flags"]) / len(clean) < 0.01


def test_hard_negatives_are_in_the_planted_set(planted) -> None:
    """The set must hold what makes the task hard: the same question on two images and several
    questions on one image, all clean."""
    gen = json.loads((DATA / "generated.json").read_text())["samples"]
    samples, truth = planted
    by_q: dict[str, set] = {}
    per_image: dict[str, int] = {}
    for s, t in zip(gen, truth):
        if not t and s.get("image_1"):
            q = " ".join(words(s["conversations"][0]["value"]))
            by_q.setdefault(q, set()).add(s["image_1"])
            per_image[s["image_1"]] = per_image.get(s["image_1"], 0) + 1
    assert sum(1 for imgs in by_q.values() if len(imgs) > 1) >= 10
    assert sum(1 for n in per_image.values() if n >= 6) >= 30


def test_fixture_script_rebuilds_the_committed_set(tmp_path: Path) -> None:
    if not DEFAULT_SOURCE.is_file():
        pytest.skip(f"LLaVA excerpt not at {DEFAULT_SOURCE}")
    from tests.make_quality_fixture import write

    write(tmp_path, *build(DEFAULT_SOURCE))
    for name in ("generated.json", "prompts.json", "truth.json"):
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name


# ----------------------------------------------------------------------------------------------
# Text signals


def test_multiple_choice_options_and_answers() -> None:
    opts = options("What is it?\nA. red\nB. white\nC. blue")
    assert opts == {"A": "red", "B": "white", "C": "blue"}
    assert options("Pick one: (A) cat (B) dog") == {"A": "cat", "B": "dog"}
    assert options('Which? {"A": "cat", "B": "dog"}') == {"A": "cat", "B": "dog"}
    assert options("What is at point A. The top?") == {}  # one letter is not a choice
    for ok in ("B", "(B)", "B. white", "The answer is C.", "white", "Option A"):
        assert answer_matches_options(ok, opts), ok
    for bad in ("E", "green", "A dog is sitting there", ""):
        assert not answer_matches_options(bad, opts), bad


def test_refusals_and_look_alikes() -> None:
    for text in ("I'm sorry, but I can't see the image.", "As an AI, I cannot view images.",
                 "I am unable to see the picture you sent.", "No image was provided."):
        assert refusal_match(text), text
    for text in ("The sign reads \"Sorry, we're closed\".", "The man cannot see the ball.",
                 "It is hard to tell, but the clock shows two.", "There is no cat in the image."):
        assert refusal_match(text) is None, text


def test_question_types() -> None:
    cases = {"How many dogs are there?": "how many", "Can you tell me what he holds?": "what",
             "In the image, is it raining?": "yes/no", "Describe the scene.": "imperative",
             "Why is the road wet?": "why", "Which bus is red?": "which", "The colour?": "other"}
    for q, t in cases.items():
        assert question_type(words(q)) == t, q


# ----------------------------------------------------------------------------------------------
# Small generated files


def _sample(i: int, q: str, a: str, image: str | None = "a.jpg", variant: str | None = None,
            prompt_idx: int = 0, keyword: str = "k", mode: str = "vqa_nr") -> dict:
    suffix = {"reasoning": REASONING, "concise": CONCISE}.get(variant or "", "")
    human = ("<image>\n" if image and mode != "tqa" else "") + q + (f"\n{suffix}" if suffix else "")
    s = {"id": i, "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": a}],
         "icl_indices": [], "keyword": keyword, "prompt_idx": prompt_idx}
    if image and mode != "tqa":
        s["image_1"] = image
    if variant:
        s["variant"] = variant
    return s


def _write(path: Path, samples: list[dict], mode: str = "vqa_nr", **header) -> Path:
    path.write_text(json.dumps({"image_folder": "", "len_samples": len(samples), "mode": mode,
                                **header, "samples": samples}))
    return path


def _flags(path: Path, **kw) -> list[list[str]]:
    return [s["flags"] for s in analyse(QualityConfig(str(path), **kw)).samples]


def test_duplicates_are_per_image_and_the_first_is_not_flagged(tmp_path: Path) -> None:
    f = _write(tmp_path / "g.json", [
        _sample(0, "What color is the car?", "Red."),
        _sample(1, "what  color is the CAR", "red"),                  # exact (case, punctuation)
        _sample(2, "What color is the car?", "Red.", image="b.jpg"),  # other image: clean
        _sample(3, "What is the color of the car in the image?", "It is red."),  # near
        _sample(4, "What color is the bus?", "Blue."),                # same topic: clean
        _sample(5, "Is the car red?", "Yes."),                        # other type: clean
    ])
    assert _flags(f) == [[], ["exact_duplicate"], [], ["near_duplicate"], [], []]
    rep = analyse(QualityConfig(str(f)))
    assert rep.samples[1]["duplicate_of"] == 0 and rep.samples[3]["duplicate_of"] == 0
    assert rep.summary["flags"]["exact_duplicate"] == 1 and rep.summary["flagged"] == 2


def test_reasoning_and_concise_samples_of_one_item_are_not_duplicates(tmp_path: Path) -> None:
    f = _write(tmp_path / "g.json", [
        _sample(0, "How many birds?", "I count them.\nTwo.", variant="reasoning"),
        _sample(1, "How many birds?", "Two.", variant="concise"),
        _sample(2, "How many birds?", "I count them.\nTwo.", variant="reasoning"),
        _sample(3, "How many birds?", "Two.", variant="concise"),
    ], mode="vqa")
    assert _flags(f) == [[], [], ["exact_duplicate"], ["exact_duplicate"]]
    s = analyse(QualityConfig(str(f))).summary
    assert s["questions"]["counted"] == 2  # the concise samples only


def test_description_modes_compare_answers(tmp_path: Path) -> None:
    q = "Describe this image in detail."
    f = _write(tmp_path / "g.json", [
        _sample(0, q, "A red car parked beside a tall brick building on a sunny street."),
        _sample(1, q, "Three children play football on green grass near a wooden fence."),
        _sample(2, q, "A red car is parked beside a tall brick building on a sunny street."),
    ], mode="generic")
    assert _flags(f) == [[], [], ["near_duplicate"]]


def test_invalid_samples(tmp_path: Path) -> None:
    mc = "What is it?\nA. cat\nB. dog"
    f = _write(tmp_path / "g.json", [
        _sample(0, mc, "B"), _sample(1, mc, "a horse", image="b.jpg"),
        _sample(2, "What is it?", "", image="c.jpg"), _sample(3, "", "A cat.", image="d.jpg"),
        _sample(4, "What is here?", "A cat.", image=None),  # vqa_nr needs an image
        {"id": 5, "image_1": "e.jpg", "conversations": [{"from": "gpt", "value": "x"}]},
        _sample(6, "Is it a cat?", "Yes.", image="f.jpg", variant="concise"),
    ])
    flags = _flags(f)
    assert flags[0] == [] and all("invalid" in fl for fl in flags[1:6])
    f2 = _write(tmp_path / "v.json", [_sample(0, "Is it a cat?", "Yes.", variant="concise"),
                                       {**_sample(1, "Is it?", "No.", image="b.jpg"),
                                        "variant": "reasoning"}], mode="vqa")
    assert _flags(f2) == [[], ["invalid"]]  # a reasoning sample without its suffix
    rep = analyse(QualityConfig(str(f)))
    assert "none of the options" in rep.samples[1]["invalid_reason"]


def test_tqa_samples_have_no_image_and_are_valid(tmp_path: Path) -> None:
    f = _write(tmp_path / "g.json", [
        _sample(0, "A photo of a cat.\nWhat animal is it?", "A cat.", image=None, mode="tqa",
                variant="concise"),
        _sample(1, "A photo of a cat.\nWhat animal is it?", "A cat.", image="x.jpg",
                variant="concise")], mode="tqa")
    assert _flags(f) == [[], ["invalid"]]
    s = analyse(QualityConfig(str(f))).summary
    assert s["questions"]["types"]["what"] == 2  # the question after the imagined image's text


def test_icl_copy_uses_the_samples_own_prompt(tmp_path: Path) -> None:
    prompts = {"mode": "vqa_nr", "prompts": [
        {"keyword": "k", "icl_indices": [0], "prompt": [
            "Example 1", "ref/0.jpg", "Q: Refer to the first image. What is the man holding?\n A: A cup.",
            "a.jpg"]},
        {"keyword": "k", "icl_indices": [1], "prompt": [
            "Example 1", "ref/1.jpg", "Q: Refer to the first image. Where is the dog?\n A: Outside.",
            "b.jpg"]}]}
    pf = tmp_path / "p.json"
    pf.write_text(json.dumps(prompts))
    f = _write(tmp_path / "g.json", [
        _sample(0, "What is the man holding in the image?", "A phone.", prompt_idx=0),
        _sample(1, "What is the man holding?", "A phone.", image="b.jpg", prompt_idx=1),
        _sample(2, "What is the man wearing?", "A hat.", image="c.jpg", prompt_idx=0),
    ])
    assert _flags(f, prompt_file=str(pf)) == [["icl_copy"], [], []]
    rep = analyse(QualityConfig(str(f)))  # no prompt file: not checked, and the summary says so
    assert rep.summary["icl_checked"] is False and "icl_copy not checked" in rep.summary["note"]


def test_icl_copy_in_description_modes_compares_the_answer_with_the_examples_answer(
        tmp_path: Path) -> None:
    # A description mode's questions are all alike ("Describe the image"): the copy is in the
    # answer, so the answer is compared with the example's answer, never the questions.
    example = "A red car parked beside a tall brick building on a sunny street."
    prompts = {"mode": "descript", "prompts": [
        {"keyword": "k", "icl_indices": [0], "prompt": [
            "Example 1", "ref/0.jpg", f"Q: Describe the image in detail.\n A: {example}", "a.jpg"]}]}
    pf = tmp_path / "p.json"
    pf.write_text(json.dumps(prompts))
    q = "Describe this image in detail."
    f = _write(tmp_path / "g.json", [
        _sample(0, q, "A red car is parked beside a tall brick building on a sunny street.",
                mode="descript"),
        _sample(1, q, "Three children play football on green grass near a wooden fence.",
                image="b.jpg", mode="descript"),
    ], mode="descript")
    rep = analyse(QualityConfig(str(f), prompt_file=str(pf)))
    assert [s["flags"] for s in rep.samples] == [["icl_copy"], []]
    assert rep.samples[0]["icl_example"] == 0


def test_summary_counts_per_keyword_and_question_mix(tmp_path: Path) -> None:
    f = _write(tmp_path / "g.json", [
        _sample(0, "What is it?", "A cat.", keyword="pets"),
        _sample(1, "What is it?", "A cat.", keyword="pets"),
        _sample(2, "How many cars are there?", "I'm sorry, I cannot see the image.",
                image="b.jpg", keyword="cars"),
    ])
    s = analyse(QualityConfig(str(f))).summary
    assert s["by_keyword"]["pets"]["flags"]["exact_duplicate"] == 1
    assert s["by_keyword"]["cars"]["flags"]["refusal"] == 1
    assert s["by_keyword"]["cars"]["flagged"] == 1
    assert s["questions"]["types"]["what"] == 2 and s["questions"]["types"]["how many"] == 1
    # unigrams: "what is it" twice + "how many cars are there": 8 distinct of 11
    assert s["questions"]["distinct_1"] == round(8 / 11, 4)
    # bigrams: (what is, is it) twice + 4 → 6 distinct of 8
    assert s["questions"]["distinct_2"] == round(6 / 8, 4)
    assert s["answer_words"]["max"] == 7


# ----------------------------------------------------------------------------------------------
# Command line


def test_cli_writes_one_entry_per_sample_in_file_order(tmp_path: Path, capsys) -> None:
    out = tmp_path / "r" / "report.json"
    rc = quality.main(["--generated_file", str(DATA / "generated.json"), "--prompt_file",
                       str(DATA / "prompts.json"), "--output", str(out)])
    assert rc == 0
    rep = json.loads(out.read_text())
    gen = json.loads((DATA / "generated.json").read_text())["samples"]
    assert [e["id"] for e in rep["samples"]] == [s["id"] for s in gen]
    assert all(isinstance(e["flags"], list) for e in rep["samples"])
    assert set(rep["summary"]["flags"]) == set(FLAGS)
    assert capsys.readouterr().out.strip() == str(out)


@pytest.mark.parametrize("content, expect", [
    ('[{"id": 1, "image": "a.jpg", "conversations": []}]', "not a generated-data file"),
    ('{"subgroups": [], "samples_x": []}', "no 'samples' list"),
    ("{not json", "not valid JSON"),
    ('{"mode": "vqq", "samples": [{"id": 0}]}', "unknown mode 'vqq'"),
    ('{"samples": [1, 2]}', "a sample is a int"),
    ("", "file is empty"),
])
def test_broken_or_foreign_files_are_one_line_and_exit_2(tmp_path: Path, capsys, content,
                                                         expect) -> None:
    f = tmp_path / "bad.json"
    f.write_text(content)
    rc = quality.main(["--generated_file", str(f), "--output", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and expect in lines[0], err
    assert "Traceback" not in err and not (tmp_path / "r.json").exists()


def test_missing_or_broken_inputs_are_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    for argv, expect in (
            (["--generated_file", str(tmp_path / "nope.json")], "generated-data file not found"),
            (["--generated_file", str(DATA / "generated.json"), "--prompt_file",
              str(tmp_path / "nope.json")], "prompt file not found"),
            (["--generated_file", str(DATA / "generated.json"), "--prompt_file", str(bad)],
             "not valid JSON"),
            (["--generated_file", str(DATA / "generated.json"), "--near_duplicate_threshold", "0"],
             "near_duplicate_threshold must be a number in (0, 1]")):
        rc = quality.main([*argv, "--output", str(tmp_path / "r.json")])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and expect in err, err


def test_prompt_file_of_another_mode_is_refused(tmp_path: Path, capsys) -> None:
    pf = tmp_path / "p.json"
    pf.write_text(json.dumps({"mode": "descript", "prompts": [{"prompt": ["a.jpg"]}]}))
    rc = quality.main(["--generated_file", str(DATA / "generated.json"), "--prompt_file",
                       str(pf), "--output", str(tmp_path / "r.json")])
    assert rc == 2 and "not the prompt file of this run" in capsys.readouterr().err


def test_bad_threshold_names_the_range() -> None:
    with pytest.raises(quality.ConfigError, match=r"near_duplicate_threshold must be a number in \(0, 1\]"):
        QualityConfig("x.json", near_duplicate_threshold=1.5)


# ----------------------------------------------------------------------------------------------
# Runs and grounding


def test_a_run_writes_the_report_beside_the_output_and_its_summary_into_the_manifest(
        tmp_path: Path) -> None:
    out = _write(tmp_path / "run.json", [_sample(0, "What is it?", "A cat."),
                                        _sample(1, "What is it?", "A cat.")])
    manifest = tmp_path / "run.manifest.json"
    manifest.write_text(json.dumps({"counts": {"samples": 2}}))
    dest = quality_after_run(out, manifest)
    assert dest == tmp_path / "manifests" / "run.quality.json"
    assert json.loads(dest.read_text())["summary"]["flags"]["exact_duplicate"] == 1
    m = json.loads(manifest.read_text())
    assert m["counts"] == {"samples": 2}
    assert m["quality"]["flags"]["exact_duplicate"] == 1 and m["quality"]["report"] == str(dest)


def test_a_broken_output_puts_the_error_in_the_manifest_not_the_run(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    out.write_text("[]")
    manifest = tmp_path / "run.manifest.json"
    manifest.write_text("{}")
    assert quality_after_run(out, manifest) is None
    assert "not a generated-data file" in json.loads(manifest.read_text())["quality"]["error"]


def test_grounding_is_the_cosine_of_cached_image_and_text_vectors(tmp_path: Path, tiny_clip) -> None:
    from mminstruct.embed.clip import embed_texts
    from mminstruct.embed.image_embed import embed_images

    root = tmp_path / "in"
    for k, kind in enumerate(("circle", "square", "circle")):
        save_jpeg(draw_shape(kind, k), root / f"img{k}.jpg")
    samples = [_sample(i, q, a, image=f"img{i % 3}.jpg") for i, (q, a) in enumerate([
        ("What shape is it?", "A red disc."), ("What colour is it?", "Blue."),
        ("Is it round?", "Yes."), ("What is drawn?", "A square."), ("Where is it?", "Left.")])]
    f = _write(tmp_path / "g.json", samples, input_folder=str(root))
    cache = tmp_path / "cache"
    rep = analyse(QualityConfig(str(f), clip_model=tiny_clip.spec, cache_dir=str(cache), lowest=3))
    scores = [s["scores"]["grounding"] for s in rep.samples]
    img = embed_images([root / f"img{i % 3}.jpg" for i in range(5)], tiny_clip.spec, cache=cache)
    txt = embed_texts([f"{s['conversations'][0]['value'][8:]} {s['conversations'][1]['value']}"
                       for s in samples], tiny_clip.spec, cache=cache)
    expect = (img.vectors.astype(np.float32) * txt).sum(axis=1)
    assert img.n_computed == 0  # everything was cached by the report
    assert np.allclose(scores, expect, atol=1e-3)
    g = rep.summary["grounding"]
    assert g["scored"] == 5 and len(g["lowest"]) == 3
    assert [x["score"] for x in g["lowest"]] == sorted(round(s, 4) for s in scores)[:3]


def test_grounding_reports_images_that_are_missing(tmp_path: Path, tiny_clip) -> None:
    f = _write(tmp_path / "g.json", [_sample(0, "What is it?", "A cat.", image="nope.jpg")],
               input_folder=str(tmp_path))
    rep = analyse(QualityConfig(str(f), clip_model=tiny_clip.spec, cache_dir=str(tmp_path / "c")))
    assert rep.samples[0]["scores"]["grounding"] is None
    assert rep.summary["grounding"]["images_not_embedded"] == 1


def test_write_report_is_valid_json(tmp_path: Path) -> None:
    f = _write(tmp_path / "g.json", [_sample(0, "What is it?", "A cat.")])
    p = write_report(analyse(QualityConfig(str(f))), tmp_path / "r.json")
    assert json.loads(p.read_text())["samples"][0]["flags"] == []


# ----------------------------------------------------------------------------------------------
# End to end: a run of every mode through data_generator against the local stub server

MODES = ("vqa", "vqa_task_desc", "tqa", "vqa_nr", "descript", "generic", "descript_task_desc")


@pytest.mark.parametrize("mode", MODES)
def test_a_data_generator_run_writes_its_quality_report(mode: str, stub, tmp_path: Path,
                                                       capsys) -> None:
    """Every mode's real output passes the shape checks (no sample is invalid), and the report
    lands beside the output with its counts in the manifest."""
    from mminstruct.commands.generate import main as gen_main
    from tests.fixtures.llm import gen_args, make_prompt_workspace

    ws = make_prompt_workspace(tmp_path, mode, 4, min_gen=2)
    assert gen_main(gen_args(ws, stub, prefix=f"q_{mode}")) == 0
    out = Path(capsys.readouterr().out.strip().splitlines()[-1])
    report = json.loads(report_path_for(out).read_text())
    samples = json.loads(out.read_text())["samples"]
    assert len(report["samples"]) == len(samples)
    assert report["summary"]["mode"] == mode
    assert report["summary"]["flags"]["invalid"] == 0, [
        e["invalid_reason"] for e in report["samples"] if "invalid" in e["flags"]][:3]
    assert report["summary"]["icl_checked"] is True
    manifest = json.loads(manifest_path_for(out).read_text())
    assert manifest["quality"]["flags"] == report["summary"]["flags"]


def test_no_quality_turns_the_report_off(stub, tmp_path: Path, capsys) -> None:
    from mminstruct.commands.generate import main as gen_main
    from tests.fixtures.llm import gen_args, make_prompt_workspace

    ws = make_prompt_workspace(tmp_path, "vqa_nr", 2)
    assert gen_main(gen_args(ws, stub, prefix="nq") + ["--no_quality"]) == 0
    out = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert not report_path_for(out).exists()
    assert "quality" not in json.loads(manifest_path_for(out).read_text())


def test_an_app_run_writes_its_quality_report(stub, monkeypatch, tmp_path: Path) -> None:
    from mminstruct.app.runs import start_run

    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "AZURE_OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    from tests.fixtures.llm import FAKE_KEY, make_prompt_workspace
    from tests.test_runs import _config, _wait

    ws = make_prompt_workspace(tmp_path, "vqa", 3, min_gen=1)
    start_run(ws.output_folder, _config(ws, stub, "qrun"), api_key=FAKE_KEY)
    done = _wait(ws.output_folder, "qrun", lambda i: not i.alive)
    assert done.state == "finished", done.message
    report = json.loads(report_path_for(done.output).read_text())
    assert len(report["samples"]) == 6
    assert json.loads(done.manifest.read_text())["quality"]["samples"] == 6


def test_batch_data_generator_reports_on_the_merged_output(stub, tmp_path: Path, capsys) -> None:
    from mminstruct.commands.batch import main as batch_main
    from tests.fixtures.llm import gen_args, make_prompt_workspace

    ws = make_prompt_workspace(tmp_path, "vqa", 6, min_gen=1)
    assert batch_main(gen_args(ws, stub, "--num_parallel", "2", prefix="qb")) == 0
    out = Path(capsys.readouterr().out.strip().splitlines()[-1])
    report = json.loads(report_path_for(out).read_text())
    assert len(report["samples"]) == len(json.loads(out.read_text())["samples"]) == 12
    assert json.loads(manifest_path_for(out).read_text())["quality"][
        "samples"] == 12
    shard_reports = list(report_path_for(out).parent.glob("qb_shard*.quality.json"))
    assert shard_reports == []  # one report, on the merged file
