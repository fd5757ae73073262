"""Shards run by batch_data_generator and merged; the merge command; exports to LLaVA and
LLaMA-Factory ShareGPT; reading outputs back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mminstruct.commands import batch as bdg
from mminstruct.commands.generate import main as gen_main
from mminstruct.export.formats import export_file
from mminstruct.generate import iter_output, load_output, merge_outputs
from mminstruct.data.records import load_data_file
from mminstruct.generate.output import MergeError
from mminstruct.generate.shards import split_range
from mminstruct.generate.manifest import manifest_path_for
from tests.fixtures.llm import gen_args, make_prompt_workspace


def _out(capsys) -> Path:
    return Path(capsys.readouterr().out.strip().splitlines()[-1])


def test_split_range_is_contiguous_and_even() -> None:
    assert split_range(0, 10, 3) == [(0, 4), (4, 3), (7, 3)]
    assert split_range(5, 2, 4) == [(5, 1), (6, 1)]
    assert split_range(0, 12, 12) == [(k, 1) for k in range(12)]


def test_batch_data_generator_shards_and_merges(stub, tmp_path: Path, capsys) -> None:
    n = 23
    ws = make_prompt_workspace(tmp_path, "vqa", n, min_gen=2, behaviours={5: "garbage!"})
    args = gen_args(ws, stub, "--num_parallel", "4", prefix="big", concurrency=6)
    assert bdg.main(args) == 4  # prompt 5 failed for good: the exit says so
    out = _out(capsys)
    data = json.loads(out.read_text())
    samples = data["samples"]
    idx = [s["prompt_idx"] for s in samples]
    assert sorted(set(idx)) == [i for i in range(n) if i != 5]
    assert len(samples) == data["len_samples"] == (n - 1) * 2 * 2
    assert [s["id"] for s in samples] == list(range(len(samples)))
    assert idx == sorted(idx)  # shard order = prompt order
    assert (data["start_idx"], data["end_idx"], data["num_prompts"]) == (0, n, n)
    assert stub.stats()["max_in_flight"] <= 6  # one concurrency bound across all shards
    shard_outputs = sorted((ws.output_folder / "generated_data").glob("big_shard_*_of_04_*.json"))
    assert len(shard_outputs) == 4
    assert not list((ws.output_folder / "generated_data").glob("*.manifest.json"))  # in manifests/
    manifest = json.loads(manifest_path_for(out).read_text())
    assert manifest["counts"]["by_outcome"] == {"ok": n - 1, "bad_json": 1}
    assert len(manifest["shards"]) == 4

    # the merge command finds the shard outputs by prefix and gives the same samples
    assert bdg.main(["merge", "--output_folder", str(ws.output_folder),
                     "--file_prefix", "big"]) == 0
    merged = _out(capsys)
    assert merged != out and json.loads(merged.read_text())["samples"] == samples


def test_merge_keeps_each_prompt_once(stub, tmp_path: Path, capsys) -> None:
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 6, min_gen=1)
    assert gen_main(gen_args(ws, stub, "--num_prompts", "4", prefix="a")) == 0
    a = _out(capsys)
    assert gen_main(gen_args(ws, stub, "--start_idx", "2", prefix="b")) == 0
    b = _out(capsys)
    summary = merge_outputs([a, b], tmp_path / "m.json")
    data = load_output(summary.path)
    assert sorted(s["prompt_idx"] for s in data.samples) == list(range(6))
    assert summary.duplicates_dropped == 2
    assert any("overlap" in w for w in summary.warnings)
    other = make_prompt_workspace(tmp_path / "o", "generic", 1, min_gen=1)
    assert gen_main(gen_args(other, stub, prefix="c")) == 0
    c = _out(capsys)
    with pytest.raises(MergeError, match="different modes"):
        merge_outputs([a, c], tmp_path / "bad.json")


def test_merge_command_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert bdg.main(["merge", "--output_folder", str(tmp_path), "--file_prefix", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no shard outputs" in err


def test_exports(stub, tmp_path: Path, capsys) -> None:
    ws = make_prompt_workspace(tmp_path, "vqa", 3, min_gen=1)
    assert gen_main(gen_args(ws, stub)) == 0
    out = _out(capsys)
    samples = list(iter_output(out))

    llava = tmp_path / "exports" / "llava.json"
    assert export_file(out, llava, "llava").written == len(samples)
    recs = json.loads(llava.read_text())
    assert set(recs[0]) == {"id", "image", "conversations"}
    # the LLaVA loader reads it back, paths resolving from the export's folder
    df = load_data_file(llava, allow_outside_paths=True)
    assert df.report.skipped == 0 and len(df.records) == len(samples)

    share = tmp_path / "sharegpt.json"
    report = export_file(out, share, "sharegpt", absolute_paths=True)
    assert report.written == len(samples)
    recs = json.loads(share.read_text())
    for r, s in zip(recs, samples):
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
        assert r["messages"][0]["content"].count("<image>") == len(r["images"]) == 1
        assert Path(r["images"][0]).is_absolute() and Path(r["images"][0]).is_file()
        assert r["messages"][1]["content"] == s["conversations"][1]["value"]
    info = json.loads((tmp_path / "dataset_info.json").read_text())["sharegpt"]
    assert info["formatting"] == "sharegpt" and info["file_name"] == "sharegpt.json"
    assert info["columns"] == {"messages": "messages", "images": "images"}


def test_text_only_samples_export_without_images(stub, tmp_path: Path, capsys) -> None:
    ws = make_prompt_workspace(tmp_path, "tqa", 2, min_gen=1)
    assert gen_main(gen_args(ws, stub)) == 0
    out = _out(capsys)
    export_file(out, tmp_path / "l.json", "llava")
    export_file(out, tmp_path / "s.json", "sharegpt")
    assert all("image" not in r for r in json.loads((tmp_path / "l.json").read_text()))
    for r in json.loads((tmp_path / "s.json").read_text()):
        assert "images" not in r and "<image>" not in r["messages"][0]["content"]
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert "images" not in info["s"]["columns"] and "images" not in info["l"]["columns"]