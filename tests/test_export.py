"""Exports checked with the rules of the programs that read them: LLaMA-Factory (its ShareGPT
converter and mm_plugin: declared columns in every row, roles alternating user/assistant from the
user, one <image> per image; relative paths joined to media_dir = dataset_dir by default) and LLaVA
(``image`` relative to an image folder, human/gpt, one <image>) — for nr, vqa, tqa, descript and
multi-turn samples; plus the command line, names that never overwrite, and dataset_info.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mminstruct.export.formats import (DATASET_INFO, EXPORT_FORMATS, ExportExistsError, export_file,
                               main, next_free_name)
from mminstruct.generate.output import item_samples, write_samples_file
from mminstruct.data.modes import Mode
from mminstruct.data.records import load_data_file
from tests.conftest import REPO
from tests.fixtures.images import draw_shape, save_jpeg

# ---------------------------------------------------------------------------- the programs' rules


def llamafactory_rules(export: Path, entry: dict, media_dir: Path | None = None) -> list[dict]:
    """What LLaMA-Factory's SharegptDatasetConverter and mm_plugin require of each row."""
    rows = json.loads(export.read_text())
    media_dir = media_dir or export.parent  # LLaMA-Factory: media_dir defaults to dataset_dir
    cols, tags = entry["columns"], entry.get("tags", {})
    role, content = tags.get("role_tag", "from"), tags.get("content_tag", "value")
    user, assistant = tags.get("user_tag", "human"), tags.get("assistant_tag", "gpt")
    for r in rows:
        for col in cols.values():
            assert col in r, f"declared column {col!r} missing from a row: KeyError in LLaMA-Factory"
        msgs = r[cols["messages"]]
        assert len(msgs) % 2 == 0 and msgs, "Invalid message count"
        for k, m in enumerate(msgs):
            assert m[role] == (user if k % 2 == 0 else assistant), "Invalid role tag"
        images = r.get(cols["images"]) if "images" in cols else None
        images = [] if images is None else images if isinstance(images, list) else [images]
        tokens = sum(m[content].count("<image>") for m in msgs)
        assert tokens == len(images), "The number of images does not match the number of tokens"
        assert all("<image>" not in m[content] for m in msgs[1:])
        for img in images:
            assert os.path.isfile(os.path.join(media_dir, img)), img
    return rows


def llamafactory_rules_via_datasets(export: Path, entry: dict, media_dir: Path) -> list[dict]:
    """LLaMA-Factory reads a JSON file with ``datasets.load_dataset("json")`` (a key missing from a
    row is None there), then applies the converter's rules to every row."""
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("json", data_files=str(export), split="train",
                               cache_dir=str(export.parent / f".hf_cache_{export.stem}"))
    cols = entry["columns"]
    rows = list(ds)
    for r in rows:
        for col in cols.values():
            assert col in r
        msgs = r[cols["messages"]]
        assert msgs and len(msgs) % 2 == 0
        assert [m["from"] for m in msgs] == ["human", "gpt"] * (len(msgs) // 2)
        images = r[cols["images"]]
        images = [] if images is None else images if isinstance(images, list) else [images]
        assert sum(m["value"].count("<image>") for m in msgs) == len(images)
        for img in images:
            assert os.path.isfile(os.path.join(media_dir, img)), img
    return rows


def llava_rules(export: Path, image_folder: Path) -> list[dict]:
    """What LLaVA's LazySupervisedDataset requires: image joined to --image_folder, human/gpt
    alternating from the human, one <image> in the first human turn for an image sample."""
    rows = json.loads(export.read_text())
    for r in rows:
        conv = r["conversations"]
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2) and conv
        tokens = sum(t["value"].count("<image>") for t in conv)
        if "image" in r:
            assert tokens == 1 and conv[0]["value"].startswith("<image>\n")
            assert os.path.isfile(os.path.join(image_folder, r["image"])), r["image"]
        else:
            assert tokens == 0
    return rows


# ---------------------------------------------------------------------------- a generated file


