"""The multi-turn ``conversation`` mode end to end: prompt_generator writes its prompt file (ICL
examples + the candidate), data_generator reads that file and asks the local server for one
conversation of N turns per image, the N items become one sample of 2N turns; the preview's
arithmetic, the quality rules (a repeated question, a refusal in a later turn) and the LLaVA,
ShareGPT and hf exports follow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mminstruct.app.preview import samples_note
from mminstruct.commands.generate import main as gen_main
from mminstruct.export.formats import export_file
from mminstruct.generate.output import samples_per_prompt, write_samples_file
from mminstruct.llm.requests import generation_prompt, system_prompt
from mminstruct.data.modes import Mode
from mminstruct.quality.report import QualityConfig, analyse
from tests.conftest import REPO
from tests.fixtures.llm import subprocess_env
from tests.test_export import _info, llamafactory_rules, llava_rules
from tests.test_prompts import _task

TURNS = 3


def _prompt_file(tmp_path: Path) -> Path:
    task = _task(tmp_path)
    (tmp_path / "task.json").write_text(json.dumps(task.to_json()))
    r = subprocess.run([sys.executable, "-m", "mminstruct.prompt_generator", "--task_desc",
                        "task.json", "--input_folder", str(tmp_path), "--output_folder",
                        str(tmp_path), "--file_prefix", "conv", "--total_gen", str(4 * TURNS),
                        "--min_gen_per_candidate", str(TURNS), "--num_icl_samples", "1",
                        "--mode", "conversation", "--seed", "0"],
                       capture_output=True, text=True, cwd=REPO, env=subprocess_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    return Path(r.stdout.strip().splitlines()[-1])


def test_the_prompt_asks_for_one_conversation_whose_turns_build_on_each_other():
    system = system_prompt(Mode.CONVERSATION, "shapes")
    assert "builds on the previous answers" in system and "exactly these keys: Q, A" in system
    assert "one conversation of exactly 3 turns" in generation_prompt(Mode.CONVERSATION, 3)
    assert samples_per_prompt(Mode.CONVERSATION, 3) == 1 and samples_per_prompt(Mode.VQA, 3) == 6
    assert samples_note("conversation", 12, 3, 4) == (
        "4 prompts × 1 conversation of 3 turn(s) (conversation: one multi-turn sample per "
        "prompt) = 4 samples")


def test_conversation_mode_end_to_end(stub, tmp_path, capsys):
    pf_path = _prompt_file(tmp_path)
    pf = json.loads(pf_path.read_text())
    assert pf["mode"] == "conversation" and pf["min_gen_per_candidate"] == TURNS
    n = len(pf["prompts"])
    assert n >= 4 and all(p["prompt"][-1].startswith("pool/") and p["icl_indices"]
                          for p in pf["prompts"])
    out_dir = tmp_path / "out"
    rc = gen_main(["--input_folder", str(tmp_path), "--output_folder", str(out_dir),
                   "--prompt_file", str(pf_path.relative_to(tmp_path)), "--file_prefix", "conv",
                   "--base_url", stub.url, "--concurrency", "4", "--timeout", "10"])
    out = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0
    sent = list(stub.state.recent)
    assert sent and "one conversation of exactly 3 turns" in json.dumps(sent[0])
    data = json.loads(out.read_text())
    samples = data["samples"]
    assert data["mode"] == "conversation" and data["len_samples"] == len(samples) == n
    for s in samples:
        conv = s["conversations"]
        assert [t["from"] for t in conv] == ["human", "gpt"] * TURNS
        assert conv[0]["value"].startswith("<image>\n")
        assert all("<image>" not in t["value"] for t in conv[1:])
        assert s["image_1"].startswith("pool/")
        # the turns are the items in the order the model wrote them
        answers = [t["value"] for t in conv[1::2]]  # the server's "Answer K for request R."
        assert [a.split()[1] for a in answers] == [str(k + 1) for k in range(TURNS)]
        assert len({a.split(" for ")[1] for a in answers}) == 1  # one answer, one conversation

    report = analyse(QualityConfig(str(out)))
    assert report.summary["flags"]["invalid"] == 0 and report.summary["flags"]["refusal"] == 0

    # exports: LLaVA's and LLaMA-Factory's rules, and the hf folder
    llava = tmp_path / "exp" / "c.llava.json"
    export_file(out, llava, "llava")
    assert all(len(r["conversations"]) == 2 * TURNS for r in llava_rules(llava, llava.parent))
    share = tmp_path / "exp" / "c.sharegpt.json"
    export_file(out, share, "sharegpt")
    rows = llamafactory_rules(share, _info(share.parent)["c.sharegpt"])
    assert len(rows) == n and all(len(r["messages"]) == 2 * TURNS for r in rows)
    datasets = pytest.importorskip("datasets")
    export_file(out, tmp_path / "hf", "hf")
    ds = datasets.load_dataset(str(tmp_path / "hf"), split="train", cache_dir=str(tmp_path / "c"))
    assert len(ds) == n and all(len(r["messages"]) == 2 * TURNS for r in ds)


def _sample(i: int, turns: list[tuple[str, str]], image: bool = True) -> dict:
    conv = []
    for k, (q, a) in enumerate(turns):
        conv += [{"from": "human", "value": ("<image>\n" if k == 0 else "") + q},
                 {"from": "gpt", "value": a}]
    s = {"id": i, "conversations": conv, "keyword": "round", "prompt_idx": i, "icl_indices": []}
    if image:
        s["image_1"] = f"pool/c{i}.jpg"  # its own image: no duplicate across samples
    return s


def test_quality_rules_for_conversations(tmp_path):
    good = [("What shape is it?", "A circle."), ("What colour is the circle?", "Red."),
            ("Why might it be red?", "To stand out.")]
    samples = [
        _sample(0, good),
        _sample(1, [good[0], ("What colour?", "Red."), ("What shape is it?", "Still a circle.")]),
        _sample(2, [good[0], ("And its colour?", "I'm sorry, but I can't help with that.")]),
        _sample(3, good, image=False),
        _sample(4, [good[0], ("Is it <image> again?", "No.")]),
    ]
    path = tmp_path / "generated_data" / "conv_20250101_000000.json"
    path.parent.mkdir(parents=True)
    write_samples_file(path, {"image_folder": "", "len_samples": 5, "start_idx": 0, "end_idx": 5,
                              "num_prompts": 5, "mode": "conversation"}, iter(samples))
    rows = {e["id"]: e for e in analyse(QualityConfig(str(path))).samples}
    assert rows[0]["flags"] == []
    assert "invalid" in rows[1]["flags"] and "turn 3 repeats the question of turn 1" in rows[1]["invalid_reason"]
    assert rows[2]["flags"] == ["refusal"]  # the refusal is in the second turn's answer
    assert "no image on a conversation sample" in rows[3]["invalid_reason"]
    assert "<image> token after the first question" in rows[4]["invalid_reason"]
