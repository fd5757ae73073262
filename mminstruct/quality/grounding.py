"""Numbers for the quality report: CLIP grounding of each sample (image vs question + answer,
from the project's vector cache through ``image_embed.embed_images`` / ``clip.embed_texts``) and the
distribution summaries (``stats``, ``histogram``, ``word_histogram``). numpy and the CLIP code
load only when grounding is asked for."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mminstruct.errors import InputError

GROUNDING_TEXT_CHARS = 300  # CLIP reads 77 tokens at most; the rest would be cut anyway
TEXT_BATCH = 2048
ANSWER_WORD_EDGES = (0, 1, 2, 3, 5, 10, 20, 50, 100, 200, 500)


def grounding_scores(rows: list[Any], cfg: Any, header: dict[str, Any]) -> dict[str, Any]:
    """CLIP cosine of each sample's image and its question + answer, from the vector cache
    (``image_embed.embed_images`` / ``clip.embed_texts``; the model loads only for what is not cached)."""
    import numpy as np

    from mminstruct.embed.clip import embed_texts, parse_model_spec

    from mminstruct.embed.image_embed import embed_images
    from mminstruct.data.images import resolve_image_path

    spec = parse_model_spec(cfg.clip_model or "")
    root = Path(cfg.input_folder or header.get("input_folder") or ".")
    images = sorted({r.image for r in rows if r.image})
    paths, bad = [], {}
    for img in images:
        try:
            paths.append(resolve_image_path(root, img))
        except InputError as e:
            bad[img] = str(e)
            paths.append(None)
    usable = [(img, p) for img, p in zip(images, paths) if p is not None]
    res = embed_images([p for _, p in usable], spec, cache=cfg.cache_dir, device=cfg.device,
                       show_progress=False)
    img_vec = {usable[int(k)][0]: res.vectors[j].astype(np.float32)
               for j, k in enumerate(res.ok)}
    for (img, _), (_, why) in zip([usable[i] for i in res.failed], res.failures):
        bad[img] = why
    todo = [r for r in rows if r.image in img_vec and r.text]
    texts = list(dict.fromkeys(r.text for r in todo))
    text_vec: dict[str, Any] = {}
    for start in range(0, len(texts), TEXT_BATCH):
        chunk = texts[start:start + TEXT_BATCH]
        vecs = embed_texts(chunk, spec, cache=cfg.cache_dir, device=cfg.device)
        text_vec.update(zip(chunk, vecs))
    scores = []
    for r in todo:
        r.grounding = float(np.dot(img_vec[r.image], text_vec[r.text]))
        scores.append(r.grounding)
    lowest = sorted((i for i, r in enumerate(rows) if r.grounding is not None),
                    key=lambda i: rows[i].grounding)[: cfg.lowest]
    out: dict[str, Any] = {"model": cfg.clip_model, "scored": len(scores),
                           "images_not_embedded": len(bad),
                           **stats(scores, 4), "histogram": histogram(scores, 20),
                           "lowest": [{"index": i, "id": rows[i].id, "keyword": rows[i].keyword,
                                       "image": rows[i].image, "score": round(rows[i].grounding, 4),
                                       "text": rows[i].text} for i in lowest]}
    if bad:
        out["not_embedded_examples"] = dict(list(sorted(bad.items()))[:5])
    for r in rows:
        r.text = None
    return out


# ----------------------------------------------------------------------------------------------
# Summary


def stats(values: Sequence[float], digits: int = 2) -> dict[str, Any]:
    if not values:
        return {"mean": None, "median": None, "p10": None, "p90": None, "min": None, "max": None}
    v = sorted(values)
    n = len(v)

    def q(p: float) -> float:
        return round(float(v[min(n - 1, int(p * (n - 1) + 0.5))]), digits)

    return {"mean": round(sum(v) / n, digits), "median": q(0.5), "p10": q(0.1), "p90": q(0.9),
            "min": round(float(v[0]), digits), "max": round(float(v[-1]), digits)}


def histogram(values: Sequence[float], bins: int) -> dict[str, list]:
    if not values:
        return {"edges": [], "counts": []}
    lo, hi = min(values), max(values)
    width = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for x in values:
        counts[min(bins - 1, int((x - lo) / width))] += 1
    return {"edges": [round(lo + k * width, 4) for k in range(bins + 1)], "counts": counts}


def word_histogram(values: Sequence[int]) -> dict[str, list]:
    counts = [0] * len(ANSWER_WORD_EDGES)
    for x in values:
        k = len(ANSWER_WORD_EDGES) - 1
        while x < ANSWER_WORD_EDGES[k]:
            k -= 1
        counts[k] += 1
    labels = [f"{a}–{b - 1}" if b - 1 > a else str(a)
              for a, b in zip(ANSWER_WORD_EDGES, ANSWER_WORD_EDGES[1:])]
    return {"bins": labels + [f"{ANSWER_WORD_EDGES[-1]}+"], "counts": counts}
