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

from mminstruct.embed.clip import DEMO_MODEL, named_model_files, named_model_paths
from mminstruct.demo.workspace import KEYWORDS as DEMO_KEYWORDS
from mminstruct.demo.workspace import DemoWorkspace, build_demo_workspace, read_labels

def model_paths() -> tuple[Path, Path]:
    """Where the demo CLIP's (config, checkpoint) go, made or not (``mminstruct/named_models.json``,
    the one table of shipped models)."""
    return named_model_paths(DEMO_MODEL)


def model_files() -> tuple[Path, Path]:
    """(open_clip model config JSON, checkpoint) of the demo CLIP; the config's file stem is the
    architecture name ``demo-charts``. Raises ModelSpecError when either file is missing."""
    return named_model_files(DEMO_MODEL)


__all__ = ["DEMO_MODEL", "DEMO_KEYWORDS", "DemoWorkspace", "build_demo_workspace", "model_files",
           "model_paths",
           "read_labels"]
