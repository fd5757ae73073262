"""Every generation mode end to end through ``python -m mminstruct.data_generator``'s entry point,
against the local OpenAI-compatible server over real HTTP."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mminstruct.commands.generate import main
from mminstruct.data.records import load_data_file
from mminstruct.generate.output import CONCISE_SUFFIX, REASONING_SUFFIX
from mminstruct.generate.manifest import manifest_path_for
from tests.fixtures.llm import DESCRIPTION, gen_args, make_prompt_workspace

PER_ITEM = {"vqa": 2, "vqa_task_desc": 2, "tqa": 2, "vqa_nr": 1, "descript": 1, "generic": 1,
            "descript_task_desc": 1}


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, Path | None, str]:
    rc = main(args)
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return rc, Path(lines[-1]) if lines else None, captured.err


@pytest.mark.parametrize("mode", list(PER_ITEM))
def test_mode_end_to_end(mode: str, stub, tmp_path: Path, capsys) -> None:
    n, min_gen = 5, 2
    ws = make_prompt_workspace(tmp_path, mode, n, min_gen=min_gen)
    rc, out, err = run_cli(gen_args(ws, stub, prefix=f"run_{mode}"), capsys)
    assert rc == 0, err
    assert re.fullmatch(rf"run_{mode}_\d{{8}}_\d{{6}}\.json", out.name)
    assert out.parent == ws.output_folder / "generated_data"
    data = json.loads(out.read_text())
    assert data["image_folder"] == "" and data["mode"] == mode
    assert (data["start_idx"], data["end_idx"], data["num_prompts"]) == (0, n, n)
    samples = data["samples"]
    assert data["len_samples"] == len(samples) == n * min_gen * PER_ITEM[mode]
    assert [s["id"] for s in samples] == list(range(len(samples)))
    assert sorted({s["prompt_idx"] for s in samples}) == list(range(n))
    for s in samples:
        assert s["keyword"] in ("round", "square")
        assert isinstance(s["icl_indices"], list)
        human, gpt = s["conversations"]
        assert (human["from"], gpt["from"]) == ("human", "gpt")
        if mode == "tqa":
            assert "image_1" not in s and "<image>" not in human["value"]
            assert human["value"].startswith("Imagined image")
        else:
            assert human["value"].startswith("<image>\n")
            assert (ws.input_folder / s["image_1"]).is_file()
        if PER_ITEM[mode] == 2:
            if s["variant"] == "reasoning":
                assert human["value"].endswith(REASONING_SUFFIX)
                assert gpt["value"].startswith("Reasoning") and "\nAnswer" in gpt["value"]
            else:
                assert s["variant"] == "concise" and human["value"].endswith(CONCISE_SUFFIX)
                assert gpt["value"].startswith("Answer")
        elif mode == "generic":
            assert human["value"] == "<image>\nDescribe this image in detail."
        elif mode in ("descript", "descript_task_desc"):
            assert human["value"] == (f"<image>\nDescribe this image in detail as an expert in "
                                      f"{DESCRIPTION}.")
    if mode == "vqa":  # the carried-over ICL indices are the prompt's
        by_prompt = {s["prompt_idx"]: s["icl_indices"] for s in samples}
        assert by_prompt[1] == [1, 2]
    # the output reads back as a data file, images resolving under the input folder
    df = load_data_file(out, input_folder=ws.input_folder)
    assert df.report.skipped == 0 and len(df.records) == len(samples)
    manifest = json.loads(manifest_path_for(out).read_text())
    assert manifest["counts"]["by_outcome"] == {"ok": n}
    assert manifest["counts"]["samples"] == len(samples)
    assert manifest["model"] == "gpt-4o" and manifest["tokens"]["total"] > 0
    # what the server received
    recent = json.loads(json.dumps(list(stub.state.recent)))
    body = recent[-1]
    system = body["messages"][0]["content"]
    assert ("reading simple shape diagrams" in system) == (mode != "generic")
    images = [p for p in body["messages"][1]["content"] if p["type"] == "image_url"]
    carries_icl = mode in ("vqa", "vqa_nr", "tqa", "descript")
    assert len(images) == (2 if carries_icl else 0) + (0 if mode == "tqa" else 1)
    assert body["messages"][1]["content"][-1]["text"].startswith("Now ")


def test_range_and_prompt_file_path_forms(stub, tmp_path: Path, capsys) -> None:
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 10, min_gen=1)
    # a direct path (MM-Gen resolved names under INPUT/generated_prompts/; both work)
    args = gen_args(ws, stub, "--start_idx", "3", "--num_prompts", "4")
    args[args.index("--prompt_file") + 1] = str(ws.prompt_file)
    rc, out, err = run_cli(args, capsys)
    assert rc == 0, err
    data = json.loads(out.read_text())
    assert (data["start_idx"], data["end_idx"], data["num_prompts"]) == (3, 7, 4)
    assert sorted({s["prompt_idx"] for s in data["samples"]}) == [3, 4, 5, 6]
    assert sorted(map(int, stub.stats()["ids"])) == [3, 4, 5, 6]


def test_structured_outputs_sends_a_schema(stub, tmp_path: Path, capsys) -> None:
    ws = make_prompt_workspace(tmp_path, "tqa", 3, min_gen=2)
    rc, out, err = run_cli(gen_args(ws, stub, "--structured_outputs"), capsys)
    assert rc == 0, err
    body = stub.state.recent[-1]
    rf = body["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["strict"] is True
    assert rf["json_schema"]["schema"]["properties"]["items"]["items"]["required"] == [
        "I", "Q", "R", "A"]
    assert json.loads(out.read_text())["len_samples"] == 3 * 2 * 2


def test_options_reach_the_request(stub, tmp_path: Path, capsys) -> None:
    ws = make_prompt_workspace(tmp_path, "generic", 2, min_gen=1)
    rc, _, err = run_cli(gen_args(ws, stub, "--temperature", "0.3", "--max_tokens", "900",
                                  "--seed", "7", "--model_name", "my-vlm"), capsys)
    assert rc == 0, err
    body = stub.state.recent[-1]
    assert (body["model"], body["temperature"], body["max_tokens"], body["seed"]) == (
        "my-vlm", 0.3, 900, 7)
