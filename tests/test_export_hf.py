"""The ``hf`` export read back by its consumers: ``datasets.load_dataset(OUT_DIR)`` for every prompt
mode (images decode to PIL, columns and features as the card declares, rows = samples − rejected),
``huggingface_hub``'s ``DatasetCard`` (and the metadata ``datasets`` reads from it), LLaMA-Factory's
loader rules on the ``messages`` column through the folder's ``dataset_info.json``, judge scores,
shards, and never replacing an export by accident."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("datasets")

from mminstruct.export import hf as hf  # noqa: E402
from mminstruct.errors import DataFileError  # noqa: E402
from mminstruct.export.formats import DATASET_INFO, ExportExistsError, export_file, main  # noqa: E402
from mminstruct.generate.manifest import sidecar_path  # noqa: E402
from mminstruct.generate.output import record_samples, write_samples_file  # noqa: E402
from mminstruct.data.modes import MODE_NAMES, Mode  # noqa: E402
from tests.fixtures.images import draw_shape, save_jpeg  # noqa: E402

COLUMNS = ["id", "image", "conversations", "messages", "subgroup", "mode", "source_run",
           "prompt_idx"]


def _generated(root: Path, mode: Mode, n_items: int = 3) -> Path:
    """A generated file of ``mode``: ``n_items`` prompts over two keywords, each its own image; one
    item a prompt (the conversation mode: two turns, one sample)."""
    inp = root / "input"
    samples = []
    for i in range(n_items):
        img = f"pool/c{i}.jpg"
        save_jpeg(draw_shape("circle" if i % 2 else "square", i), inp / img)
        turns = 2 if mode.one_sample_per_prompt else 1
        items = [{k: f"{k} text {i}.{t}" for k in mode.keys} for t in range(turns)]
        samples += record_samples(mode, {"items": items, "image": img, "prompt_idx": i,
                                         "keyword": ["round", "square"][i % 2],
                                         "icl_indices": [0]}, "shapes")
    samples = [{"id": k, **s} for k, s in enumerate(samples)]
    header = {"image_folder": "", "len_samples": len(samples), "start_idx": 0,
              "end_idx": n_items, "num_prompts": n_items, "mode": mode.value,
              "input_folder": str(inp), "model": "gpt-4o-mini", "run": f"{mode.value}_run"}
    out = root / "output" / "generated_data" / f"{mode.value}_20250101_000000.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_samples_file(out, header, iter(samples))
    return out


def _load(folder: Path):
    """``datasets.load_dataset(OUT_DIR)``, with a cache of its own (datasets reads the cache
    setting once, at import; a shared cache could answer for another test's folder)."""
    import datasets

    return datasets.load_dataset(str(folder), split="train", cache_dir=str(_cache(folder)))


def _cache(folder: Path) -> Path:
    return folder.parent / f"hf_cache_{folder.name}"


@pytest.mark.parametrize("mode", MODE_NAMES)
def test_load_dataset_reads_every_prompt_modes_export(tmp_path, mode):
    from PIL import Image

    m = Mode(mode)
    src = _generated(tmp_path, m)
    n = json.loads(src.read_text())["len_samples"]
    report = export_file(src, tmp_path / "hf", "hf", rejected=[0])
    ds = _load(tmp_path / "hf")
    assert len(ds) == report.written == n - 1
    assert ds.column_names == COLUMNS
    assert ds.features == hf.features([])
    assert ds.features["image"].__class__.__name__ == "Image"
    for row in ds:
        if m.carries_candidate:
            assert isinstance(row["image"], Image.Image) and row["image"].size == (96, 96)
            assert row["conversations"][0]["value"].startswith("<image>\n")
            assert row["messages"][0]["content"].startswith("<image>")
        else:  # tqa: the model imagined the image; the row has none
            assert row["image"] is None and "<image>" not in row["messages"][0]["content"]
        turns = 4 if m.one_sample_per_prompt else 2  # conversation: two turns in one row
        assert len(row["conversations"]) == len(row["messages"]) == turns
        assert row["mode"] == mode and row["source_run"] == f"{mode}_run"
        assert row["subgroup"] in ("round", "square")
    assert "0" not in set(ds["id"])  # rejected


def test_the_card_passes_validation_and_declares_what_datasets_reads(tmp_path):
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    src = _generated(tmp_path, Mode.VQA, n_items=4)
    export_file(src, tmp_path / "hf", "hf", license="cc-by-4.0")
    card = DatasetCard.load(tmp_path / "hf" / "README.md", ignore_metadata_errors=False)
    data = card.data
    assert data.license == "cc-by-4.0"
    sizes = json.loads((Path(__import__("datasets").__file__).parent / "utils" / "resources"
                        / "size_categories.json").read_text())
    assert data.size_categories == ["n<1K"] and set(data.size_categories) <= set(sizes)
    assert data.task_categories == ["visual-question-answering", "image-text-to-text"]
    configs = MetadataConfigs.from_dataset_card_data(data)
    assert configs["default"]["data_files"] == [{"split": "train", "path": "data/train-*"}]
    info = DatasetInfosDict.from_dataset_card_data(data)["default"]
    ds = _load(tmp_path / "hf")
    assert info.features == ds.features and info.splits["train"].num_examples == len(ds) == 8
    body = card.text
    assert "Generator model: `gpt-4o-mini`" in body and "Prompt mode: `vqa`" in body
    assert "| round | 4 |" in body and "| square | 4 |" in body
    assert "mminstruct export --generated_file" in body and "--format hf" in body
    assert "hf upload" in body
    try:  # the Hub's own validation, where the Hub is reachable (never in CI)
        card.validate()
    except Exception as e:  # noqa: BLE001  (offline: connection / offline-mode errors)
        if "400" in str(e) or isinstance(e, ValueError) and "offline" not in str(e).lower():
            raise
        pytest.skip(f"Hub validation not reachable here; the local checks ran ({type(e).__name__})")


def test_card_records_the_quality_summary_and_the_licence_setting(tmp_path, capsys):
    src = _generated(tmp_path, Mode.VQA_NR)
    qpath = sidecar_path(src, ".quality.json")
    qpath.parent.mkdir(parents=True, exist_ok=True)
    qpath.write_text(json.dumps({"summary": {"samples": 3, "flagged": 1,
                                             "flags": {"duplicate": 1, "refusal": 0},
                                             "questions": {"distinct_1": 0.5, "distinct_2": 0.75}},
                                 "samples": []}))
    assert main(["--generated_file", str(src), "--format", "hf", "--output",
                 str(tmp_path / "hf"), "--license", "mit"]) == 0
    assert Path(capsys.readouterr().out.strip()) == tmp_path / "hf"
    text = (tmp_path / "hf" / "README.md").read_text()
    assert "license: mit" in text and "1 of 3 samples of the run flagged (duplicate 1)" in text
    assert "--license mit" in text


def llamafactory_rows(folder: Path) -> list[dict]:
    """What LLaMA-Factory does with the folder's dataset_info.json entry: ``file_name`` a folder →
    its files loaded with ``datasets`` (parquet), then SharegptDatasetConverter + mm_plugin rules:
    declared columns present, roles alternate from the user, one <image> per image, in the first
    turn; images (decoded by ``datasets``) are PIL images or None."""
    import datasets
    from PIL import Image

    [(name, entry)] = json.loads((folder / DATASET_INFO).read_text()).items()
    files = sorted(str(p) for p in (folder / entry["file_name"]).iterdir())
    ds = datasets.load_dataset("parquet", data_files=files, split="train",
                               cache_dir=str(_cache(folder)) + "_lf")
    cols, tags = entry["columns"], entry["tags"]
    rows = []
    for r in ds:
        for col in cols.values():
            assert col in r, f"declared column {col!r} missing: KeyError in LLaMA-Factory"
        msgs = r[cols["messages"]]
        assert msgs and len(msgs) % 2 == 0, "Invalid message count"
        for k, m in enumerate(msgs):
            assert m[tags["role_tag"]] == (tags["user_tag"] if k % 2 == 0 else tags["assistant_tag"])
        images = r[cols["images"]]
        images = [] if images is None else images if isinstance(images, list) else [images]
        assert all(isinstance(i, Image.Image) for i in images)
        tokens = sum(m[tags["content_tag"]].count("<image>") for m in msgs)
        assert tokens == len(images), "The number of images does not match the number of tokens"
        assert all("<image>" not in m[tags["content_tag"]] for m in msgs[1:])
        rows.append(r)
    return rows


@pytest.mark.parametrize("mode", ["vqa", "tqa", "descript"])
def test_llamafactory_reads_the_messages_column(tmp_path, mode):
    src = _generated(tmp_path, Mode(mode))
    report = export_file(src, tmp_path / "hf", "hf")
    assert report.llamafactory_args == {"dataset": "hf", "dataset_dir": str(tmp_path / "hf")}
    assert len(llamafactory_rows(tmp_path / "hf")) == report.written > 0


def test_judge_scores_beside_the_run_become_columns(tmp_path):
    src = _generated(tmp_path, Mode.VQA_NR)
    scores = sidecar_path(src, hf.SCORES_SUFFIX)
    scores.parent.mkdir(parents=True, exist_ok=True)
    scores.write_text("\n".join(json.dumps(x) for x in [
        {"id": 0, "scores": {"correctness": 5, "visual_faithfulness": 4}, "overall": 4.5},
        {"id": 1, "scores": {"correctness": 2, "visual_faithfulness": 3}, "overall": 2.5},
        {"id": 2, "scores": None, "error": "image_error"}]) + "\n")
    export_file(src, tmp_path / "hf", "hf")
    ds = _load(tmp_path / "hf")
    assert ds.features == hf.features(["correctness", "visual_faithfulness"])
    by_id = {r["id"]: r for r in ds}
    assert by_id["0"]["scores"] == {"correctness": 5, "visual_faithfulness": 4}
    assert by_id["0"]["overall"] == 4.5
    assert by_id["2"]["scores"] == {"correctness": None, "visual_faithfulness": None}
    assert by_id["2"]["overall"] is None
    text = (tmp_path / "hf" / "README.md").read_text()
    assert "correctness 3.50" in text and "overall 3.50" in text
    # a bad line is one error naming the file and line, and nothing is written
    scores.write_text('{"id": 0, "scores": {"correctness": "high"}}\n')
    with pytest.raises(DataFileError, match=r"scores.jsonl: line 1"):
        export_file(src, tmp_path / "hf2", "hf")
    assert not (tmp_path / "hf2").exists()


def test_shards_stay_under_the_limit_and_load_together(tmp_path, monkeypatch):
    monkeypatch.setattr(hf, "SHARD_BYTES", 3_000)  # a few rows a shard
    src = _generated(tmp_path, Mode.DESCRIPT, n_items=9)
    report = export_file(src, tmp_path / "hf", "hf")
    shards = sorted((tmp_path / "hf" / "data").iterdir())
    assert len(shards) >= 3
    assert [p.name for p in shards] == [f"train-{k:05d}-of-{len(shards):05d}.parquet"
                                        for k in range(len(shards))]
    ds = _load(tmp_path / "hf")
    assert len(ds) == report.written == 9
    assert sorted(ds["id"], key=int) == [str(i) for i in range(9)]


def test_an_existing_export_is_replaced_only_when_asked_and_a_failure_keeps_it(tmp_path):
    src = _generated(tmp_path, Mode.VQA_NR)
    dest = tmp_path / "hf"
    export_file(src, dest, "hf")
    before = (dest / "README.md").read_text()
    with pytest.raises(ExportExistsError, match="pass --overwrite"):
        export_file(src, dest, "hf")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    with pytest.raises(DataFileError):
        export_file(src, dest, "hf", overwrite=True, scores=bad)
    assert (dest / "README.md").read_text() == before  # the failed export changed nothing
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".hf")] == []
    export_file(src, dest, "hf", overwrite=True, rejected=[0])
    assert len(_load(dest)) == 2
    empty = tmp_path / "made_for_it"
    empty.mkdir()  # an empty folder is not an export to protect
    assert export_file(src, empty, "hf").written == 3


def test_missing_image_files_are_left_out_and_reported(tmp_path):
    src = _generated(tmp_path, Mode.VQA_NR)
    (tmp_path / "input" / "pool" / "c1.jpg").unlink()
    report = export_file(src, tmp_path / "hf", "hf")
    assert report.written == 2 and [i for i, _ in report.flagged] == [1]
    assert "cannot be read" in report.summary()
    assert len(_load(tmp_path / "hf")) == 2


def test_no_dataset_info_leaves_llamafactorys_entry_out(tmp_path):
    src = _generated(tmp_path, Mode.VQA_NR)
    report = export_file(src, tmp_path / "hf", "hf", dataset_info=False)
    assert not (tmp_path / "hf" / DATASET_INFO).exists() and report.llamafactory_args == {}
    assert len(_load(tmp_path / "hf")) == 3
