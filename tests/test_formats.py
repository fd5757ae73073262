"""Data, task and prompt files: the real fixtures, every bad-input case, and MM-Gen compatibility.

The real-fixture tests run on ``fixture_tree``: the tree built from ``tests/data`` (always) and the
originals in ``../shared/fixtures/real`` (when present; required under ``CI=true``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mminstruct.errors import DataFileError
from mminstruct.data.formats import (PromptEntry, PromptFile, Subgroup, TaskFile, is_prompt_image,
                                load_prompt_file, load_task_file, save_prompt_file, save_task_file,
                                task_records)
from mminstruct.data.records import load_data_file, parse_record
from mminstruct.data.modes import Mode
from tests.fixtures.images import draw_shape, save_jpeg

#: file → (records, records loaded with the default options: images resolve against the file's
#: own folder, so files whose images live elsewhere or are not shipped load none); None: refused.
EXPECTED_LOAD = {
    "hiyouga__LLaMA-Factory/data/mllm_demo.json": (6, 6),
    "hiyouga__LLaMA-Factory/data/llava_instruct_100.json": (100, 0),  # COCO images not shipped
    "sjoshi804__MM-Gen/task_files/ai2d_gen_single_subgroup_2024_09_18_13-58-08.json": (100, 0),
    "sjoshi804__MM-Gen/task_files/spatial_map_gen_task_desc_2024_09_19_02-09-58.json": (300, 0),
    "sjoshi804__MM-Gen/task_files/chartqa_gen_task_desc_5cap_per_img.json": (1920, 0),
    "zjysteven__lmms-finetune/example_data/single_image.json": (2, 0),  # under images/, not here
    "zjysteven__lmms-finetune/example_data/multi_images.json": (2, 0),
    "zjysteven__lmms-finetune/example_data/single_image_has_text_only.json": (4, 2),  # text rows
    "InternLM__InternLM-XComposer/finetune/data/single_turn_single_image_example.json": (2, 0),
    "InternLM__InternLM-XComposer/finetune/data/multi_turn_multi_images_example.json": (2, 0),
    "InternLM__InternLM-XComposer/finetune/data/only_text_example.json": (2, 2),
    "InternLM__xtuner/tests/resource/mllm_sft_single_image_example_data.jsonl": None,
    "InternLM__xtuner/tests/resource/mllm_sft_multi_image_example_data.jsonl": None,
}
ALL_FIXTURE_FILES = list(EXPECTED_LOAD)


@pytest.mark.parametrize("rel", ALL_FIXTURE_FILES)
def test_every_real_file_loads_with_a_report_or_is_refused_in_one_line(fixture_tree, rel):
    path = fixture_tree / rel
    try:
        df = load_data_file(path)
    except DataFileError as e:
        msg = str(e)
        assert "\n" not in msg and str(path) in msg
        assert EXPECTED_LOAD[rel] is None, f"refused: {msg}"  # xtuner's are the only near-misses
        return
    report = df.report
    assert (report.total, report.loaded) == EXPECTED_LOAD[rel]
    assert report.total == report.loaded + report.skipped == len(df.records) + len(report.problems)
    # every skip names its record and a reason
    for p in report.problems:
        assert str(p).startswith(f"record {p.index}") and ":" in str(p)


def test_xtuner_content_parts_refused_with_the_reason(fixture_tree):
    with pytest.raises(DataFileError, match="content parts.*OpenAI/xtuner"):
        load_data_file(fixture_tree
                       / "InternLM__xtuner/tests/resource/mllm_sft_single_image_example_data.jsonl")


def test_llama_factory_messages_layout(fixture_tree):
    df = load_data_file(fixture_tree / "hiyouga__LLaMA-Factory/data/mllm_demo.json")
    assert len(df.records) == 6 and df.report.skipped == 0
    rec = df.records[0]
    assert rec.id is None and rec.images[0] == "mllm_demo_data/1.jpg"
    assert [t.role for t in rec.turns] == ["human", "gpt", "human", "gpt"]
    assert len(rec.qa_pairs()) == 2
    assert sorted(len(r.images) for r in df.records) == [1, 1, 1, 1, 2, 2]  # duplicates kept
    sample = rec.to_sample()
    assert sample["image_1"] == "mllm_demo_data/1.jpg" and "messages" not in sample
    assert sample["conversations"][0]["from"] == "human"


def test_llava_instruct_excerpt_without_images(fixture_tree):
    df = load_data_file(fixture_tree / "hiyouga__LLaMA-Factory/data/llava_instruct_100.json")
    assert df.report.total == 100 and df.report.skipped == 100
    assert df.report.reasons() == {"image missing": 100}
    # structure alone is valid LLaVA: every record parses, zero-padded string ids kept as strings
    raw = json.loads((fixture_tree / "hiyouga__LLaMA-Factory/data/llava_instruct_100.json").read_text())
    recs = [parse_record(i, r) for i, r in enumerate(raw)]
    assert isinstance(recs[0].id, str) and len(recs[0].id) == 12 and recs[0].id.startswith("0")
    assert max(len(r.turns) for r in recs) == 10 and min(len(r.turns) for r in recs) == 2


def test_lmms_finetune_resolves_with_image_folder_and_hints_without(fixture_tree):
    path = fixture_tree / "zjysteven__lmms-finetune/example_data/multi_images.json"
    df = load_data_file(path)
    assert df.report.loaded == 0 and any("images" in h for h in df.report.hints)
    df = load_data_file(path, image_folder="images")
    assert df.report.skipped == 0
    assert sorted(len(r.images) for r in df.records) == [2, 4]
    # lying extensions (PNG/WEBP saved as .jpg) still load
    df = load_data_file(path.with_name("single_image.json"), image_folder="images")
    assert df.report.loaded == 2
    df = load_data_file(path.with_name("single_image_has_text_only.json"), image_folder="images")
    assert df.report.loaded == 4 and sum(not r.images for r in df.records) == 2


def test_internlm_bot_role_and_parent_folder(fixture_tree):
    base = fixture_tree / "InternLM__InternLM-XComposer/finetune"
    df = load_data_file(base / "data/multi_turn_multi_images_example.json", input_folder=base)
    assert df.report.skipped == 0 and all(len(r.images) == 2 for r in df.records)
    assert {t.role for r in df.records for t in r.turns} == {"human", "gpt"}
    df = load_data_file(base / "data/only_text_example.json")
    assert df.report.loaded == 2 and all(not r.images for r in df.records)


def test_mmgen_task_files_load(fixture_tree):
    folder = fixture_tree / "sjoshi804__MM-Gen/task_files"
    chart = load_task_file(folder / "chartqa_gen_task_desc_5cap_per_img.json")
    assert [s.keyword for s in chart.subgroups] == ["bar chart", "pie chart", "line chart"]
    assert sum(len(s.reference_sample_idx) for s in chart.subgroups) == len(chart.samples) == 1920
    records, problems = task_records(chart)
    assert not problems and records[0].turns[0].role == "human"  # user/assistant inside 'from'
    spatial = load_task_file(folder / "spatial_map_gen_task_desc_2024_09_19_02-09-58.json")
    assert task_records(spatial)[0][0].id == "seed_0_w_text_1"
    ai2d = load_task_file(folder / "ai2d_gen_single_subgroup_2024_09_18_13-58-08.json")
    assert task_records(ai2d)[0][0].id is None and len(ai2d.subgroups[0].candidate_image_paths) == 3922


def _write(tmp_path: Path, obj, name="data.json") -> Path:
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


def _rec(image="a.jpg", q="<image>\nWhat?", a="This.", **extra):
    r = {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}], **extra}
    if image is not None:
        r["image"] = image
    return r


@pytest.fixture()
def folder(tmp_path, odd_images):
    save_jpeg(draw_shape("circle", 0), tmp_path / "a.jpg")
    for p in odd_images.decodable + odd_images.broken:
        shutil.copy(p, tmp_path / p.name)
    return tmp_path


def test_bad_records_are_skipped_and_named_the_rest_load(folder, odd_images):
    records = [
        _rec(id=1),
        "not a record",
        _rec(id=2.5),
        _rec(image=7, id=3),
        {"id": 4, "image": "a.jpg", "conversations": "hi"},
        _rec(id=5, q="x", a="   "),
        {"id": 6, "image": "a.jpg", "conversations": [{"from": "gpt", "value": "only an answer"}]},
        _rec(image="missing.jpg", id=7),
        _rec(image="zero.jpg", id=8),
        _rec(image="bomb.png", id=9),
        _rec(image="notes.png", id=10),
        _rec(image="../a.jpg", id=11),
        _rec(image=str(folder / "a.jpg"), id=12),
        _rec(image=odd_images.unicode_name.name, id=13),
        _rec(image=None, id=14),
        {"id": 15, "image": "a.jpg", "conversations": [{"from": "robot", "value": "hi"}]},
        _rec(image=["a.jpg", "cmyk.jpg"], id=16),
    ]
    df = load_data_file(_write(folder, records))
    loaded = {r.id for r in df.records}
    assert loaded == {1, 13, 14, 16}
    reasons = {p.id if p.index != 1 else "str": p.reason for p in df.report.problems}
    assert reasons["str"].startswith("wrong type: record is a str")
    assert "id is a float" in reasons[2.5]
    assert "'image' holds a int" in reasons[3]
    assert "'conversations' is a str" in reasons[4]
    assert reasons[5].startswith("empty answer")
    assert reasons[6] == "no human turn"
    assert reasons[7].startswith("image missing")
    assert "empty (0 bytes)" in reasons[8]
    assert "decompression bomb" in reasons[9]
    assert "not a readable image" in reasons[10]
    assert reasons[11].startswith("unsafe path") and "escapes" in reasons[11]
    assert reasons[12].startswith("unsafe path") and "absolute" in reasons[12]
    assert "unknown role 'robot'" in reasons[15] and "choose one of" in reasons[15]
    summary = df.report.summary()
    assert "4 of 17 records loaded, 13 skipped" in summary


def test_outside_paths_allowed_only_with_the_flag(folder, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    save_jpeg(draw_shape("square", 1), outside / "o.jpg")
    (folder / "sub").mkdir()
    records = [_rec(image=str(outside / "o.jpg")), _rec(image="../a.jpg")]
    p = _write(folder / "sub", records)
    assert load_data_file(p).report.loaded == 0
    assert load_data_file(p, allow_outside_paths=True).report.loaded == 2


def test_symlink_escape_is_refused(folder, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside2")
    save_jpeg(draw_shape("square", 2), outside / "o.jpg")
    (folder / "link.jpg").symlink_to(outside / "o.jpg")
    df = load_data_file(_write(folder, [_rec(image="link.jpg")]))
    assert df.report.loaded == 0 and "escapes" in df.report.problems[0].reason


@pytest.mark.parametrize("text,match", [
    ('[{"image": "a.jpg", "conversations": [', r"not valid JSON \(line 1, column"),
    ("", "file is empty"),
    ('{"foo": 1, "bar": 2}', "without a 'samples' list.*keys found: bar, foo"),
    ("42", "top-level JSON is int"),
])
def test_unloadable_files_get_one_line(tmp_path, text, match):
    with pytest.raises(DataFileError, match=match) as e:
        load_data_file(_write(tmp_path, text))
    assert "\n" not in str(e.value) and "data.json" in str(e.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DataFileError, match="file not found"):
        load_data_file(tmp_path / "nope.json")
    with pytest.raises(DataFileError, match="is a folder"):
        load_data_file(tmp_path)


def test_jsonl_with_a_bad_line(folder):
    lines = [json.dumps(_rec(id=1)), "{broken", json.dumps(_rec(id=3))]
    df = load_data_file(_write(folder, "\n".join(lines) + "\n", name="d.jsonl"))
    assert [r.id for r in df.records] == [1, 3]
    assert df.report.problems[0].index == 1 and "bad JSON on line 2" in df.report.problems[0].reason


def test_samples_object_with_image_folder_and_skill(folder):
    (folder / "imgs").mkdir()
    shutil.copy(folder / "a.jpg", folder / "imgs" / "b.jpg")
    df = load_data_file(_write(folder, {"image_folder": "imgs", "skill": "shapes",
                                        "samples": [_rec(image="b.jpg", id=0)]}))
    assert df.dataset_description == "shapes" and df.report.loaded == 1
    assert df.image_path(df.records[0]) == (folder / "imgs" / "b.jpg").resolve()


def _task(n=4) -> TaskFile:
    samples = [parse_record(i, _rec(image=f"{i}.jpg", id=i)).to_sample() for i in range(n)]
    return TaskFile("imgs", "shapes", [Subgroup("circle", [0, 1], ["pool/c.jpg"], {"candidate_scores": [0.3]}),
                                       Subgroup("square", [2, 3], [])], samples, {"mminstruct": {"v": 1}})


def test_task_file_round_trip_and_mmgen_reader(tmp_path):
    path = save_task_file(_task(), tmp_path, "shapes")
    assert path.name.startswith("shapes_") and path.name.count(":") == 2
    back = load_task_file(path)
    assert back.to_json() == _task().to_json()
    # A reader that knows MM-Gen's keys alone (as MM-Gen's prompt generator reads them) still works.
    raw = json.loads(path.read_text())
    sizes = [len(sg["reference_sample_idx"]) for sg in raw["subgroups"]]
    firsts = [raw["samples"][sg["reference_sample_idx"][0]]["conversations"][0]["value"]
              for sg in raw["subgroups"]]
    assert sizes == [2, 2] and all(isinstance(f, str) for f in firsts)
    assert raw["samples"][0]["image_1"] == "0.jpg"


@pytest.mark.parametrize("mutate,match", [
    (lambda t: t.pop("samples"), "missing 'samples'"),
    (lambda t: t["subgroups"][0].update(reference_sample_idx=[0, 99]), "out of range"),
    (lambda t: t["subgroups"][1].update(keyword=3), "subgroup 1"),
    (lambda t: t["subgroups"][0].update(candidate_image_paths="x.jpg"), "list of strings"),
])
def test_bad_task_files(tmp_path, mutate, match):
    obj = _task().to_json()
    mutate(obj)
    with pytest.raises(DataFileError, match=match):
        load_task_file(_write(tmp_path, obj, "task.json"))


def test_prompt_file_round_trip(tmp_path):
    pf = PromptFile("t.json", "shapes", 1, Mode.VQA, 2, 10,
                    [PromptEntry("circle", ["Example 1", "imgs/0.jpg", "Q: a\n A: b", "pool/c.jpg"], [0])],
                    {"seed": 3})
    path = save_prompt_file(pf, tmp_path, "run")
    assert path.parent.name == "generated_prompts" and path.name.startswith("run_prompts_")
    back = load_prompt_file(path)
    assert back.to_json() == pf.to_json() and back.mode is Mode.VQA
    raw = json.loads(path.read_text())
    assert list(raw)[:6] == ["task_desc_path", "dataset_description", "num_icl_samples", "mode",
                             "min_gen_per_candidate", "total_gen"]


def test_prompt_image_detection():
    assert is_prompt_image("imgs/0.jpg") and is_prompt_image("a b/ÉTÉ.PNG")
    assert not is_prompt_image("Q: what is in chart.png?\n A: chart.png")
    assert not is_prompt_image("Example 1")


def test_a_task_file_is_written_a_sample_a_line_and_reads_back_as_the_same_json(tmp_path):
    """``save_task_file`` writes each top-level key, each subgroup and each sample on a line of
    its own (the C encoder per item, not ``indent=``'s pure-Python one); the JSON is the task's,
    with what makes encoding tricky: non-ASCII, quotes, backslashes, control characters, line
    and paragraph separators, nested extras, an empty list and an empty subgroup list."""
    from mminstruct.data.formats import task_file_lines

    tricky = ["Größe 中文 🙂", 'say "hi"', "back\\slash", "tab\there", "line\nbreak",
              "\u2028sep\u2029", "ctrl\x01\x1f", "<img>", ""]
    samples = [{"id": f"s{i}", "image_1": f"imgs/é{i}.png",
                "conversations": [{"from": "human", "value": f"<image>\n{t}?"},
                                  {"from": "gpt", "value": t}]} for i, t in enumerate(tricky)]
    task = TaskFile("data/ünï", 'Tëst "set"\n', [
        Subgroup("bar «chart»", [0, 2, 4], ["pool/a.jpg", "pool/ü b.jpg"], {"candidate_scores": [0.5, 0.25]}),
        Subgroup("empty", [], [])], samples, {"mminstruct": {"v": 1, "keywords": tricky, "x": None}})
    path = save_task_file(task, tmp_path, "tricky")
    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == task.to_json()
    assert load_task_file(path).to_json() == task.to_json()
    lines = text.split("\n")
    assert lines[0] == "{" and lines[-2:] == ["}", ""]
    # one line per sample and per subgroup: their JSON on it, alone
    def value(line: str):
        try:
            return json.loads(line.strip().rstrip(","))
        except ValueError:
            return None  # a key's line, a bracket
    values = [value(ln) for ln in lines]
    for item in samples + [sg.to_json() for sg in task.subgroups]:
        assert values.count(item) == 1
    # "{", two keys, the subgroups (2), the samples, the extra key, "}", and "" after the last \n
    assert len(lines) == 1 + 2 + (1 + 2 + 1) + (1 + len(samples) + 1) + 1 + 1 + 1
    # a task without samples or subgroups, and an empty object
    bare = TaskFile("i", "d", [], [])
    assert json.loads("".join(task_file_lines(bare.to_json()))) == bare.to_json()
    assert json.loads("".join(task_file_lines({}))) == {}


def test_records_written_as_samples_made_one_at_a_time_give_the_same_bytes(tmp_path, monkeypatch):
    """The app's Save: the task file's samples are ``RecordSamples`` over the loaded records (no
    list of 150,000 dicts at the peak); the file is byte-for-byte the one written from the list,
    each sample made once, and an empty set is written as the list's ``[]``."""
    from mminstruct.data.formats import RecordSamples, task_file_lines
    from mminstruct.data.records import Record

    records = [parse_record(i, _rec(image=f"{i}.jpg", id=i, extra_key=[i])) for i in range(5)]
    lazy, listed = _task(), _task()
    lazy.samples = RecordSamples(records)
    listed.samples = [r.to_sample() for r in records]
    assert lazy.samples == listed.samples and len(lazy.samples) == 5
    assert lazy.samples[1:3] == listed.samples[1:3] and lazy.samples[-1] == listed.samples[-1]
    made: list[int] = []
    real = Record.to_sample
    monkeypatch.setattr(Record, "to_sample", lambda self: made.append(self.index) or real(self))
    a = save_task_file(lazy, tmp_path / "a", "t").read_bytes()
    assert made == [0, 1, 2, 3, 4]  # each once, in order
    monkeypatch.undo()
    assert a == save_task_file(listed, tmp_path / "b", "t").read_bytes()
    empty = TaskFile("i", "d", [], RecordSamples([]))
    assert "".join(task_file_lines(empty.to_json())) == \
        "".join(task_file_lines(TaskFile("i", "d", [], []).to_json()))
