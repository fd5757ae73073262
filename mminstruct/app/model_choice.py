"""Choosing the CLIP model in the app: check a spec before any work, find the checkpoints already
on this machine, remember the ones used, and fail at once when weights would have to be
downloaded and there is no way to download them.

* ``check_spec(spec)`` → ``ModelCheck``: parsed (``clip.parse_model_spec``: the spec's syntax,
  the checkpoint file exists, the config JSON is readable), and whether its weights are on this
  machine. Errors are ``ModelSpecError`` with the whole message.
* ``ready_to_load(spec)``: ``check_spec``, then, when the weights must be downloaded and this
  machine is offline (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``/``MMINSTRUCT_OFFLINE`` set, or
  huggingface.co unreachable within a few seconds), a ``ModelSpecError`` saying what to do.
* ``found_checkpoints()``: ``(spec, label)`` choices — the demo model, open_clip's URL cache
  (``~/.cache/clip``), Hugging Face's cache (tags whose weights are cached, ``hf-hub:`` models),
  and the checkpoints recently used in the app (``$MMINSTRUCT_HOME/recent_models.json``).

No streamlit here; ``open_clip`` and ``huggingface_hub`` are imported when called.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mminstruct.embed.clip import DEMO_MODEL, HF_HUB_PREFIX
from mminstruct.errors import ModelSpecError
from mminstruct.app.workspace import app_home, read_recent, write_recent

OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MMINSTRUCT_OFFLINE")
RECENT_MODELS = "recent_models.json"
MAX_RECENT_MODELS = 10
HF_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass(frozen=True)
class ModelCheck:
    spec: str  # as given, stripped
    kind: str  # tag, checkpoint, hf-hub, demo
    local: bool  # the weights are on this machine (no download needed)
    where: str  # the weights' file, or where they would come from

    @property
    def summary(self) -> str:
        if self.local:
            return f"{self.spec}: weights on this machine ({self.where})"
        return f"{self.spec}: weights are downloaded on first use (from {self.where})"


def _truthy(v: str | None) -> bool:
    return bool(v) and v.strip().lower() not in ("0", "false", "no", "off", "")


def offline_by_env() -> str | None:
    """The variable that says this machine is offline, if one does."""
    return next((v for v in OFFLINE_ENV if _truthy(os.environ.get(v))), None)


def _hf_cache_dir() -> Path | None:
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    return Path(constants.HF_HUB_CACHE)


def _hf_cached(repo_id: str, filenames: tuple[str, ...]) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for name in filenames:
        try:
            hit = try_to_load_from_cache(repo_id, name)
        except (ValueError, OSError):  # a malformed repo id, an unreadable cache
            continue
        if isinstance(hit, str) and os.path.isfile(hit):
            return hit
    return None


def _safe_names(filename: str) -> tuple[str, ...]:
    stem, ext = os.path.splitext(filename)
    alt = ("open_clip_model.safetensors",) if filename == "open_clip_pytorch_model.bin" else ()
    return (*alt, f"{stem}.safetensors", filename) if ext != ".safetensors" else (filename,)


def _url_cache_dir() -> Path:
    return Path(os.path.expanduser("~/.cache/clip"))


def _tag_weights(arch: str, tag: str) -> tuple[str | None, str]:
    """(the cached weights file or None, where a download would come from)."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
    if cfg.get("file"):
        return (cfg["file"] if os.path.isfile(cfg["file"]) else None), cfg["file"]
    hub, url = cfg.get("hf_hub", ""), cfg.get("url", "")
    if hub:
        model_id, filename = os.path.split(hub)
        hit = _hf_cached(model_id, _safe_names(filename or "open_clip_pytorch_model.bin"))
        if hit:
            return hit, f"huggingface.co/{model_id}"
    if url:
        local = _url_cache_dir() / os.path.basename(url)
        if local.is_file():
            return str(local), url
    return None, (f"huggingface.co/{os.path.split(hub)[0]}" if hub else url or "open_clip")


def check_spec(spec: str) -> ModelCheck:
    """Parse ``spec`` and find its weights; ``ModelSpecError`` (whole message) when it is bad."""
    from mminstruct.app.text_encoder import parse_spec  # noqa: PLC0415

    ms = parse_spec(str(spec or ""))  # no open_clip (torch) in the app's server
    raw = str(spec).strip()
    if ms.kind in ("checkpoint", "demo"):
        return ModelCheck(raw, ms.kind, True, ms.pretrained)
    if ms.kind == "hf-hub":
        hit = _hf_cached(ms.arch, HF_WEIGHTS)
        return ModelCheck(raw, ms.kind, hit is not None, hit or f"huggingface.co/{ms.arch}")
    hit, source = _tag_weights(ms.arch, ms.pretrained)
    return ModelCheck(raw, ms.kind, hit is not None, hit or source)


