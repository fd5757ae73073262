"""Quality report speed and memory: 600,000 samples (MM-Gen's largest run) without grounding, and
the time per 10,000 samples of CLIP grounding from cached embeddings.

    .venv/bin/python bench/quality_speed.py [--samples 600000] [--grounding_samples 10000]
        [--model demo-charts] [--skip_grounding]

The input is synthetic, shaped like a real vqa run: 100,000 prompts × 3 items × 2 samples
(reasoning + concise), 20,000 candidate images (each in ~5 prompts, so ~15 samples per image and
variant), questions from templates over a vocabulary (some repeats and rewordings happen, as in
real runs), and a prompt file with 2 in-context examples per prompt. The report (analysis +
writing ``report.json``) runs in a child process so its peak RSS is its own. Targets: ≤ 60 s and
≤ 2 GB on the 2-core machine. Grounding: a file of N samples over N/10 small images, embedded
once (filling the cache, not timed), then reported again from the cache (timed).
Prints the load average beside the figures: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OBJECTS = ("man", "woman", "dog", "cat", "car", "bus", "truck", "bicycle", "table", "chair",
           "tree", "building", "sign", "clock", "umbrella", "horse", "boat", "train", "plate",
           "cup", "laptop", "phone", "kite", "ball", "bird", "bench", "window", "door", "shelf")
ATTRS = ("red", "white", "large", "small", "wooden", "old", "parked", "tall", "open", "empty")
TEMPLATES = (
    "What color is the {a} {o}?", "How many {o}s are in the image?", "Is the {o} next to the {o2}?",
    "What is the {o} doing near the {o2}?", "Where is the {a} {o} located?",
    "Why might the {o} be near the {o2}?", "Which side of the {o2} is the {o} on?",
    "What is on top of the {a} {o}?", "Describe the {o} and the {o2}.",
    "What is the {o} holding?\nA. a cup\nB. a phone\nC. nothing\nD. a ball",
)
REASONING = "Think step by step and explain your reasoning, then give the answer."
CONCISE = "Answer concisely."


def _question(rng: random.Random) -> str:
    o, o2 = rng.sample(OBJECTS, 2)
    return rng.choice(TEMPLATES).format(o=o, o2=o2, a=rng.choice(ATTRS))


def _answer(rng: random.Random, q: str) -> tuple[str, str]:
    if "\nA. " in q:
        return f"The {rng.choice(OBJECTS)} appears to hold it.", rng.choice("ABCD")
    o = rng.choice(OBJECTS)
    a = f"The {o} is {rng.choice(ATTRS)} and stands beside the {rng.choice(OBJECTS)}."
    r = (f"Looking at the image, I can see a {o} in the scene. It is {rng.choice(ATTRS)} and "
         f"there is a {rng.choice(OBJECTS)} close to it, so the answer follows.")
    return r, a


def make_inputs(folder: Path, n_samples: int, seed: int = 0, n_images: int | None = None,
                image_names: list[str] | None = None) -> tuple[Path, Path]:
    """A vqa generated file of ``n_samples`` samples and its prompt file (3 items a prompt)."""
    rng = random.Random(seed)
    n_prompts = max(1, n_samples // 6)
    n_images = n_images or max(1, n_prompts // 5)
    images = image_names or [f"candidates/img_{i:06d}.jpg" for i in range(n_images)]
    ref_qas = [(_question(rng), _answer(rng, "")[1]) for _ in range(500)]
    pf = folder / "prompts.json"
    gf = folder / "generated.json"
    with open(pf, "w") as fp, open(gf, "w") as fg:
        fp.write('{"task_desc_path": "task.json", "dataset_description": "photos", '
                 '"num_icl_samples": 2, "mode": "vqa", "min_gen_per_candidate": 3, '
                 f'"total_gen": {n_prompts * 3}, "prompts": [\n')
        fg.write(json.dumps({"image_folder": "", "len_samples": n_prompts * 6, "start_idx": 0,
                             "end_idx": n_prompts, "num_prompts": n_prompts, "mode": "vqa",
                             "model": "bench", "input_folder": str(folder),
                             "dataset_description": "photos"})[:-1] + ', "samples": [\n')
        sid = 0
        for p in range(n_prompts):
            icl = rng.sample(range(len(ref_qas)), 2)
            image = images[rng.randrange(len(images))]
            parts = []
            for k, i in enumerate(icl, 1):
                q, a = ref_qas[i]
                parts += [f"Example {k}", f"reference/{i}.jpg",
                          f"Q: Refer to the {('first', 'second')[k - 1]} image. {q}\n A: {a}"]
            fp.write(("" if p == 0 else ",\n") + json.dumps(
                {"keyword": f"kw{p % 5}", "prompt": parts + [image], "icl_indices": icl}))
            for _ in range(3):
                q = _question(rng) if rng.random() > 0.02 else ref_qas[icl[0]][0]
                r, a = _answer(rng, q)
                for variant, suffix, ans in (("reasoning", REASONING, f"{r}\n{a}"),
                                             ("concise", CONCISE, a)):
                    s = {"id": sid, "image_1": image, "conversations": [
                        {"from": "human", "value": f"<image>\n{q}\n{suffix}"},
                        {"from": "gpt", "value": ans}], "icl_indices": icl,
                         "keyword": f"kw{p % 5}", "prompt_idx": p, "variant": variant}
                    fg.write(("" if sid == 0 else ",\n") + json.dumps(s))
                    sid += 1
        fp.write("\n]}\n")
        fg.write("\n]}\n")
    return gf, pf


CHILD = """
import json, resource, sys, time
t_imp = time.perf_counter()
if sys.argv[4]:  # one-time cost, not per sample: torch / open_clip imports and the model spec
    from mminstruct.embed.clip import parse_model_spec
    parse_model_spec(sys.argv[4])