def _generated(tmp_path: Path) -> Path:
    """A generated-data file holding vqa, vqa_nr, tqa, descript and multi-turn samples, a sample
    whose question was written "Q\\n<image>", and two with a literal <image> in the model's text."""
    inp = tmp_path / "input"
    for k in range(3):
        save_jpeg(draw_shape("circle", k), inp / "pool" / f"c{k}.jpg")
    samples = []
    base = dict(keyword="round", icl_indices=[0, 1])
    samples += item_samples(Mode.VQA, {"Q": "What shape?", "R": "It is round.", "A": "A circle."},
                            image="pool/c0.jpg", prompt_idx=0, **base)
    samples += item_samples(Mode.VQA_NR, {"Q": "What colour?", "A": "Red.", "choices": "A. red\nB. blue"},
                            image="pool/c1.jpg", prompt_idx=1, **base)
    samples += item_samples(Mode.TQA, {"I": "A chart of sales.", "Q": "Which year?", "R": "Peak.",
                                       "A": "2019"}, image=None, prompt_idx=2, **base)
    samples += item_samples(Mode.DESCRIPT, {"A": "A red disc on grey."}, image="pool/c2.jpg",
                            prompt_idx=3, dataset_description="shapes", **base)
    samples.append({"image_1": "pool/c0.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A disc."},
        {"from": "human", "value": "And its colour?"}, {"from": "gpt", "value": "Red."}],
        "prompt_idx": 4, **base})
    samples.append({"image_1": "pool/c1.jpg", "conversations": [
        {"from": "user", "value": "How many shapes?\n<image>"}, {"from": "assistant", "value": "One."}],
        "prompt_idx": 5, **base})
    samples.append({"image_1": "pool/c1.jpg", "conversations": [  # literal token in the answer
        {"from": "human", "value": "<image>\nWhat tag marks images?"},
        {"from": "gpt", "value": "The <image> tag."}], "prompt_idx": 6, **base})
    samples.append({"image_1": "pool/c2.jpg", "conversations": [  # literal token in the question
        {"from": "human", "value": "<image>\nIs <image> a token?"}, {"from": "gpt", "value": "Yes."}],
        "prompt_idx": 7, **base})
    samples = [{"id": i, **s} for i, s in enumerate(samples)]
    header = {"image_folder": "", "len_samples": len(samples), "start_idx": 0, "end_idx": 8,
              "num_prompts": 8, "mode": "vqa", "input_folder": str(inp)}
    out = tmp_path / "output" / "generated_data" / "gen_20250101_000000.json"
    out.parent.mkdir(parents=True)
    write_samples_file(out, header, iter(samples))
    return out


N_SAMPLES, FLAGGED = 10, {8, 9}  # vqa 2 + nr 1 + tqa 2 + descript 1 + multi 1 + end-token 1 + 2 flagged


@pytest.fixture()
def generated(tmp_path) -> Path:
    return _generated(tmp_path)


def _info(folder: Path) -> dict:
    return json.loads((folder / DATASET_INFO).read_text())


@pytest.mark.parametrize("paths", ["relative", "absolute", "image_root"])
def test_sharegpt_export_follows_llamafactory_rules(generated, tmp_path, paths):
    dest = tmp_path / "exports" / "syn.json"
    kw = {"relative": {}, "absolute": {"absolute_paths": True},
          "image_root": {"image_root": generated.parent.parent.parent / "input"}}[paths]
    report = export_file(generated, dest, "sharegpt", rejected=[0], **kw)
    assert report.written == N_SAMPLES - 1 - len(FLAGGED) and report.rejected == 1
    assert {i for i, _ in report.flagged} == FLAGGED
    assert "literal <image>" in report.flagged[0][1]
    entry = _info(dest.parent)["syn"]
    media_dir = Path(report.llamafactory_args.get("media_dir", dest.parent))
    rows = llamafactory_rules(dest, entry, media_dir)
    assert entry["columns"] == {"messages": "messages", "images": "images"}
    text_only = [r for r in rows if not r["images"]]
    assert len(text_only) == 2  # tqa: images [] so the declared column is in every row
    multi = [r for r in rows if len(r["messages"]) == 4]
    assert len(multi) == 1 and multi[0]["messages"][2]["content"] == "And its colour?"
    assert all(Path(i).is_absolute() == (paths == "absolute") for r in rows for i in r["images"])
    if paths == "relative":
        assert report.llamafactory_args == {"dataset": "syn", "dataset_dir": str(dest.parent),
                                            "media_dir": str(dest.parent)}
        assert "train with dataset=syn" in report.summary()


def test_text_only_export_declares_no_images_column(generated, tmp_path):
    # only the tqa samples (ids 3, 4) kept: LLaMA-Factory would raise KeyError: 'images'
    dest = tmp_path / "tqa.json"
    report = export_file(generated, dest, "sharegpt", rejected=set(range(10)) - {3, 4})
    entry = _info(tmp_path)["tqa"]
    assert report.written == 2 and "images" not in entry["columns"]
    rows = llamafactory_rules(dest, entry)
    assert all("images" not in r for r in rows)


