"""Build the tree of "real-world" data-file fixtures the format tests read, from files in the repo alone.

The tree has the same layout as ``../shared/fixtures/real`` (``OWNER__REPO/<path in that repo>``):

* Apache-2.0 files are copied as they are from ``tests/data/real`` (see ``tests/data/NOTICE.md``).
* Files without a licence that allows copying are written here as look-alikes with the same shapes
  and quirks but text and paths of our own: MM-Gen's three task files (no licence) and the
  LLaVA-Instruct-150K excerpt (CC BY-NC 4.0).
* Images over ~1 MB are replaced by small stand-ins with the same quirk (format, mode, size).

Run ``python -m tests.data.make_fixtures OUT`` to write the tree to OUT.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

COPIED = Path(__file__).resolve().parent / "real"

MMGEN = "sjoshi804__MM-Gen/task_files"
AI2D = f"{MMGEN}/ai2d_gen_single_subgroup_2024_09_18_13-58-08.json"
SPATIAL = f"{MMGEN}/spatial_map_gen_task_desc_2024_09_19_02-09-58.json"
CHART = f"{MMGEN}/chartqa_gen_task_desc_5cap_per_img.json"
LLAVA_100 = "hiyouga__LLaMA-Factory/data/llava_instruct_100.json"
LMMS_IMAGES = "zjysteven__lmms-finetune/example_data/images"

_WORDS = ("red blue green chart value axis year line bar share total growth map north south east west "
          "store park river bridge school tower cell plant energy food water light layer").split()


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def _write_json(path: Path, obj, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, **kw), encoding="utf-8")


def _ai2d(rng: random.Random) -> dict:
    # No ids; human/gpt; multiple-choice text with a trailing newline; 3922 candidates in one subgroup.
    samples = []
    for i in range(100):
        opts = "\n".join(f"{c}. {_sentence(rng, 2)}" for c in "ABCD")
        samples.append({"image_1": f"{1000 + 7 * i}.png", "conversations": [
            {"from": "human", "value": f"<image> {_sentence(rng, 9)}\nOptions: {opts}\n"},
            {"from": "gpt", "value": f"A. {_sentence(rng, 2)}"}]})
    idx = list(range(100))
    rng.shuffle(idx)
    return {"image_folder": "downloaded_datasets/ai2d/images",
            "dataset_description": "diagram understanding and visual reasoning",
            "subgroups": [{"keyword": "charts", "reference_sample_idx": idx,
                           "candidate_image_paths": [f"downloaded_datasets/ai2d/images/{i}.png"
                                                     for i in range(3922)]}],
            "samples": samples}


def _spatial(rng: random.Random) -> dict:
    # String ids; candidates under a different root (candidate_images/...) from image_folder.
    samples = [{"id": f"seed_{i // 3}_w_text_{i % 3 + 1}", "image_1": f"seed_{i // 3}_w_text.png",
                "conversations": [
                    {"from": "human", "value": f"<image> The figure is a map. Q{i % 3}: {_sentence(rng, 8)}? "
                                               f"Options for Q{i % 3}: [5, 3, 2, 0]. "},
                    {"from": "gpt", "value": f"A{i % 3}. {rng.choice([5, 3, 2, 0])}"}]}
               for i in range(300)]
    return {"image_folder": "downloaded_datasets/spatial_map_generated_val/images",
            "dataset_description": "Spatial reasoning on maps.",
            "subgroups": [{"keyword": "map", "reference_sample_idx": list(range(300)),
                           "candidate_image_paths": [
                               f"candidate_images/v0-text-map-1k/{rng.randrange(10**12):012d}.jpg"
                               for _ in range(999)]}],
            "samples": samples}


def _chart(rng: random.Random) -> dict:
    # Int ids 0..1919; user/assistant roles inside 'from'; 3 subgroups (1203/198/519 references,
    # 3184/427/2048 candidates: the proportions the prompt tests rely on).
    samples = [{"id": i, "conversations": [
        {"from": "user", "value": f"<image> {_sentence(rng, 8)}?\nAnswer the question with a single word."},
        {"from": "assistant", "value": rng.choice(_WORDS).capitalize()}], "image_1": f"{i}.jpg"}
        for i in range(1920)]
    order = list(range(1920))
    rng.shuffle(order)
    groups, start = [], 0
    for kw, n_ref, n_cand in (("bar chart", 1203, 3184), ("pie chart", 198, 427), ("line chart", 519, 2048)):
        groups.append({"keyword": kw, "reference_sample_idx": sorted(order[start:start + n_ref]),
                       "candidate_image_paths": [
                           f"downloaded_datasets/chartqa-train/images/{rng.randrange(20000)}.jpg"
                           for _ in range(n_cand)]})
        start += n_ref
    return {"image_folder": "downloaded_datasets/chartqa-val/images",
            "dataset_description": "Chart Understanding: extracting and reasoning about information from "
                                   "bar charts, pie charts and line charts.",
            "subgroups": groups, "samples": samples}


def _llava_100(rng: random.Random) -> list:
    # Zero-padded COCO-like string ids, bare file names (images not shipped), human/gpt,
    # <image> first in 46 records and last in 54; 1 record of 2 turns, 38 of 8, 61 of 10.
    turns = [2] + [8] * 38 + [10] * 61
    rng.shuffle(turns)
    out = []
    for i in range(100):
        num = f"{rng.randrange(10**6):012d}"
        q = _sentence(rng, 7) + "?"
        first = f"<image>\n{q}" if i % 100 < 46 else f"{q}\n<image>"
        conv = [{"from": "human", "value": first}, {"from": "gpt", "value": _sentence(rng, 30) + "."}]
        for _ in range(turns[i] // 2 - 1):
            conv += [{"from": "human", "value": _sentence(rng, 6) + "?"},
                     {"from": "gpt",
                      "value": "1. **" + _sentence(rng, 2) + "**: " + _sentence(rng, 25) + "."}]
        out.append({"id": num, "image": f"{num}.jpg", "conversations": conv})
    return out


def _stand_in_images(folder: Path) -> None:
    """Small images with the quirks of the big originals: a PNG named .jpg, RGBA PNGs 930x1240."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (1368, 912), (40, 140, 60))
    ImageDraw.Draw(img).ellipse([600, 400, 700, 500], fill=(250, 250, 250))
    img.save(folder / "soccer1.jpg", format="PNG")  # the extension lies, as in the original
    for k in range(1, 5):
        img = Image.new("RGBA", (930, 1240), (255, 255, 255, 0))
        ImageDraw.Draw(img).rectangle([60 * k, 80, 60 * k + 400, 600], fill=(20 * k, 60, 200, 255))
        img.save(folder / f"post{k}.png", format="PNG")


def build(dest: Path) -> Path:
    """Write the whole fixture tree under ``dest`` and return it."""
    dest = Path(dest)
    shutil.copytree(COPIED, dest, dirs_exist_ok=True)
    rng = random.Random(12)
    _write_json(dest / AI2D, _ai2d(rng))
    _write_json(dest / SPATIAL, _spatial(rng))
    _write_json(dest / CHART, _chart(rng))
    _write_json(dest / LLAVA_100, _llava_100(rng), indent=2)
    _stand_in_images(dest / LMMS_IMAGES)
    return dest


if __name__ == "__main__":  # pragma: no cover - a helper for people
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.data.make_fixtures OUT_FOLDER")
    print(build(Path(sys.argv[1])))
