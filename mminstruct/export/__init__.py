"""Exports (``formats``: MM-Gen, LLaVA, LLaMA-Factory ShareGPT JSON + dataset_info.json; ``hf``: a
Hugging Face dataset folder, Parquet + dataset card). ``python -m mminstruct.export``.
"""

from mminstruct.lazy import public

__all__, __getattr__ = public(__name__, {
    "export_file": "formats",
    "EXPORT_FORMATS": "formats",
    "get_format": "formats",
    "ExportReport": "formats",
})