@pytest.mark.parametrize("paths", ["relative", "absolute", "image_root"])
def test_llava_export_follows_llava_rules(generated, tmp_path, paths):
    root = generated.parent.parent.parent / "input"
    dest = tmp_path / "exports" / "llava.json"
    kw = {"relative": {}, "absolute": {"absolute_paths": True}, "image_root": {"image_root": root}}[paths]
    report = export_file(generated, dest, "llava", **kw)
    assert report.written == N_SAMPLES - len(FLAGGED)
    image_folder = root if paths == "image_root" else dest.parent
    rows = llava_rules(dest, image_folder)
    assert [r["id"] for r in rows] == [i for i in range(N_SAMPLES) if i not in FLAGGED]
    assert sum("image" not in r for r in rows) == 2
    end_token = next(r for r in rows if r["id"] == 7)  # "Q\n<image>" moved to the front
    assert end_token["conversations"][0]["value"] == "<image>\nHow many shapes?"
    # A LLaVA file mixing image and text-only rows gets its entry too: the text rows have no
    # 'image' key (LLaVA's rule), which datasets — LLaMA-Factory's reader — loads as None.
    assert report.dataset_info == dest.parent / DATASET_INFO
    entry = _info(dest.parent)[report.dataset_name]
    assert entry["columns"] == {"messages": "conversations", "images": "image"}
    mixed = llamafactory_rules_via_datasets(dest, entry, image_folder)
    assert sum(r["image"] is None for r in mixed) == 2
    # With image rows only, LLaMA-Factory reads the LLaVA file through its entry (from/value).
    only = tmp_path / "exports" / "only.json"
    export_file(generated, only, "llava", rejected={3, 4}, **kw)
    llamafactory_rules(only, _info(only.parent)["only"], image_folder)


def test_mmgen_export_resolves_from_where_it_is_written(generated, tmp_path):
    dest = tmp_path / "elsewhere" / "deep" / "mm.json"
    report = export_file(generated, dest, "mmgen", rejected=[1])
    assert report.written == N_SAMPLES - 1 - len(FLAGGED) and report.dataset_info is None
    raw = json.loads(dest.read_text())
    assert raw["len_samples"] == len(raw["samples"]) == report.written
    assert raw["rejected_in_review"] == 1 and not Path(raw["image_folder"]).is_absolute()
    df = load_data_file(dest, allow_outside_paths=True)
    assert df.report.skipped == 0 and len(df.records) == report.written
    export_file(generated, tmp_path / "abs.json", "mmgen", absolute_paths=True)
    assert Path(json.loads((tmp_path / "abs.json").read_text())["image_folder"]).is_absolute()


def test_never_overwrites_without_asking(generated, tmp_path):
    dest = tmp_path / "x.reviewed.sharegpt.json"
    export_file(generated, dest, "sharegpt")
    first = dest.read_bytes()
    with pytest.raises(ExportExistsError, match=r"exists; pass --overwrite.*x\.reviewed\.sharegpt_2\.json"):
        export_file(generated, dest, "sharegpt", rejected=[0])
    assert dest.read_bytes() == first
    assert next_free_name(dest) == tmp_path / "x.reviewed.sharegpt_2.json"
    (tmp_path / "x.reviewed.sharegpt_2.json").write_text("{}")
    assert next_free_name(dest).name == "x.reviewed.sharegpt_3.json"
    assert next_free_name(tmp_path / "new.json") == tmp_path / "new.json"
    export_file(generated, dest, "sharegpt", rejected=[0], overwrite=True)
    assert dest.read_bytes() != first


def test_dataset_info_keeps_other_entries(generated, tmp_path):
    (tmp_path / DATASET_INFO).write_text(json.dumps({"mine": {"file_name": "mine.json"},
                                                     "a": {"file_name": "other.json"}}))
    report = export_file(generated, tmp_path / "a.json", "sharegpt")
    info = _info(tmp_path)
    assert info["mine"] == {"file_name": "mine.json"} and info["a"] == {"file_name": "other.json"}
    assert report.dataset_name == "a_2" and info["a_2"]["file_name"] == "a.json"


# ---------------------------------------------------------------------------- command line


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "mminstruct.export", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)


