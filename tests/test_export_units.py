"""``export/formats.py`` in small pieces: the parts mutation testing (docs/testing.md) showed no
in-process test checking — the rejected-ids file, names, the dataset_info entries and the report's
summary line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mminstruct.errors import ConfigError, DataFileError
from mminstruct.export.formats import (
    DATASET_INFO,
    ExportReport,
    Flagged,
    export_file,
    export_name,
    llava_dataset_info,
    load_rejected,
    next_free_name,
    prepare,
    sharegpt_dataset_info,
)
from mminstruct.generate.output import write_samples_file
from tests.fixtures.images import draw_shape, save_jpeg

# ----------------------------------------------------------------------------------------------
# The rejected-ids file (--rejected, the workspace's "rejected")


@pytest.mark.parametrize("content,want", [
    ([3, 1, 3], {1, 3}),                                               # a list of ids
    ({"gen_a.json": [4, 5], "gen_b.json": [9]}, {4, 5}),               # per output file
    ({"gen_b.json": [9]}, set()),                                      # none for this file
    ({"rejected": {"gen_a.json": [7]}, "other": 1}, {7}),              # a workspace's section
    ({"rejected": [2]}, {2}),
])
def test_load_rejected_reads_each_layout(tmp_path, content, want):
    p = tmp_path / "review.json"
    p.write_text(json.dumps(content), encoding="utf-8")
    assert load_rejected(p, tmp_path / "runs" / "gen_a.json") == want


@pytest.mark.parametrize("content", [[1, True], [1, "2"], {"gen_a.json": "1"}, "1", 3])
def test_load_rejected_refuses_what_is_not_a_list_of_integer_ids(tmp_path, content):
    p = tmp_path / "review.json"
    p.write_text(json.dumps(content))
    with pytest.raises(DataFileError) as e:
        load_rejected(p, "gen_a.json")
    assert str(e.value) == (f"{p}: expected a list of sample ids (integers), or an object mapping "
                            "output file names to such lists")


def test_load_rejected_names_a_file_that_is_not_json(tmp_path):
    p = tmp_path / "review.json"
    p.write_text("[1,", encoding="utf-8")
    with pytest.raises(DataFileError, match=rf"^{p}: not readable JSON: Expecting value"):
        load_rejected(p, "gen_a.json")
    p.write_text('{"gen_ä.json": [1]}', encoding="utf-8")  # UTF-8 whatever the locale
    assert load_rejected(p, "gen_ä.json") == {1}


# ----------------------------------------------------------------------------------------------
# Names


def test_export_names_and_the_next_free_name_of_a_folder(tmp_path):
    assert export_name("runs/gen_1.json", "llava") == "gen_1.reviewed.llava.json"
    assert export_name(Path("runs/gen_1.json"), "hf") == "gen_1.reviewed.hf"
    assert next_free_name(tmp_path / "e.json") == tmp_path / "e.json"  # free
    (tmp_path / "e.json").write_text("[]")
    assert next_free_name(tmp_path / "e.json") == tmp_path / "e_2.json"
    (tmp_path / "gen_1.reviewed.hf").mkdir()  # an hf export is a folder ('.hf' reads as a suffix)
    assert next_free_name(tmp_path / "gen_1.reviewed.hf") == tmp_path / "gen_1.reviewed_2.hf"
    (tmp_path / "out").mkdir()  # a name without a suffix
    assert next_free_name(tmp_path / "out") == tmp_path / "out_2"


# ----------------------------------------------------------------------------------------------
# dataset_info entries (what LLaMA-Factory reads)


def test_dataset_info_entries_written_out():
    assert sharegpt_dataset_info("s.json", True) == {
        "file_name": "s.json", "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                 "assistant_tag": "assistant"}}
    assert sharegpt_dataset_info("s.json", False)["columns"] == {"messages": "messages"}
    assert llava_dataset_info("l.json", True) == {
        "file_name": "l.json", "formatting": "sharegpt",
        "columns": {"messages": "conversations", "images": "image"}}
    assert llava_dataset_info("l.json", False)["columns"] == {"messages": "conversations"}


# ----------------------------------------------------------------------------------------------
# The report's summary line


def _report(tmp_path, **kw) -> ExportReport:
    return ExportReport(tmp_path / "out" / "e.json", "llava", 1234, 0, **kw)


@pytest.mark.parametrize("n,ids", [(5, "0, 1, 2, 3, 4"), (6, "0, 1, 2, 3, 4, … (1 more)"),
                                   (8, "0, 1, 2, 3, 4, … (3 more)")])
def test_summary_names_five_flagged_ids_then_counts_the_rest(tmp_path, n, ids):
    flagged = [(i, f"reason {i}") for i in range(n)]
    s = _report(tmp_path, flagged=flagged).summary()
    assert s == (f"wrote 1,234 llava record(s) to {tmp_path / 'out' / 'e.json'}; "
                 f"{n} flagged and left out (ids {ids}; first: reason 0)")


@pytest.mark.parametrize("paths,phrase", [("absolute", "image paths absolute"),
                                          ("embedded", "images embedded"),
                                          ("relative", "image paths relative to {base}")])
def test_summary_says_how_image_paths_are_written(tmp_path, paths, phrase):
    base = tmp_path / "imgs"
    s = _report(tmp_path, with_images=True, paths=paths, base=base).summary()
    assert s.split("; ")[1] == phrase.format(base=base)


def test_summary_with_rejected_note_and_llamafactory_arguments(tmp_path):
    rep = ExportReport(tmp_path / "e.json", "sharegpt", 3, 2, with_images=True, base=tmp_path / "m",
                       dataset_info=tmp_path / "dataset_info.json", dataset_name="e", note="a note")
    assert rep.summary() == "; ".join([
        f"wrote 3 sharegpt record(s) to {tmp_path / 'e.json'}", "2 rejected in review left out",
        f"image paths relative to {tmp_path / 'm'}", "a note",
        (f"LLaMA-Factory: entry 'e' in {tmp_path / 'dataset_info.json'}; train with dataset=e "
        f"dataset_dir={tmp_path} media_dir={tmp_path / 'm'}")])


# ----------------------------------------------------------------------------------------------
# dataset_info.json beside the export, and the hf folder


def _gen(tmp_path: Path, samples: list[dict], **header) -> Path:
    """A generated-data file of ``samples`` (images drawn under input/ when named)."""
    inp = tmp_path / "input"
    for s in samples:
        for k in range(1, 4):
            if f"image_{k}" in s:
                save_jpeg(draw_shape("circle", k), inp / s[f"image_{k}"])
    out = tmp_path / "output" / "gen.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_samples_file(out, {"image_folder": "", "len_samples": len(samples), "input_folder": str(inp),
                             **header}, iter(samples))
    return out


def _turns(q="Q?", a="A."):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


def test_dataset_info_entry_replaced_for_the_same_file_renamed_for_another(tmp_path):
    src = _gen(tmp_path, [{"id": 0, "conversations": _turns()}])
    out = tmp_path / "ex"
    out.mkdir()
    (out / DATASET_INFO).write_text(json.dumps({"e": {"file_name": "other.json"},
                                                "e_2": {"file_name": "other2.json"}}))
    rep = export_file(src, out / "e.json", "sharegpt")
    assert rep.dataset_name == "e_3"  # e and e_2 belong to other files
    rep = export_file(src, out / "e.json", "sharegpt", overwrite=True)
    assert rep.dataset_name == "e_3"  # the same file again: its entry is replaced, not added
    assert sorted(json.loads((out / DATASET_INFO).read_text())) == ["e", "e_2", "e_3"]


@pytest.mark.parametrize("content,match", [
    ("{oops", r"dataset_info\.json: cannot read it to add the export's entry: Expecting"),
    ("[1]", r"dataset_info\.json: a list, not an object of dataset entries$"),
])
def test_a_broken_dataset_info_is_named_and_left_as_it_was(tmp_path, content, match):
    src = _gen(tmp_path, [{"id": 0, "conversations": _turns()}])
    (tmp_path / DATASET_INFO).write_text(content)
    with pytest.raises(DataFileError, match=match):
        export_file(src, tmp_path / "e.json", "llava")
    assert (tmp_path / DATASET_INFO).read_text() == content


def test_hf_leaves_out_multi_image_rows_and_goes_on(tmp_path):
    pytest.importorskip("datasets")
    src = _gen(tmp_path, [
        {"id": 0, "image_1": "a.jpg", "image_2": "b.jpg", "conversations": _turns("<image>\n<image>\nQ?")},
        {"id": 1, "image_1": "a.jpg", "conversations": _turns("<image>\nQ1?")},
        {"id": 2, "image_1": "a.jpg", "image_2": "b.jpg", "image_3": "c.jpg",
         "conversations": _turns("<image>\n<image>\n<image>\nQ?")},
        {"id": 3, "conversations": _turns("Q3?")},
    ])
    rep = export_file(src, tmp_path / "hf", "hf")
    assert rep.written == 2
    assert rep.flagged == [(0, "2 images: the hf export holds one per row"),
                           (2, "3 images: the hf export holds one per row")]


@pytest.mark.parametrize("license", ["cc by", " ", "mit\tx"])
def test_hf_refuses_a_licence_that_is_not_an_id(tmp_path, license):
    src = _gen(tmp_path, [{"id": 0, "conversations": _turns()}])
    msg = f"--license {license.strip()!r} is not a licence id"
    with pytest.raises(ConfigError, match="^" + re.escape(msg)):
        export_file(src, tmp_path / "hf", "hf", license=license)
    assert not (tmp_path / "hf").exists()


# ----------------------------------------------------------------------------------------------
# One sample checked against the rules (prepare)


def test_a_question_without_a_token_keeps_its_text_and_gets_one_per_image(tmp_path):
    p = prepare({"id": 3, "image_1": "a.jpg", "conversations": _turns("What is it?", "A disc.")},
                tmp_path)
    assert p.turns == [("user", "What is it?"), ("assistant", "A disc.")]  # not the answer
    assert p.images == [tmp_path / "a.jpg"]
    text = prepare({"conversations": _turns("Q?", "A.")}, tmp_path)
    assert text.turns[0] == ("user", "Q?") and text.images == []


@pytest.mark.parametrize("sample,images", [
    ({"image": "a.jpg"}, ["IN/a.jpg"]),                            # LLaVA's image: a path
    ({"image": ["a.jpg", "", 3, "b.jpg"]}, ["IN/a.jpg", "IN/b.jpg"]),  # or a list
    ({"image": "/abs/a.jpg"}, ["/abs/a.jpg"]),                     # absolute: as it is
    ({"image": ""}, []),
])
def test_llava_image_keys_are_read_too(tmp_path, sample, images):
    p = prepare({**sample, "conversations": _turns("Q?", "A.")}, tmp_path / "IN")
    assert [str(i).replace(str(tmp_path / "IN"), "IN") for i in p.images] == images


@pytest.mark.parametrize("convs,reason", [
    (None, "no conversations"),
    ([], "no conversations"),
    ("<image>\nQ?", "no conversations"),
    ([{"from": "human", "value": 3}, {"from": "gpt", "value": "A."}], "turn 0 is not {from, value}"),
    ([{"from": "gpt", "value": "A."}, {"from": "human", "value": "Q?"}],
     "turn 0 is 'gpt'; roles must alternate user/assistant, starting with the user"),
    ([{"from": "human", "value": "Q?"}], "the last turn is the user's; it must be the assistant's"),
    ([{"from": "human", "value": "<image>\n<image>\nQ?"}, {"from": "gpt", "value": "A."}],
     "2 <image> token(s) in the first turn for 1 image(s): a literal one in the model's text"),
])
def test_a_sample_that_breaks_a_rule_is_flagged_with_the_reason(tmp_path, convs, reason):
    with pytest.raises(Flagged) as e:
        prepare({"image_1": "a.jpg", "conversations": convs}, tmp_path)
    assert str(e.value) == reason


def test_hf_rows_keep_subgroup_and_prompt_index(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    src = _gen(tmp_path, [{"id": 0, "keyword": "round", "prompt_idx": 4, "conversations": _turns()},
                          {"id": 1, "prompt_idx": "x", "conversations": _turns()}], mode="vqa_nr")
    export_file(src, tmp_path / "hf", "hf")
    rows = pq.read_table(sorted((tmp_path / "hf" / "data").glob("*.parquet"))).to_pylist()
    assert [(r["subgroup"], r["prompt_idx"], r["mode"]) for r in rows] == [
        ("round", 4, "vqa_nr"), ("", None, "vqa_nr")]