def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Can a TCP connection to ``host`` be opened within ``timeout`` (DNS included)?"""
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


def ready_to_load(spec: str, *, probe: bool = True) -> ModelCheck:
    """``check_spec``; when the weights must be downloaded and this machine cannot, fail now."""
    mc = check_spec(spec)
    if mc.local:
        return mc
    why = offline_by_env()
    reason = f"{why} is set" if why else ""
    if not reason and probe and not _reachable("huggingface.co"):
        reason = "huggingface.co cannot be reached from this machine"
    if reason:
        found = found_checkpoints()
        offer = ("; checkpoints on this machine: " + ", ".join(s for s, _ in found[:8])) if found \
            else ""
        raise ModelSpecError(
            f"CLIP model {mc.spec!r} is not on this machine and must be downloaded from "
            f"{mc.where}, but {reason}. Choose a model whose weights are here (a checkpoint file: "
            f"ARCH:/path/to/checkpoint.pt, or a config: CONFIG.json:/path/to/checkpoint.pt, or "
            f"{DEMO_MODEL!r} for the demo){offer}; or download it once on a machine with network "
            f"(the app does it on first use) and copy the Hugging Face cache here.")
    return mc


# ----------------------------------------------------------------------------------------------
# Checkpoints on this machine


def _recent_file() -> Path:
    return app_home() / RECENT_MODELS


def recent_models() -> list[str]:
    return read_recent(_recent_file())


def set_clip_model(ws: Any, spec: str, *, remember_any: bool = False) -> ModelCheck:
    """The one writer of a workspace's CLIP model (``ws.settings.partition.clip_model``; the
    caller saves): ``spec`` is checked first (``ModelSpecError`` names the problem and nothing
    changes). A checkpoint, or with ``remember_any`` any spec (one chosen from the models found
    on this machine), goes first in the recently used models."""
    mc = check_spec(str(spec or ""))
    ws.settings.partition.clip_model = mc.spec
    if remember_any or mc.kind == "checkpoint":
        remember_model(mc.spec)  # offered again as a choice ("recently used")
    return mc


def remember_model(spec: str) -> None:
    """Put ``spec`` first in the recently used models (an unwritable home only costs the list)."""
    write_recent(_recent_file(), spec.strip(), recent_models(), MAX_RECENT_MODELS)


def _cached_tags() -> list[tuple[str, str]]:
    import open_clip

    out = []
    for arch, tag in open_clip.list_pretrained():
        hit, _ = _tag_weights(arch, tag)
        if hit:
            out.append((f"{arch}:{tag}", f"{arch}:{tag} (cached: {hit})"))
    return out


def _cached_hub_models() -> list[tuple[str, str]]:
    root = _hf_cache_dir()
    if root is None or not root.is_dir():
        return []
    out = []
    for repo in sorted(root.glob("models--*")):
        if any(repo.glob("snapshots/*/open_clip_config.json")):
            ident = repo.name[len("models--"):].replace("--", "/", 1)
            if _hf_cached(ident, HF_WEIGHTS):
                out.append((f"{HF_HUB_PREFIX}{ident}", f"{HF_HUB_PREFIX}{ident} (cached)"))
    return out


def found_checkpoints() -> list[tuple[str, str]]:
    """``(spec, label)`` for every model whose weights are on this machine, each once."""
    out: list[tuple[str, str]] = []
    from mminstruct.app.text_encoder import parse_spec  # noqa: PLC0415

    try:
        parse_spec(DEMO_MODEL)
        out.append((DEMO_MODEL, f"{DEMO_MODEL} (the demo's tiny CLIP)"))
    except ModelSpecError:
        pass
    for spec in recent_models():
        try:
            mc = check_spec(spec)
        except ModelSpecError:
            continue
        if mc.local:
            out.append((mc.spec, f"{mc.spec} (used recently)"))
    for finder in (_cached_tags, _cached_hub_models):
        try:
            out.extend(finder())
        except (ImportError, OSError, ModelSpecError):
            continue
    seen: set[str] = set()
    return [(s, label) for s, label in out if not (s in seen or seen.add(s))]
