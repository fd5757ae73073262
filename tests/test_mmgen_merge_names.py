"""Our output folders as MM-Gen's merge.py reads them: it takes every ``*{run_id}*.json`` in the
folder and sorts them by the integer after ``{run_id}_`` (``int(name.split(run_id + "_")[-1]
.split("_")[0])``), then reads ``num_prompts``/``start_idx``/``samples`` of each. Manifests must
therefore not match the glob, and shard outputs must carry their number where that key looks.
Earlier names (``…_shard01of03``, manifests beside the outputs) are still read by our own code."""

from __future__ import annotations

import json
from pathlib import Path

from mminstruct.commands import batch as bdg
from mminstruct.commands.generate import main as gen_main
from mminstruct.generate.manifest import find_manifest, manifest_path_for
from mminstruct.generate.runlog import list_runs, shard_prefix
from tests.fixtures.llm import gen_args, make_prompt_workspace


def mmgen_merge_inputs(folder: Path, run_id: str) -> list[Path]:
    """The files MM-Gen's merge.py would merge, in its order (its glob and sort key, restated)."""
    files = [p for p in folder.iterdir() if p.name.endswith(".json") and run_id in p.name]
    key = {p: int(p.name.split(f"{run_id}_")[-1].split("_")[0]) for p in files}  # ValueError = broken
    ordered = sorted(files, key=key.__getitem__)
    for p in ordered:
        data = json.loads(p.read_text())
        assert {"num_prompts", "start_idx", "samples"} <= set(data), f"{p.name} is not an output"
    return ordered


def test_sharded_outputs_merge_with_mmgens_merge_py(stub, tmp_path, capsys):
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 7, min_gen=1)
    assert bdg.main(gen_args(ws, stub, "--num_parallel", "3", prefix="nr")) == 0
    merged = Path(capsys.readouterr().out.strip().splitlines()[-1])
    folder = merged.parent
    assert manifest_path_for(merged).is_file() and not list(folder.glob("*manifest*.json"))
    files = mmgen_merge_inputs(folder, "nr_shard")  # merge.py --run_id nr_shard
    assert [f.name[: len("nr_shard_01_of_03")] for f in files] == [
        shard_prefix("nr", k, 3) for k in range(3)]
    samples = [s for f in files for s in json.loads(f.read_text())["samples"]]
    ours = json.loads(merged.read_text())["samples"]
    assert [s["prompt_idx"] for s in samples] == [s["prompt_idx"] for s in ours] == list(range(7))


def test_a_single_run_folder_merges_with_run_id_the_prefix(stub, tmp_path, capsys):
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 3, min_gen=1)
    assert gen_main(gen_args(ws, stub, prefix="nr")) == 0
    out = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert mmgen_merge_inputs(out.parent, "nr") == [out]  # the manifest is out of the glob
    assert find_manifest(out) == manifest_path_for(out)


def test_runs_and_outputs_under_the_old_shard_names_still_resume_and_merge(stub, tmp_path, capsys):
    stub.state.config.quota_after = 3
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 6, min_gen=1)
    assert bdg.main(gen_args(ws, stub, "--num_parallel", "2", prefix="old", concurrency=1)) == 3
    capsys.readouterr()
    runs = ws.output_folder / "generated_data" / "runs"
    for k in range(2):  # as an earlier version named them
        [run] = list_runs(ws.output_folder, shard_prefix("old", k, 2))
        run.path.rename(runs / run.path.name.replace(f"_shard_0{k + 1}_of_02_", f"_shard0{k + 1}of02_"))
    assert all(list_runs(ws.output_folder, shard_prefix("old", k, 2)) for k in range(2))
    stub.state.config.quota_after = None
    stub.state.reset()
    assert bdg.main(gen_args(ws, stub, "--num_parallel", "2", "--resume", prefix="old",
                             concurrency=1)) == 0
    merged = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert sorted(s["prompt_idx"] for s in json.loads(merged.read_text())["samples"]) == list(range(6))
    assert stub.stats()["requests"] == 3  # only the unfinished prompts were sent again

    # shard outputs and a manifest under the old names: `merge` and find_manifest read them
    folder = merged.parent
    for f in folder.glob("old_shard_*_of_02_*.json"):
        f.rename(f.with_name(f.name.replace("_shard_0", "_shard0").replace("_of_02_", "of02_")))
    assert bdg.main(["merge", "--output_folder", str(ws.output_folder), "--file_prefix", "old"]) == 0
    remerged = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads(remerged.read_text())["samples"] == json.loads(merged.read_text())["samples"]
    manifest_path_for(merged).rename(merged.with_name(merged.stem + ".manifest.json"))
    assert find_manifest(merged) == merged.with_name(merged.stem + ".manifest.json")


def test_merge_run_id_takes_exactly_that_run(stub, tmp_path, capsys):
    # MM-Gen's merge.py globs *{run_id}*.json: run a1 also takes run a10's output. Ours matches
    # exactly and gives the samples of a1's files alone, in merge.py's order.
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 6, min_gen=1)
    for prefix in ("a1", "a10"):
        assert gen_main(gen_args(ws, stub, prefix=prefix)) == 0
    for prefix in ("b1", "b10"):
        assert bdg.main(gen_args(ws, stub, "--num_parallel", "2", prefix=prefix)) == 0
    capsys.readouterr()
    folder = ws.output_folder / "generated_data"
    glob_a1 = [p.name for p in folder.glob("*a1*.json")]  # merge.py's glob
    assert any(n.startswith("a10_") for n in glob_a1)
    mmgen_merge = tmp_path / "merged"
    for run_id, n_files in (("a1", 1), ("a10", 1), ("b1_shard", 2), ("b10_shard", 2)):
        assert bdg.main(["merge", "--run_id", run_id, "--folder_path", str(folder),
                         "--output_folder", str(mmgen_merge)]) == 0
        err = capsys.readouterr().err
        assert f"merged {n_files} file(s)" in err
        out = mmgen_merge / f"{run_id}.json"
        expected = sorted((p for p in folder.glob(f"{run_id}_*.json")
                           if p.name[len(run_id) + 1].isdigit()),
                          key=lambda p: int(p.name.split(f"{run_id}_")[-1].split("_")[0]))
        assert len(expected) == n_files
        theirs = [s for f in expected for s in json.loads(f.read_text())["samples"]]
        ours = json.loads(out.read_text())["samples"]
        assert len(ours) == len(theirs) == 6
        assert [(s["prompt_idx"], s["conversations"]) for s in ours] == \
            [(s["prompt_idx"], s["conversations"]) for s in theirs]
    assert bdg.main(["merge", "--run_id", "a", "--folder_path", str(folder)]) == 2
    assert "no files named a_<N>….json" in capsys.readouterr().err
    assert bdg.main(["merge", "--run_id", "a1", "--folder_path", str(folder),
                     "--output_folder", str(mmgen_merge)]) == 2  # never overwritten
    assert "exists" in capsys.readouterr().err