def test_cli_exports_and_refuses_to_overwrite(generated, tmp_path):
    review = tmp_path / "review.json"
    review.write_text(json.dumps({"rejected": {generated.name: [0, 2]}}))
    args = ["--generated_file", str(generated), "--format", "sharegpt", "--output", "out/s.json",
            "--rejected", str(review)]
    r = _cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == tmp_path / "out" / "s.json"
    assert "2 rejected in review left out" in r.stderr and "2 flagged" in r.stderr
    assert len(json.loads((tmp_path / "out/s.json").read_text())) == N_SAMPLES - 2 - len(FLAGGED)
    r = _cli(*args, cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "exists; pass --overwrite" in r.stderr and "s_2.json" in r.stderr
    assert _cli(*args, "--overwrite", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("extra,match", [
    (["--format", "csv"], "unknown format 'csv'; choose one of: hf, llava, mmgen, sharegpt"),
    (["--format", "llava", "--absolute_paths", "--image_root", "x"], "not allowed with argument"),
    (["--format", "llava", "--rejected", "nope.json"], "nope.json: file not found"),
])
def test_cli_errors_are_one_line(generated, tmp_path, capsys, extra, match):
    try:
        rc = main(["--generated_file", str(generated), "--output", str(tmp_path / "o.json"), *extra])
    except SystemExit as e:  # argparse's own errors exit from parse_args
        rc = e.code
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and match in err


def test_formats_registry_is_the_review_pages():
    from mminstruct.app import review
    assert review.EXPORT_FORMATS == EXPORT_FORMATS == ("hf", "llava", "mmgen", "sharegpt")
    assert review.export_reviewed.__module__ == "mminstruct.app.review"


def test_mmgen_export_under_an_image_root(generated, tmp_path):
    root = generated.parent.parent.parent  # the folder above input/: image_1 gains "input/"
    dest = tmp_path / "x" / "mm.json"
    export_file(generated, dest, "mmgen", image_root=root)
    raw = json.loads(dest.read_text())
    assert raw["samples"][0]["image_1"] == "input/pool/c0.jpg"
    assert (dest.parent / raw["image_folder"] / raw["samples"][0]["image_1"]).resolve().is_file()


def _two_image_file(tmp_path: Path) -> Path:
    """A generated file with one two-image sample (MM-Gen's image_1, image_2) and a one-image one."""
    inp = tmp_path / "input"
    for k in range(3):
        save_jpeg(draw_shape("circle", k), inp / "pool" / f"c{k}.jpg")
    samples = [
        {"id": 0, "image_1": "pool/c0.jpg", "image_2": "pool/c1.jpg", "keyword": "pair",
         "prompt_idx": 0, "conversations": [
             {"from": "human", "value": "<image>\n<image>\nWhich is larger?"},
             {"from": "gpt", "value": "The second."}]},
        {"id": 1, "image_1": "pool/c2.jpg", "keyword": "one", "prompt_idx": 1, "conversations": [
            {"from": "human", "value": "<image>\nWhat shape?"}, {"from": "gpt", "value": "A circle."}]},
    ]
    header = {"image_folder": "", "len_samples": 2, "mode": "vqa_nr", "input_folder": str(inp)}
    out = tmp_path / "output" / "gen.json"
    out.parent.mkdir(parents=True)
    write_samples_file(out, header, iter(samples))
    return out


def test_a_multi_image_row_keeps_every_image_in_order_with_one_token_each(tmp_path):
    src = _two_image_file(tmp_path)
    dest = tmp_path / "exports" / "two.json"
    export_file(src, dest, "sharegpt")
    rows = llamafactory_rules(dest, _info(dest.parent)["two"])
    assert rows[0]["images"] == ["../input/pool/c0.jpg", "../input/pool/c1.jpg"]
    assert rows[0]["messages"][0]["content"] == "<image><image>Which is larger?"
    assert rows[1]["images"] == ["../input/pool/c2.jpg"]
    assert rows[1]["messages"][0]["content"] == "<image>What shape?"

    lv = tmp_path / "exports" / "two_llava.json"
    export_file(src, lv, "llava")
    rows = json.loads(lv.read_text())
    assert rows[0]["image"] == ["../input/pool/c0.jpg", "../input/pool/c1.jpg"]
    assert rows[0]["conversations"][0]["value"] == "<image>\n<image>\nWhich is larger?"
    assert rows[1]["image"] == "../input/pool/c2.jpg"  # one image: a path, LLaVA's own layout
    assert rows[1]["conversations"][0]["value"] == "<image>\nWhat shape?"

    mm = tmp_path / "exports" / "two_mm.json"
    export_file(src, mm, "mmgen", image_root=tmp_path / "input")
    s = json.loads(mm.read_text())["samples"][0]
    assert (s["image_1"], s["image_2"]) == ("pool/c0.jpg", "pool/c1.jpg")
