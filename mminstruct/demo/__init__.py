"""The offline demo: synthetic charts with correct answers, and a tiny CLIP trained on them.

* ``build_demo_workspace(folder, seed)`` → ``DemoWorkspace``: a chart QA reference set (LLaVA
  format), an unlabeled candidate pool and ``labels.json`` (``python -m mminstruct.demo``).
* ``DEMO_MODEL`` / ``model_files()``: the demo CLIP, an open_clip config + checkpoint shipped in
  ``demo/model/`` and loaded through open_clip's normal path::

      config, checkpoint = model_files()
      open_clip.add_model_config(config)
      model, _, preprocess = open_clip.create_model_and_transforms(DEMO_MODEL, pretrained=str(checkpoint))

  It knows charts only (bar, line, pie, scatter); see ``demo/model/TRAINING.md``.

Nothing heavy is imported here: matplotlib and torch load inside the functions that draw or train.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelSpecError
from .workspace import KEYWORDS as DEMO_KEYWORDS
from .workspace import DemoWorkspace, build_demo_workspace, read_labels

DEMO_MODEL = "demo-charts"
MODEL_DIR = Path(__file__).resolve().parent / "model"
CONFIG_PATH = MODEL_DIR / f"{DEMO_MODEL}.json"
CHECKPOINT_PATH = MODEL_DIR / f"{DEMO_MODEL}.pt"


def model_files() -> tuple[Path, Path]:
    """(open_clip model config JSON, checkpoint) of the demo CLIP; the config's file stem is the
    architecture name ``demo-charts``. Raises ModelSpecError when either file is missing."""
    missing = [str(p) for p in (CONFIG_PATH, CHECKPOINT_PATH) if not p.is_file()]
    if missing:
        raise ModelSpecError(
            f"demo model files missing: {', '.join(missing)} (train them with "
            "`python -m mminstruct.demo.train`)")
    return CONFIG_PATH, CHECKPOINT_PATH


__all__ = ["DEMO_MODEL", "DEMO_KEYWORDS", "DemoWorkspace", "build_demo_workspace", "model_files",
           "read_labels"]
