"""Embedding: CLIP model specs and loading (``clip``: fp32/bf16/int8, shipped models), the image
pipeline and the precision choice (``image_embed``), JPEGs decoded on the GPU (``gpu_decode``), [N, D]
vectors in chunks and memory maps (``vectors``).
"""

from mminstruct.lazy import public

__all__, __getattr__ = public(__name__, {
    "load_clip": "clip",
    "parse_model_spec": "clip",
    "ModelSpec": "clip",
    "embed_texts": "clip",
    "embed_keywords": "clip",
    "PRECISIONS": "clip",
    "PrecisionError": "clip",
    "embed_images": "image_embed",
})
