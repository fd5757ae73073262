"""Step 2 speed and memory: 150,000 prompts from MM-Gen's real ChartQA task file (1,920 reference
samples, 3 subgroups, 5,659 candidates), 2 ICL examples each, mode vqa, seed 0, images not checked.

    .venv/bin/python bench/prompt_speed.py [--total_gen 150000] [--task PATH]

Each variant runs once, in a fresh Python process of its own (so its peak RSS is its own); the time
is measured in that process from its start to the file written (imports included, interpreter
start-up excluded), one run, side by side:

  cli command ``python -m mminstruct.prompt_generator …`` as a user runs it: the wall-clock of the
              whole command (interpreter start-up included) and its peak RSS;
  cli         the same in a child process (``prompt_generator.main``): load the task file, plan,
              stream the prompt file (``prompts.write_prompts``), imports included;
  app         what the Prompts page's Save does, its modules already imported (as in the server): the task file through ``records.parse_once``, the
              allocation (``preview.prepare_workspace_plan``'s ``prepare_plan``), then
              ``preview.start_save`` (a background thread running ``save_prompt_plan`` — the same
              ``write_prompts`` — and the workspace's ``workspace.json`` saved), waited for;
  app before  the previous app path: the whole plan in memory (``plan_prompts``) and one
              ``json.dumps`` of it (``PromptFile.to_json``), as the page did before issue 20;
  MM-Gen way  a sampler shaped like MM-Gen's ``prompt_generator.py`` (a fresh ``random.sample`` of the
              index list per pass, ``re.sub`` on every ICL question per prompt, every prompt held in
              a list, one ``json.dump`` at the end) — a like-for-like cost, NOT MM-Gen's code.

Also printed, labelled as such: MM-Gen's own script as recorded in issue 20 (6.75 s, 198 MiB; another
run, not this one). The files of cli, app and app before are compared byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REL = "fixtures/real/sjoshi804__MM-Gen/task_files/chartqa_gen_task_desc_5cap_per_img.json"
CANDIDATES = [Path(__file__).resolve().parents[1] / "shared" / REL,
              Path(__file__).resolve().parents[2] / "shared" / REL,
              Path(__file__).resolve().parents[3] / "shared" / REL]
RECORDED_MMGEN = (6.75, 198.0)  # issue 20: MM-Gen's own script, 150k prompts (s, MiB)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_cli(task: Path, out: Path, total: int) -> Path:
    from mminstruct.commands import prompts as prompt_generator

    argv = ["--task_desc", str(task), "--output_folder", str(out), "--file_prefix", "bench",
            "--total_gen", str(total), "--num_icl_samples", "2", "--mode", "vqa", "--seed", "0",
            "--no_check_images"]
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = prompt_generator.main(argv)
    if rc != 0:
        raise SystemExit(f"prompt_generator exited {rc}")
    return Path(buf.getvalue().strip().splitlines()[-1])


def _config(task: Path, out: Path, total: int):
    from mminstruct.prompts.plan import PromptConfig

    return PromptConfig(task_desc=str(task), file_prefix="bench", total_gen=total,
                        output_folder=str(out), num_icl_samples=2, mode="vqa", seed=0,
                        check_images=False)


def run_app(task: Path, out: Path, total: int) -> Path:
    from mminstruct.app.preview import start_save
    from mminstruct.app.workspace import Workspace
    from mminstruct.data.formats import load_task_file
    from mminstruct.prompts.plan import prepare_plan
    from mminstruct.data.records import parse_once

    ws = Workspace.open(out, create=True)
    ws.settings.prompts.file_prefix = "bench"
    ws.save()
    loaded = parse_once(str(task), load_task_file)
    config = _config(task, out, total)
    plan = prepare_plan(loaded, config)
    job = start_save(ws.root, loaded, config, plan)
    job.finished.wait()
    if job.error or job.path is None:
        raise SystemExit(f"app save failed: {job.error}")
    return job.path


def run_app_before(task: Path, out: Path, total: int) -> Path:
    from mminstruct.data.formats import load_task_file, prompt_file_name, prompts_dir
    from mminstruct.prompts.plan import plan_prompts, prepare_plan

    loaded = load_task_file(task)
    config = _config(task, out, total)
    pf = plan_prompts(loaded, config, prepare_plan(loaded, config))
    path = prompts_dir(out) / prompt_file_name("bench")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(pf.to_json(), indent=None, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    return path


def run_mmgen_way(task: Path, out: Path, total: int) -> Path:
    import re

    with open(task) as f:
        t = json.load(f)
    samples = t["samples"]
    subgroups = t["subgroups"]
    sizes = [len(s["reference_sample_idx"]) for s in subgroups]
    prompts = []
    for sg, size in zip(subgroups, sizes):
        n = math.ceil(total * size / sum(sizes))
        ref = sg["reference_sample_idx"]
        idx, pos = random.sample(ref, len(ref)), 0
        for _ in range(n):
            if pos >= len(idx):
                idx, pos = random.sample(ref, len(ref)), 0
            batch, pos = idx[pos:pos + 2], pos + 2
            prompt = []
            for k, i in enumerate(batch, 1):
                s = samples[i]
                q = re.sub("<image.?.?.?>", f"Refer to the image {k}.", s["conversations"][0]["value"])
                prompt += [f"Example {k}", os.path.join(t["image_folder"], s["image_1"]),
                           f"Q: {q}\n A: {s['conversations'][1]['value']}"]
            prompt.append(random.choice(sg["candidate_image_paths"]))
            prompts.append({"keyword": sg["keyword"], "prompt": prompt, "icl_indices": batch})
    path = out / "generated_prompts" / "mmgen_way.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump({"task_desc_path": str(task), "mode": "vqa", "prompts": prompts}, f)
    return path


VARIANTS = {"cli": run_cli, "app": run_app, "app before": run_app_before, "MM-Gen way": run_mmgen_way}


def child(variant: str, task: Path, total: int) -> dict:
    if variant == "app":  # a running server has these loaded before the click
        import mminstruct.app.preview  # noqa: F401
        import mminstruct.app.workspace  # noqa: F401
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mminstruct-prompts-") as tmp:
        path = VARIANTS[variant](task, Path(tmp), total)
        seconds = time.perf_counter() - t0
        peak = _peak_mib()  # before the file is read back below
        sha, n, size = _digest(path)
    return {"variant": variant, "seconds": seconds, "peak_mib": peak, "mb": size / 1e6,
            "sha": sha, "prompts": n}


def _digest(path: Path) -> tuple[str, int, int]:
    """(SHA-256 prefix, prompts, bytes) of a prompt file, read in 1 MB chunks."""
    h, n, size, tail = hashlib.sha256(), 0, 0, b""
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            size += len(block)
            n += (tail + block).count(b'"keyword": ')
            tail = block[-10:]
    return h.hexdigest()[:16], n, size


def cpu_line() -> str:
    model, flags = "unknown CPU", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    return (f"CPU: {model}, {os.cpu_count()} CPUs; avx512_bf16: "
            f"{'yes' if 'avx512_bf16' in flags.split() else 'no'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--total_gen", type=int, default=150_000)
    ap.add_argument("--task", type=Path, default=None, help="task file (default: MM-Gen's ChartQA)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    task = args.task or next((p for p in CANDIDATES if p.is_file()), None)
    if task is None:
        raise SystemExit("MM-Gen's ChartQA task file not found under ../shared; pass --task PATH")
    if args.child:
        print(json.dumps(child(args.child, task, args.total_gen)))
        return
    print(cpu_line())
    print(f"{args.total_gen:,} prompts from {task.name}; load average before: "
          f"{os.getloadavg()[0]:.2f}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="mminstruct-prompts-") as tmp:  # the command itself
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mminstruct.prompt_generator", "--task_desc", str(task),
                        "--output_folder", tmp, "--file_prefix", "bench", "--total_gen",
                        str(args.total_gen), "--num_icl_samples", "2", "--mode", "vqa", "--seed", "0",
                        "--no_check_images"], capture_output=True, check=True)
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the first child
        path = next(Path(tmp, "generated_prompts").glob("*.json"))
        sha, n, size = _digest(path)  # read in chunks: this process stays small (a child's
        rows.append({"variant": "cli command", "seconds": seconds, "peak_mib": peak,  # max RSS
                     "mb": size / 1e6, "sha": sha, "prompts": n,  # starts from its fork)
                     "load": os.getloadavg()[0]})
    for v in VARIANTS:
        out = subprocess.run([sys.executable, __file__, "--child", v, "--task", str(task),
                              "--total_gen", str(args.total_gen)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        rows[-1]["load"] = os.getloadavg()[0]
    print(f"\n{'variant':<13}{'seconds':>9}{'peak MiB':>10}{'file MB':>9}{'prompts':>9}  {'sha256':<17}{'load':>6}")
    for r in rows:
        print(f"{r['variant']:<13}{r['seconds']:>9.2f}{r['peak_mib']:>10.0f}{r['mb']:>9.1f}"
              f"{r['prompts']:>9,}  {r['sha']:<17}{r['load']:>6.2f}")
    s, m = RECORDED_MMGEN
    print(f"{'MM-Gen (recorded in issue 20, another run)':<44}{s:>6.2f} s {m:>6.0f} MiB")
    by = {r["variant"]: r for r in rows}
    cli, app, before, mm = by["cli command"], by["app"], by["app before"], by["MM-Gen way"]
    print(f"\napp / cli time: {app['seconds'] / cli['seconds']:.2f}× (target ≤ 1.2×)")
    print(f"app before / app time: {before['seconds'] / app['seconds']:.2f}×; peak "
          f"{before['peak_mib']:.0f} → {app['peak_mib']:.0f} MiB")
    print(f"MM-Gen way / cli time: {mm['seconds'] / cli['seconds']:.2f}× (target ≥ 1.9×); "
          f"recorded MM-Gen / cli: {s / cli['seconds']:.2f}×")
    print(f"cli peak {cli['peak_mib']:.0f} MiB (target ≤ {m:.0f} MiB, MM-Gen's recorded peak); "
          f"app peak {app['peak_mib']:.0f} MiB")
    same = cli["sha"] == by["cli"]["sha"] == app["sha"] == before["sha"]
    print(f"cli, app and app-before files byte-for-byte the same: {'yes' if same else 'NO'}; "
          f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
