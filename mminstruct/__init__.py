"""mminstruct: turn a small VLM instruction reference set into a large, targeted synthetic training set.

The package is the headless core: it never imports streamlit. Heavy dependencies (torch, open_clip,
umap, ray) are imported lazily inside the functions that use them, so ``import mminstruct`` is cheap.
"""

__version__ = "0.1.0"
