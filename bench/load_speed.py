"""Loading a LLaVA-Instruct-150K-sized data file: time and peak memory, new path against the old.

    .venv/bin/python bench/load_speed.py [--records 150000] [--distinct 1] [--skip-old]

Builds, in a temporary folder, a JSON list of ``--records`` LLaVA records (about 2 KB each, so
150,000 records make about 300 MB, like LLaVA-Instruct-150K) whose images are ``--distinct``
names of one real JPEG (hard links; 1 = every record names the same file, as in the issue). Each
variant then runs in a fresh Python process (so peak RSS is its own), after one warm-up read of
the file (warm disk cache):

  json.load      the JSON parse alone (``json.load``), the reference;
  no check       ``records.load_data_file(check_images=False)``: parse + validate every record;
  new            ``records.load_data_file`` (default ``check_images="header"``);
  new, decode    ``load_data_file(check_images="decode")`` (every distinct image fully decoded);
  old            the previous image check: ``resolve_image_path`` (two ``Path.resolve``),
                 ``exists`` and ``probe_image`` for every image of every record, one after another
                 (``load_data_file(check_images=False)`` + that loop).

Targets: issue 11, ``new`` ≤ 10 s and ≤ 1 GB for 150,000 records on 2 cores, warm cache; issue 20,
``load_data_file`` within 2× ``json.load`` of the same file and under 1 GB peak (printed as ratios
from this one run, with the CPU and the load average).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

QUESTIONS = ["What is the man doing in the picture?", "Describe the scene in detail.",
             "How many people are visible, and what are they wearing?",
             "What could be the reason for the crowd gathering here?"]


def build(folder: Path, n: int, distinct: int) -> Path:
    """The data file and its images; ~2 KB a record, several turns, LLaVA-Instruct's layout."""
    import numpy as np
    from PIL import Image

    images = folder / "coco" / "train2017"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arr = np.clip(rng.normal(128, 40, (480, 640, 3)), 0, 255).astype(np.uint8)
    first = images / "000000000000.jpg"
    Image.fromarray(arr, "RGB").save(first, quality=90)
    names = [first.name]
    for k in range(1, distinct):
        name = f"{k:012d}.jpg"
        os.link(first, images / name)
        names.append(name)
    answer = ("The image shows a busy street with people walking on the sidewalk, cars parked "
              "along the road and a red bus approaching the intersection. ") * 6
    path = folder / "llava_instruct_150k.json"
    with path.open("w") as f:
        f.write("[")
        for i in range(n):
            turns = []
            for t in range(2):
                q = QUESTIONS[(i + t) % len(QUESTIONS)]
                turns.append({"from": "human", "value": ("<image>\n" if t == 0 else "") + q})
                turns.append({"from": "gpt", "value": f"{answer}(sample {i}, turn {t})"})
            rec = {"id": f"{i:012d}", "image": f"coco/train2017/{names[i % distinct]}",
                   "conversations": turns}
            f.write(("," if i else "") + json.dumps(rec))
        f.write("]")
    return path


def cpu_line() -> str:
    """The CPU model and whether it has avx512_bf16 (printed beside every figure)."""
    model, flags = "unknown CPU", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    return f"CPU: {model}; avx512_bf16: {'yes' if 'avx512_bf16' in flags.split() else 'no'}"


def child(variant: str, path: Path) -> dict:
    t0 = time.perf_counter()
    if variant == "json":
        with path.open("rb") as f:
            n = len(json.load(f))
        loaded, skipped = n, 0
    elif variant == "old":
        from mminstruct.errors import ImageError, UnsafePathError
        from mminstruct.data.images import probe_image, resolve_image_path
        from mminstruct.data.records import load_data_file

        df = load_data_file(path, check_images=False)
        skipped = 0
        for rec in df.records:  # the previous _check_record_images, verbatim in effect
            for rel in rec.images:
                try:
                    full = resolve_image_path(df.image_root, rel)
                    if not full.exists():
                        skipped += 1
                        break
                    probe_image(full)
                except (UnsafePathError, ImageError):
                    skipped += 1
                    break
        loaded = len(df.records) - skipped
    else:
        from mminstruct.data.records import load_data_file

        mode = {"decode": "decode", "nocheck": False}.get(variant, "header")
        df = load_data_file(path, check_images=mode)
        loaded, skipped = df.report.loaded, df.report.skipped
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB → MB on Linux
    return {"variant": variant, "seconds": seconds, "peak_mb": peak, "loaded": loaded,
            "skipped": skipped}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=150_000)
    ap.add_argument("--distinct", type=int, default=1, help="distinct image names (hard links)")
    ap.add_argument("--skip-old", action="store_true", help="do not time the old path (slow)")
    ap.add_argument("--child", nargs=2, metavar=("VARIANT", "FILE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]))))
        return
    with tempfile.TemporaryDirectory(prefix="mminstruct-load-") as tmp:
        t0 = time.perf_counter()
        path = build(Path(tmp), args.records, max(1, args.distinct))
        size = path.stat().st_size
        print(f"built {args.records:,} records ({size / 1e6:.0f} MB of JSON, {args.distinct} "
              f"distinct image name(s)) in {time.perf_counter() - t0:.1f} s; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
        print(cpu_line())
        path.read_bytes()  # warm the disk cache
        variants = ["json", "nocheck", "new", "decode"] + ([] if args.skip_old else ["old"])
        rows = []
        for v in variants:
            out = subprocess.run([sys.executable, __file__, "--child", v, str(path)],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        names = {"json": "json.load", "nocheck": "no check", "new": "new", "decode": "new, decode",
                 "old": "old"}
        print(f"\n{'variant':<14}{'seconds':>9}{'peak MB':>9}{'loaded':>9}{'skipped':>9}")
        for r in rows:
            print(f"{names[r['variant']]:<14}{r['seconds']:>9.2f}{r['peak_mb']:>9.0f}{r['loaded']:>9,}"
                  f"{r['skipped']:>9,}")
        by = {r["variant"]: r for r in rows}
        if "old" in by:
            print(f"\nnew vs old: {by['old']['seconds'] / by['new']['seconds']:.1f}× faster, "
                  f"peak {by['new']['peak_mb']:.0f} vs {by['old']['peak_mb']:.0f} MB")
        base = by["json"]
        for v in ("nocheck", "new"):
            r = by[v]
            print(f"load_data_file ({'no image check' if v == 'nocheck' else 'header check'}) vs "
                  f"json.load: {r['seconds'] / base['seconds']:.2f}× the time (target ≤ 2×), "
                  f"peak {r['peak_mb']:.0f} vs {base['peak_mb']:.0f} MB (target < 1024)")
        ok = by["new"]["seconds"] <= 10 and by["new"]["peak_mb"] <= 1024
        print(f"target ≤ 10 s and ≤ 1 GB: {'met' if ok else 'NOT met'}  "
              f"(load average now {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
