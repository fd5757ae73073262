"""Image-embedding throughput: mminstruct's pipeline against MM-Gen's way, from one run.

    .venv/bin/python bench/embed_throughput.py [--n 256] [--repeat 2] [--batch-size 32] [--workers N]
        [--precision auto fp32 int8] [--models ViT-B-32 RN50] [--forward-n 32]
    .venv/bin/python bench/embed_throughput.py --device cuda    # the GPU table (one H200 run)

Per architecture (seeded random weights: speed does not depend on the weights), N generated JPEGs
of about 500×400 px. First the CPU: its model name, the flags that decide precision speed (avx2,
avx512_bf16, amx_bf16, avx512_vnni, avx_vnni), ``clip.cpu_kind`` and what ``auto`` tries there
(``clip.AUTO_ORDER``). Then, in images/s with ratios to (c):

  (a) the model's forward alone on ready tensors, fp32, bf16 (a bf16 copy of the image tower) and
      int8 (``clip.int8_copy``: dynamic quantisation of the Linear layers the tower calls as
      modules), side by side, each with its min cosine to fp32 — or why it cannot run that
      architecture;
  (b) mminstruct.embed.image_embed.embed_images from the JPEG files, cold cache, once per ``--precision``
      (default workers: see ``image_embed.cpu_workers``; auto = ``clip.auto_candidates``, each
      kept only when the first-batch check passes);
  (c) MM-Gen's way: open, preprocess and encode one batch at a time in the main process, fp32;
  (d) (b) again over the same files: every vector comes from the cache.

(b) and (c) run ``--repeat`` times each, alternating, and the best run of each counts (the
machine is shared: the load average is printed before and after). Plus the cosine between (b)'s
and (c)'s vectors. Targets: (b) auto ≥ 1.3 × (c) without native bf16, ≥ 2 × with it, cosine ≥
0.999; (d) ≥ 50 × faster than (b). ``--device cuda`` prints the issue-11 GPU table instead
(``bench/embed_throughput_gpu.py``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mminstruct.embed import clip  # noqa: E402
from mminstruct.embed import image_embed  # noqa: E402


def make_jpegs(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """Photo-like JPEGs: smooth colour fields, shapes and grain (so decoding costs what it does)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paths = []
    for i in range(n):
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = (xx / w * rng.uniform(0.2, 1) + yy / h * rng.uniform(0.2, 1))[..., None] / 2
        arr = c0 * (1 - t) + c1 * t + rng.normal(0, 12, (h, w, 3))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
        d = ImageDraw.Draw(img)
        for _ in range(6):
            x0, y0 = rng.integers(0, w - 40), rng.integers(0, h - 40)
            box = [x0, y0, x0 + rng.integers(20, w // 2), y0 + rng.integers(20, h // 2)]
            fill = tuple(int(v) for v in rng.integers(0, 255, 3))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=fill)
        p = folder / f"img_{i:05d}.jpg"
        img.save(p, format="JPEG", quality=90)
        paths.append(p)
    return paths


def forward_only(encode, tensors, batch_size: int) -> float:
    start = time.perf_counter()
    for s in range(0, len(tensors), batch_size):
        encode(tensors[s:s + batch_size])
    return len(tensors) / (time.perf_counter() - start)


def mm_gen_way(model, preprocess, paths: list[Path], batch_size: int) -> tuple[float, np.ndarray]:
    """One batch at a time in the main process: open, preprocess, encode (fp32), normalise."""
    import torch
    from PIL import Image

    out = []
    device = next(model.parameters()).device
    start = time.perf_counter()
    for s in range(0, len(paths), batch_size):
        images = [Image.open(p) for p in paths[s:s + batch_size]]
        x = torch.stack([preprocess(im) for im in images]).to(device)
        with torch.no_grad():
            f = model.encode_image(x)
        out.append((f / f.norm(dim=-1, keepdim=True)).float().cpu().numpy())
    return len(paths) / (time.perf_counter() - start), np.concatenate(out)


CPU_FLAGS = ("avx2", "avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni")


def cpu_description() -> str:
    """The CPU's model name and which of ``CPU_FLAGS`` it has (from /proc/cpuinfo, Linux)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                 if line.startswith("model name")), "unknown CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines()
                      if line.startswith("flags")), []))
    return f"{name}, flags: " + ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in CPU_FLAGS)


def bench_model(arch: str, args: argparse.Namespace, paths: list[Path], tmp_path: Path) -> dict:
    """One architecture's rows: (a) per precision, (b) per --precision × --workers, (c), (d)."""
    import open_clip
    import torch
    from PIL import Image

    torch.manual_seed(0)
    net, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None)
    net.eval()
    tokenizer = open_clip.get_tokenizer(arch)
    bs = args.batch_size
    tensors = torch.stack([preprocess(Image.open(p)) for p in paths[:args.forward_n]])
    # (a) through the same ClipModel calls (b) makes; a separate instance, so (b) still decides
    fwd = clip.ClipModel(net, preprocess, tokenizer, identity=f"bench:forward:{arch}", name=arch)
    ref = fwd.encode_image_batch(tensors, "fp32")
    a_rows = []
    for prec in ("fp32", "bf16", "int8"):
        try:
            fwd.encode_image_batch(tensors[:4], prec)  # warm-up (and the bf16 / int8 copy)
            rate = forward_only(lambda x, p=prec: fwd.encode_image_batch(x, p), tensors, bs)
            cos = float((ref * fwd.encode_image_batch(tensors, prec)).sum(dim=1).min())
            a_rows.append((f"(a) forward only, {prec}, ready tensors", rate,
                           f"min cosine to fp32 {cos:.5f}"))
        except Exception as e:  # noqa: BLE001 — reported as the row
            a_rows.append((f"(a) forward only, {prec}, ready tensors", None,
                           f"cannot run: {type(e).__name__}: {str(e)[:150]}"))
    fwd.drop_copies()

    # (c) and each (b) alternate, `repeat` times each, and the best of each counts: other
    # processes on a shared machine then hurt all alike. Every (b) starts cold: a new cache and
    # a new model wrapper (so its precision check runs again).
    c_rates: list[float] = []
    variants = [(p, wk) for p in args.precision for wk in args.workers]
    b_rates: dict[tuple, list[float]] = {v: [] for v in variants}
    b_res: dict[tuple, object] = {}
    refused: dict[tuple, str] = {}
    model = cache = wk = None
    b_secs = 0.0
    for r in range(args.repeat):
        c_rate, c_vecs = mm_gen_way(net, preprocess, paths, bs)
        c_rates.append(c_rate)
        for prec, wk_ in variants:
            if (prec, wk_) in refused:
                continue
            m = clip.ClipModel(net, preprocess, tokenizer, precision=prec, name=arch,
                               identity=f"bench:{arch}:random:{prec}:{wk_}:{r}")
            c = tmp_path / f"cache-{arch}-{prec}-{wk_}-{r}"
            t = time.perf_counter()
            try:
                b = image_embed.embed_images(paths, m, batch_size=bs, num_workers=wk_, cache=c,
                                             show_progress=False)
            except clip.PrecisionError as e:
                refused[(prec, wk_)] = str(e)
                continue
            secs = time.perf_counter() - t
            b_rates[(prec, wk_)].append(len(paths) / secs)
            b_res[(prec, wk_)] = b
            if b.failures:
                raise SystemExit(f"unexpected: {len(b.failures)} failures")
            model, cache, wk, b_secs = m, c, wk_, secs
    d_secs = None
    if model is not None:
        t = time.perf_counter()
        d = image_embed.embed_images(paths, model, batch_size=bs, num_workers=wk, cache=cache,
                                     show_progress=False)
        d_secs = time.perf_counter() - t
        if d.n_computed:
            raise SystemExit(f"unexpected: {d.n_computed} recomputed on the cached run")
    c_rate = max(c_rates)
    workers = image_embed.cpu_workers("cpu")
    each = lambda rates: "runs: " + ", ".join(f"{x:.2f}" for x in rates)  # noqa: E731
    rows, cosines = list(a_rows), {}
    for (prec, wk_), rates in b_rates.items():
        label = f"(b) pipeline, --precision {prec}, workers {workers if wk_ is None else wk_}"
        if (prec, wk_) in refused:
            rows.append((label, None, f"refused: {refused[(prec, wk_)][:200]}"))
            continue
        b = b_res[(prec, wk_)]
        cosines[(prec, wk_)] = (b.vectors.astype(np.float32) * c_vecs).sum(axis=1)
        rows.append((label, max(rates), f"ran {b.precision}, decode {b.decode}; cosine to (c) "
                     f"min {cosines[(prec, wk_)].min():.5f}; {each(rates)}"))
    rows.append(("(c) MM-Gen way: main process, fp32", c_rate, each(c_rates)))
    if d_secs:
        rows.append(("(d) mminstruct pipeline, cache hit", len(paths) / d_secs, ""))
    return dict(rows=rows, c_rate=c_rate, b_rates=b_rates, cosines=cosines, b_secs=b_secs,
                d_secs=d_secs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda: the GPU table, see "
                    "bench/embed_throughput_gpu.py")
    ap.add_argument("--n", type=int, default=None, help="number of JPEGs (default 256; cuda 8192)")
    ap.add_argument("--repeat", type=int, default=2,
                    help="(b) and (c) each run this many times, alternating; the best counts")
    ap.add_argument("--batch-size", type=int, default=None, help="default 32; cuda 256")
    ap.add_argument("--workers", type=int, nargs="+", default=[None],
                    help="DataLoader workers for (b), one (b) per value (default: cpu_workers)")
    ap.add_argument("--forward-n", type=int, default=32, help="images for (a) (default 32)")
    ap.add_argument("--size", default=None, help="JPEG size WxH (default 500x400; cuda 640x480)")
    ap.add_argument("--precision", nargs="+", default=["auto", "fp32", "int8"],
                    choices=["fp32", "bf16", "int8", "auto"],
                    help="(b) once per precision given (default: auto fp32 int8; bf16 is in (a), "
                         "and emulated — slow — on CPUs without native bf16)")
    ap.add_argument("--models", nargs="+", default=None,
                    help="architectures, random weights (default: cpu ViT-B-32 RN50; "
                         "cuda ViT-B-32 ViT-L-14)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("mminstruct").setLevel(logging.INFO)
    if args.device.startswith("cuda"):
        from embed_throughput_gpu import cuda_main  # noqa: PLC0415 — the GPU table's own module

        args.models = args.models or ["ViT-B-32", "ViT-L-14"]
        return cuda_main(args, make_jpegs, mm_gen_way)
    args.n, args.batch_size = args.n or 256, args.batch_size or 32
    args.size = args.size or "500x400"
    args.models = args.models or ["ViT-B-32", "RN50"]

    import torch

    w, h = (int(v) for v in args.size.lower().split("x"))
    load0 = os.getloadavg()
    kind = clip.cpu_kind()
    cpu = (f"CPU: {cpu_description()}; cpu_kind {kind} (auto tries: "
           f"{', '.join(clip.AUTO_ORDER[kind]) or 'nothing'}); torch threads "
           f"{torch.get_num_threads()}, {os.cpu_count()} cores, default workers "
           f"{image_embed.cpu_workers('cpu')}")
    print(cpu, file=sys.stderr)
    results = {}
    with tempfile.TemporaryDirectory(prefix="mmi_bench_") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "img").mkdir()
        t0 = time.perf_counter()
        paths = make_jpegs(tmp_path / "img", args.n, (w, h))
        print(f"generated {len(paths)} JPEGs of {w}x{h} in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
        for arch in args.models:
            results[arch] = bench_model(arch, args, paths, tmp_path)
            print(f"{arch} done, load average {os.getloadavg()[0]:.1f}", file=sys.stderr)
    load1 = os.getloadavg()
    print(f"\nembedding throughput, {len(paths)} JPEGs {w}x{h}, batch {args.batch_size}; {cpu}; "
          f"load average (1/5/15 min) {load0[0]:.1f}/{load0[1]:.1f}/{load0[2]:.1f} before → "
          f"{load1[0]:.1f}/{load1[1]:.1f}/{load1[2]:.1f} after")
    verdicts = []
    need = 2.0 if kind == "native-bf16" else 1.3
    for arch, res in results.items():
        print(f"\n{arch} (random weights)")
        print(f"{'':62s} {'img/s':>9s} {'vs (c)':>8s}")
        for name, rate, note in res["rows"]:
            shown = f"{rate:9.2f} {rate / res['c_rate']:7.2f}x" if rate else f"{'—':>9s} {'':8s}"
            print(f"{name:62s} {shown}  {note}")
        auto = [max(r) for (p, _), r in res["b_rates"].items() if p == "auto" and r]
        if auto:
            verdicts.append((f"{arch}: (b) auto >= {need}x (c)", max(auto) >= need * res["c_rate"]))
        verdicts.append((f"{arch}: cosine >= 0.999",
                         all(c.min() >= 0.999 for c in res["cosines"].values())))
        if res["d_secs"]:
            verdicts.append((f"{arch}: cache hit >= 50x", res["b_secs"] / res["d_secs"] >= 50))
    print("\ntargets: " + ", ".join(f"{n}: {'met' if ok else 'MISSED'}" for n, ok in verdicts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
