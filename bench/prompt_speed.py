"""Step 2 speed: plan and write 150,000 prompts from MM-Gen's real ChartQA task file (1,920
reference samples, 3 subgroups, 5,659 candidates), 2 ICL examples each.

    .venv/bin/python bench/prompt_speed.py [--total_gen 150000]

Prints the time to load the task file, plan the prompts, and write the prompt file (target: the whole
path in < 10 s), and the same plan by a sampler shaped like MM-Gen's for comparison.
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
import time
from pathlib import Path

from mminstruct.formats import load_task_file, save_prompt_file
from mminstruct.prompts import PromptConfig, plan_prompts, prepare_plan

TASK = Path(__file__).resolve().parents[2] / "shared/fixtures/real/sjoshi804__MM-Gen/task_files/chartqa_gen_task_desc_5cap_per_img.json"


def mmgen_shaped(task, total_gen: int, n_icl: int) -> int:
    """The same work with a per-prompt random.sample of a fresh index list, as MM-Gen's sampler
    reshuffles, and per-prompt regex rewriting (for a like-for-like time, not MM-Gen's code)."""
    import re
    sizes = [len(s.reference_sample_idx) for s in task.subgroups]
    counts = [math.ceil(total_gen * s / sum(sizes)) for s in sizes]
    out = 0
    for sg, n in zip(task.subgroups, counts):
        idx, pos = random.sample(sg.reference_sample_idx, len(sg.reference_sample_idx)), 0
        for _ in range(n):
            if pos >= len(idx):
                idx, pos = random.sample(sg.reference_sample_idx, len(idx)), 0
            batch, pos = idx[pos:pos + n_icl], pos + n_icl
            prompt = []
            for k, i in enumerate(batch, 1):
                s = task.samples[i]
                q = re.sub("<image.?.?.?>", f"the image {k}", s["conversations"][0]["value"])
                prompt += [f"Example {k}", s["image_1"], f"Q: {q}\n A: {s['conversations'][1]['value']}"]
            prompt.append(random.choice(sg.candidate_image_paths))
            out += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--total_gen", type=int, default=150_000)
    args = ap.parse_args()
    t0 = time.perf_counter()
    task = load_task_file(TASK)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        cfg = PromptConfig(task_desc=str(TASK), file_prefix="bench", total_gen=args.total_gen,
                           output_folder=out, num_icl_samples=2, mode="vqa", seed=0, check_images=False)
        plan = prepare_plan(task, cfg)
        pf = plan_prompts(task, cfg, plan)
        t2 = time.perf_counter()
        path = save_prompt_file(pf, out, "bench")
        t3 = time.perf_counter()
        size = path.stat().st_size
    n = mmgen_shaped(task, args.total_gen, 2)
    t4 = time.perf_counter()
    print(f"{'step':<28}{'seconds':>10}")
    print(f"{'load task file':<28}{t1 - t0:>10.2f}")
    print(f"{'plan ' + str(len(pf.prompts)) + ' prompts':<28}{t2 - t1:>10.2f}")
    print(f"{'write prompt file':<28}{t3 - t2:>10.2f}   ({size / 1e6:.0f} MB)")
    print(f"{'total (target < 10 s)':<28}{t3 - t0:>10.2f}")
    print(f"{'MM-Gen-shaped plan (' + str(n) + ')':<28}{t4 - t3:>10.2f}   (ratio ours/theirs plan: "
          f"{(t2 - t1) / (t4 - t3):.2f})")


if __name__ == "__main__":
    main()