imports_s = time.perf_counter() - t_imp
t0 = time.perf_counter()
from mminstruct.quality import report as quality
from mminstruct.quality.report import QualityConfig, analyse, write_report
grounding_s = [0.0]
_inner = quality.grounding_scores
def _timed(*a, **k):  # the grounding step alone (image + text vectors from the cache, cosines)
    t = time.perf_counter()
    try:
        return _inner(*a, **k)
    finally:
        grounding_s[0] += time.perf_counter() - t
quality.grounding_scores = _timed
cfg = QualityConfig(sys.argv[1], prompt_file=sys.argv[2], clip_model=sys.argv[4] or None,
                    cache_dir=sys.argv[5] or None, cross_image=sys.argv[6] == "1")
rep = analyse(cfg)
t1 = time.perf_counter()
write_report(rep, sys.argv[3])
t2 = time.perf_counter()
print(json.dumps({"imports_s": imports_s, "grounding_s": grounding_s[0], "analyse_s": t1 - t0, "write_s": t2 - t1, "total_s": t2 - t0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "samples": rep.summary["samples"], "flags": rep.summary["flags"]}))
"""


def run_child(gf: Path, pf: Path, out: Path, model: str = "", cache: str = "",
              cross_image: bool = False) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", CHILD, str(gf), str(pf), str(out), model, cache,
                          "1" if cross_image else "0"],
                         capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        sys.exit(f"report failed: {res.stderr.strip()[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def bench_grounding(folder: Path, n: int, model: str) -> dict:
    from PIL import Image

    n_images = max(1, n // 10)
    rng = random.Random(1)
    names = []
    for i in range(n_images):
        name = f"img/{i:05d}.png"
        (folder / "img").mkdir(exist_ok=True)
        Image.new("RGB", (64, 64), tuple(rng.randrange(256) for _ in range(3))).save(folder / name)
        names.append(name)
    gf, pf = make_inputs(folder, n, seed=2, image_names=names)
    cache = str(folder / "cache")
    cold = run_child(gf, pf, folder / "g1.json", model, cache)
    warm = run_child(gf, pf, folder / "g2.json", model, cache)
    base = run_child(gf, pf, folder / "g3.json", "", "")
    return {"samples": warm["samples"], "images": n_images, "cold_total_s": cold["total_s"],
            "cached_total_s": warm["total_s"], "without_grounding_s": base["total_s"],
            "grounding_per_10k_s": warm["grounding_s"] * 10_000 / warm["samples"],
            "imports_s": warm["imports_s"],
            "peak_rss_mb": warm["peak_rss_mb"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=600_000)
    ap.add_argument("--grounding_samples", type=int, default=10_000)
    ap.add_argument("--model", default="demo-charts", help="CLIP spec for the grounding figure")
    ap.add_argument("--skip_grounding", action="store_true")
    ap.add_argument("--cross_image", action="store_true", help="also time the report with "
                    "cross-image near-duplicates (MinHash LSH)")
    args = ap.parse_args()
    import platform

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), platform.processor())
    bf16 = "avx512_bf16" in open("/proc/cpuinfo").read()
    print(f"CPU: {cpu} (avx512_bf16: {'yes' if bf16 else 'no'}); load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    with tempfile.TemporaryDirectory(prefix="quality_bench_") as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        gf, pf = make_inputs(folder, args.samples)
        print(f"inputs: {args.samples:,} samples, {gf.stat().st_size / 1e6:.0f} MB generated file, "
              f"{pf.stat().st_size / 1e6:.0f} MB prompt file (built in {time.perf_counter() - t:.1f} s)")
        r = run_child(gf, pf, folder / "report.json")
        print(f"report without grounding: {r['total_s']:.1f} s (analyse {r['analyse_s']:.1f} s, "
              f"write {r['write_s']:.1f} s), peak RSS {r['peak_rss_mb']:.0f} MB; flags {r['flags']}")
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        if args.cross_image:
            c = run_child(gf, pf, folder / "report_x.json", cross_image=True)
            print(f"report with cross-image near-duplicates (MinHash LSH, datasketch): "
                  f"{c['total_s']:.1f} s (analyse {c['analyse_s']:.1f} s), peak RSS "
                  f"{c['peak_rss_mb']:.0f} MB — {c['total_s'] / r['total_s']:.2f}x the report "
                  f"without; cross_image_duplicate {c['flags'].get('cross_image_duplicate'):,}")
            print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        if not args.skip_grounding:
            (folder / "ground").mkdir()
            g = bench_grounding(folder / "ground", args.grounding_samples, args.model)
            print(f"grounding ({args.model}, {g['samples']:,} samples over {g['images']:,} "
                  f"images): {g['grounding_per_10k_s']:.1f} s per 10,000 samples from cached "
                  f"embeddings (report {g['cached_total_s']:.1f} s cached vs "
                  f"{g['without_grounding_s']:.1f} s without grounding; first run, filling the "
                  f"cache: {g['cold_total_s']:.1f} s; once per process: {g['imports_s']:.1f} s "
                  "to import torch/open_clip and resolve the model spec)")
            print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
