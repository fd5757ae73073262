"""The issue-11 GPU table: every row in one run, for each model (random weights).

    .venv/bin/python bench/embed_throughput.py --device cuda [--n 8192] [--batch-size 256]
        [--models ViT-B-32 ViT-L-14] [--size 640x480]

Rows, in images/s from N photo-like JPEG files (cold cache each time):

  MM-Gen's way            main process: PIL open + preprocess + fp32 model, one batch at a time
  embed_images, CPU decode, 4 workers       the previous default (GPU decoding off)
  embed_images, CPU decode, cores−1 workers the new CPU-side default on a GPU (GPU decoding off)
  CPU decode + preprocess alone, cores processes (PIL)     no model; ± draft mode
  embed_images default: GPU decode + GPU resize + auto precision (bf16 where it passes)
  model forward alone, bf16 / fp32, ready tensors on the GPU

with the min cosine of the GPU path's vectors to MM-Gen's (fp32, CPU decode). Targets: ViT-B-32
≥ 5,000 img/s and ViT-L-14 ≥ 2,000 img/s end to end, cosine ≥ 0.999. Model-independent rows
(decode alone) run once, for the first model. Imported by ``embed_throughput.py``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mminstruct.embed import clip  # noqa: E402
from mminstruct.embed import image_embed  # noqa: E402
from mminstruct.embed.image_embed import available_cpus, cpu_workers  # noqa: E402
from mminstruct.data.images import preprocess_file  # noqa: E402


def _make_part(args: tuple[Any, str, int, tuple[int, int], int]) -> list[Path]:
    make_jpegs, folder, n, size, seed = args
    sub = Path(folder) / f"part{seed}"
    sub.mkdir()
    return make_jpegs(sub, n, size, seed=seed)


_PP: Any = None


def _init(preprocess: Any) -> None:
    """A forked decode process: one intra-op thread, as DataLoader workers do (a forked copy of the
    parent's OpenMP pool deadlocks on the first tensor op)."""
    import torch

    global _PP
    torch.set_num_threads(1)
    _PP = preprocess


def _decode_chunk(args: tuple[list[Path], tuple[int, int] | None]) -> int:
    paths, draft = args
    return sum(preprocess_file(p, _PP, draft)[0] is not None for p in paths)


def decode_alone(paths: list[Path], preprocess: Any, procs: int, draft: tuple[int, int] | None
                 ) -> float:
    chunks = [(paths[i:i + 64], draft) for i in range(0, len(paths), 64)]
    with ProcessPoolExecutor(procs, initializer=_init, initargs=(preprocess,)) as pool:
        list(pool.map(_decode_chunk, chunks[:procs]))  # warm the workers up
        t = time.perf_counter()
        n = sum(pool.map(_decode_chunk, chunks))
    return n / (time.perf_counter() - t)


def forward_rate(cm: Any, x: Any, precision: str, bs: int, rounds: int = 5) -> float:
    import torch

    cm.encode_image_batch(x[:bs], precision)  # warm-up (and the bf16 copy)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(rounds):
        for s in range(0, len(x), bs):
            cm.encode_image_batch(x[s:s + bs], precision)
    torch.cuda.synchronize()
    return rounds * len(x) / (time.perf_counter() - t)


def cuda_main(args: Any, make_jpegs: Any, mm_gen_way: Any) -> int:
    import open_clip
    import torch

    if not torch.cuda.is_available():
        print("--device cuda: no CUDA device here", file=sys.stderr)
        return 2
    dev = args.device if ":" in args.device else "cuda:0"
    n, bs = args.n or 8192, args.batch_size or 256
    w, h = (int(v) for v in (args.size or "640x480").lower().split("x"))
    cores = available_cpus()
    load0 = os.getloadavg()[0]
    print(f"GPU table: {torch.cuda.get_device_name(dev)}, {cores} CPU cores, {n} JPEGs {w}x{h}, "
          f"batch {bs}, load average {load0:.1f}", flush=True)
    rows: list[tuple[str, str, float, str]] = []
    with tempfile.TemporaryDirectory(prefix="mmi_gpu_bench_") as tmp:
        t0 = time.perf_counter()
        per = -(-n // cores)
        with ProcessPoolExecutor(cores) as pool:
            parts = pool.map(_make_part, [(make_jpegs, tmp, min(per, n - k * per), (w, h), k)
                                          for k in range(cores) if n - k * per > 0])
            paths = [p for part in parts for p in part]
        print(f"generated {len(paths)} JPEGs in {time.perf_counter() - t0:.1f} s", flush=True)
        for m, arch in enumerate(args.models):
            torch.manual_seed(0)
            net, _, pp = open_clip.create_model_and_transforms(arch, pretrained=None, device=dev)
            net.eval()
            tok = open_clip.get_tokenizer(arch)

            def fresh(tag: str, precision: str = "auto", net: Any = net, pp: Any = pp,
                      tok: Any = tok, arch: str = arch) -> Any:
                return clip.ClipModel(net, pp, tok, f"bench:{arch}:{tag}", dev, precision)

            def pipeline(tag: str, **kw: Any) -> tuple[float, Any]:
                t = time.perf_counter()
                res = image_embed.embed_images(paths, fresh(tag), batch_size=bs, cache=False,
                                        show_progress=False, **kw)
                return len(paths) / (time.perf_counter() - t), res

            rate, ref = mm_gen_way(net, pp, paths, bs)
            rows.append((arch, "MM-Gen's way (main process, fp32)", rate, ""))
            print(rows[-1], flush=True)
            rate, res = pipeline("cpu4", num_workers=4, gpu_decode=False)
            rows.append((arch, "embed_images, CPU decode, 4 workers (previous default)", rate,
                         f"precision {res.precision}"))
            print(rows[-1], flush=True)
            rate, res = pipeline("cpuN", gpu_decode=False)
            rows.append((arch, f"embed_images, CPU decode, {cpu_workers(dev)} workers", rate,
                         f"precision {res.precision}, decode {res.decode}"))
            print(rows[-1], flush=True)
            if m == 0:
                short = pp.transforms[0].size if hasattr(pp.transforms[0], "size") else 224
                short = short if isinstance(short, int) else min(short)
                for draft in (None, (short, short)):  # as image_embed.choose_draft asks
                    rate = decode_alone(paths, pp, cores, draft)
                    name = f"CPU decode + preprocess alone, {cores} processes (PIL)"
                    rows.append((arch, name + (", draft mode" if draft else ""), rate, ""))
                    print(rows[-1], flush=True)
            rate, res = pipeline("gpu")
            vec_ok = res.vectors.astype(np.float32)
            cos = (vec_ok * ref[res.ok]).sum(axis=1)
            rows.append((arch, "embed_images default: GPU decode + GPU resize + auto precision",
                         rate, f"precision {res.precision}, decode {res.decode}, min cosine to "
                         f"MM-Gen's {cos.min():.5f}, failures {len(res.failures)}"))
            print(rows[-1], flush=True)
            x = torch.stack([preprocess_file(p, pp)[0] for p in paths[:bs * 2]]).to(dev)
            cm = fresh("fwd")
            for prec in ("bf16", "fp32"):
                rows.append((arch, f"model forward alone, {prec}, ready tensors",
                             forward_rate(cm, x, prec, bs), ""))
                print(rows[-1], flush=True)
            del net, cm
            torch.cuda.empty_cache()
    print(f"\n| images/s | {' | '.join(args.models)} | notes |")
    print(f"|---|{'---|' * len(args.models)}---|")
    names = list(dict.fromkeys(r[1] for r in rows))
    for name in names:
        cells = [next((f"{r[2]:,.0f}" for r in rows if r[0] == a and r[1] == name), "")
                 for a in args.models]
        notes = "; ".join(f"{r[0]}: {r[3]}" for r in rows if r[1] == name and r[3])
        print(f"| {name} | {' | '.join(cells)} | {notes} |")
    print(f"\nload average {load0:.1f} → {os.getloadavg()[0]:.1f}")
    return 0
