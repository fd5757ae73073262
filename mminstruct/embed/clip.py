"""CLIP models from open_clip: model specs, loading, and cached image / text embeddings.

* ``parse_model_spec(s)``: ``ARCH:TAG`` (``ViT-B-32:laion2b_s34b_b79k``, the default),
  ``ARCH:/path/to/checkpoint.pt``, ``CONFIG.json:/path/to/checkpoint.pt`` (a custom open_clip model
  config whose file stem is the architecture), ``hf-hub:org/name``, or ``demo-charts`` (the project's
  tiny demo CLIP). Bad specs raise ``ModelSpecError`` naming the valid choices.
* ``load_clip(spec, device=)``: a ``ClipModel`` (``identity``, ``dim``, ``encode_texts``), cached.
* ``embed_images(paths, model, …)`` (from ``image_embed``, re-exported here): L2-normalised
  float16 vectors for the images that decode, and ``(path, reason)`` for those that do not; on a
  GPU the JPEGs are decoded there (``gpu_decode``). ``precision`` is ``fp32``, ``bf16``, ``int8``
  (dynamic quantisation of the Linear layers the image tower calls as modules, CPU) or ``auto``
  (what ``AUTO_ORDER`` lists for the kind of CPU, ``cpu_kind``, each kept only where the first
  batch runs, is finite and agrees with fp32, cosine ≥ 0.999; else fp32). Vectors (and decode
  failures) are cached on disk by model identity and file fingerprint (``EmbeddingCache``).
* ``embed_texts`` / ``embed_keywords``: text vectors, optionally averaged over prompt templates.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import sqlite3
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mminstruct.cache import VectorStore, atomic_write_json, content_key, file_fingerprint, file_sha256
from mminstruct.errors import ConfigError, ModelSpecError, choices_message

log = logging.getLogger(__name__)

DEFAULT_CLIP_MODEL = "ViT-B-32:laion2b_s34b_b79k"
DEMO_MODEL = "demo-charts"
HF_HUB_PREFIX = "hf-hub:"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz", ".npy")
#: Used by ``--templates default``: the keyword is slotted into each, and the vectors averaged.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a close-up photo of a {}.",
    "a rendering of a {}.", "a diagram of a {}.", "a screenshot of a {}.",
)
#: bf16 / int8 only if every probed image agrees with fp32 at least this well (first batch).
BF16_MIN_COSINE = 0.999
#: ``--precision`` values; ``auto`` decides on the first batch (see ``image_embed.encode_batch``).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8", "auto")
#: What ``auto`` tries on the CPU, in order, by ``cpu_kind``: only the precisions
#: ``bench/embed_throughput.py`` measured faster than fp32 on that kind of CPU (README,
#: "Precision"). With native bf16 (AMD EPYC with avx512_bf16): bf16 2.8×, int8 1.9× fp32's
#: pipeline. AVX2 only (AMD EPYC without it): int8 faster than fp32; bf16 is emulated there and
#: slower than fp32, so never tried. On a GPU, ``auto`` tries bf16 where the GPU runs it natively.
AUTO_ORDER: dict[str, tuple[str, ...]] = {"native-bf16": ("bf16", "int8"), "no-bf16": ("int8",)}


# ----------------------------------------------------------------------------------------------
# Model specs


@dataclass(frozen=True)
class ModelSpec:
    """A parsed ``--model_name``. ``kind`` is ``tag``, ``checkpoint``, ``hf-hub`` or ``demo``."""

    raw: str
    kind: str
    arch: str
    pretrained: str = ""  # the (cleaned) tag, or the absolute checkpoint path
    config_path: str = ""  # a custom open_clip model config registered before loading

    def identity(self, memo_dir: str | os.PathLike | None = None) -> str:
        """A string that changes whenever the weights may change (the cache key's model part).
        Checkpoints are identified by their SHA-256, memoised by file fingerprint."""
        if self.kind == "tag":
            return f"{self.arch}:{self.pretrained}"
        if self.kind == "hf-hub":
            return f"{HF_HUB_PREFIX}{self.arch}"
        return f"{self.arch}:sha256={_checkpoint_sha256(self.pretrained, memo_dir)}"


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def _checkpoint_sha256(path: str, memo_dir: str | os.PathLike | None) -> str:
    fp = file_fingerprint(path)
    if fp not in _SHA_MEMO:  # hashing a 1.7 GB checkpoint takes seconds: memoise it on disk too
        memo_file, key = Path(memo_dir or default_cache_dir()) / "checkpoint_sha256.json", content_key(fp)
        try:
            memo = json.loads(memo_file.read_text())
        except (OSError, ValueError):
            memo = {}
        memo = memo if isinstance(memo, dict) else {}
        if not isinstance(memo.get(key), str):
            memo[key] = file_sha256(path)
            try:
                atomic_write_json(memo_file, memo)
            except OSError as e:  # a read-only cache folder only costs a re-hash next time
                log.debug("cannot write %s: %s", memo_file, e)
        _SHA_MEMO[fp] = memo[key]
    return _SHA_MEMO[fp]


def _register_config(config_path: Path) -> str:
    import open_clip

    if config_path.stem not in open_clip.list_models():
        open_clip.add_model_config(config_path)
    if config_path.stem not in open_clip.list_models():
        raise ModelSpecError(f"model config {config_path} is not an open_clip model config "
                             "(needs 'embed_dim', 'vision_cfg' and 'text_cfg')")
    return config_path.stem


SPEC_MEMO_FILE = "model_specs.json"  # under default_cache_dir(): specs parsed before
_SPEC_MEMO: dict[str, ModelSpec] = {}


def _open_clip_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("open_clip_torch")
    except PackageNotFoundError:
        return "?"


def _spec_files(ms: ModelSpec) -> list[str]:
    """The files a parsed spec depends on (a checkpoint, a model config)."""
    files = [ms.config_path] if ms.config_path else []
    if ms.kind in ("checkpoint", "demo"):
        files.append(ms.pretrained)
    return files


def _fingerprints(files: Sequence[str]) -> list[list[Any]] | None:
    try:
        return [list(file_fingerprint(f)) for f in files]
    except OSError:
        return None


def _memo_key(raw: str) -> str:
    where: Any = None
    if raw == DEMO_MODEL:  # the shipped models' table says which files the name means
        try:
            where = [str(p) for p in named_model_paths(DEMO_MODEL)]
        except ModelSpecError:
            where = "?"
    return content_key("model-spec-v1", raw, _open_clip_version(), where)


def memoised_spec(spec: str) -> ModelSpec | None:
    """The parsed spec from the memo (no open_clip import), or None when it was never parsed
    here or its files changed."""
    return _memoised_spec(str(spec).strip()) if isinstance(spec, str) and spec.strip() else None


def _memoised_spec(raw: str) -> ModelSpec | None:
    """A spec parsed before (in this process, or any process sharing the cache folder) whose
    files are unchanged: no ``open_clip`` (and so no torch) import for a spec already checked."""
    key = _memo_key(raw)
    hit = _SPEC_MEMO.get(key)
    if hit is None:
        try:
            entry = json.loads((default_cache_dir() / SPEC_MEMO_FILE).read_text()).get(key)
            hit = ModelSpec(**entry["spec"])
            if entry["files"] != _fingerprints(_spec_files(hit)):
                return None  # a checkpoint or config changed (or is gone): parsed again
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None
    elif _fingerprints(_spec_files(hit)) is None:
        return None
    _SPEC_MEMO[key] = hit
    return hit


def _remember_spec(raw: str, ms: ModelSpec) -> ModelSpec:
    key = _memo_key(raw)
    _SPEC_MEMO[key] = ms
    files = _fingerprints(_spec_files(ms))
    if files is None:
        return ms
    path = default_cache_dir() / SPEC_MEMO_FILE
    try:
        memo = json.loads(path.read_text())
        memo = memo if isinstance(memo, dict) else {}
    except (OSError, ValueError):
        memo = {}
    if memo.get(key, {}).get("files") != files:
        memo[key] = {"spec": dict(ms.__dict__), "files": files}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, memo)
        except OSError as e:  # a read-only cache folder only costs a parse next time
            log.debug("cannot write %s: %s", path, e)
    return ms


def parse_model_spec(s: str | ModelSpec) -> ModelSpec:
    """Parse and check a model spec without loading any weights (see the module docstring). A
    spec that parsed before, with its checkpoint and config files unchanged, comes from a memo
    (``SPEC_MEMO_FILE``) without importing open_clip; the model's config is registered with
    open_clip when the model loads."""
    if isinstance(s, ModelSpec):
        return s
    if not isinstance(s, str) or not s.strip():
        raise ModelSpecError(f"empty CLIP model name; give ARCH:PRETRAINED, e.g. {DEFAULT_CLIP_MODEL}")
    raw = s.strip()
    hit = _memoised_spec(raw)
    if hit is not None:
        return hit
    return _remember_spec(raw, _parse_model_spec(raw))


def _parse_model_spec(raw: str) -> ModelSpec:
    if raw == DEMO_MODEL:
        return _demo_spec()
    if raw.startswith(HF_HUB_PREFIX):
        ident = raw[len(HF_HUB_PREFIX):].strip()
        if ident.count("/") != 1 or not all(ident.split("/")):
            raise ModelSpecError(f"bad model name {raw!r}: expected hf-hub:ORG/NAME")
        return ModelSpec(raw, "hf-hub", ident)
    import open_clip

    arch, sep, pretrained = raw.partition(":")
    arch, pretrained = arch.strip(), pretrained.strip()
    config_path = ""
    if arch.lower().endswith(".json"):
        cfg = Path(arch).expanduser()
        if not cfg.is_file():
            raise ModelSpecError(f"model config file {arch!r} not found")
        config_path = str(cfg.resolve())
        arch = _register_config(cfg.resolve())
    models = open_clip.list_models()
    if arch not in models:
        near = [f" (did you mean {m!r}?)" for m in models if m.lower() == arch.lower().replace("/", "-")]
        raise ModelSpecError(choices_message("CLIP architecture", arch, models) + "".join(near[:1]))
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if not sep or not pretrained:
        raise ModelSpecError(
            f"model name {raw!r} names no weights; give {arch}:TAG or {arch}:/path/to/checkpoint.pt"
            + (f" (tags for {arch}: {', '.join(tags)})" if tags else "")
        )
    if open_clip.is_pretrained_cfg(arch, pretrained):
        clean = next((t for t in tags if t == pretrained.lower().replace("-", "_")), pretrained)
        return ModelSpec(raw, "tag", arch, clean, config_path)
    path = Path(pretrained).expanduser()
    looks_like_path = (os.sep in pretrained or "/" in pretrained or pretrained.startswith(".")
                       or path.suffix.lower() in CHECKPOINT_SUFFIXES)
    if path.is_file():
        return ModelSpec(raw, "checkpoint", arch, str(path.resolve()), config_path)
    if looks_like_path or path.exists():
        what = "is a folder, not a file" if path.exists() else "not found"
        raise ModelSpecError(f"checkpoint file {pretrained!r} for {arch} {what}")
    if not tags:
        raise ModelSpecError(f"unknown pretrained tag {pretrained!r}: {arch} has no open_clip tags; "
                             f"give a checkpoint file ({arch}:/path/to/checkpoint.pt)")
    raise ModelSpecError(choices_message(f"pretrained tag for {arch}", pretrained, tags)
                         + "; or give a checkpoint file path")


#: Models shipped inside the package, by name: an open_clip config and a checkpoint (paths relative
#: to the package) and the command that makes the checkpoint. Data, so clip imports no demo code.
NAMED_MODELS_FILE = Path(__file__).resolve().parents[1] / "named_models.json"


def _named_model(name: str) -> dict[str, Any]:
    try:
        table = json.loads(NAMED_MODELS_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelSpecError(f"{NAMED_MODELS_FILE} cannot be read ({e})") from e
    if name not in table:
        raise ModelSpecError(choices_message("shipped model", name, sorted(table)))
    return table[name]


def named_model_paths(name: str) -> tuple[Path, Path]:
    """Where a shipped model's (open_clip config JSON, checkpoint) are, whether or not they exist
    yet (its trainer writes them there)."""
    entry, base = _named_model(name), NAMED_MODELS_FILE.parent
    return base / entry["config"], base / entry["checkpoint"]


def named_model_files(name: str) -> tuple[Path, Path]:
    """(open_clip config JSON, checkpoint) of a shipped model; ModelSpecError naming what is
    missing (and how to make it) otherwise."""
    config, checkpoint = named_model_paths(name)
    missing = [str(p) for p in (config, checkpoint) if not p.is_file()]
    if missing:
        raise ModelSpecError(f"{name} model files missing: {', '.join(missing)} (make them with "
                             f"`{_named_model(name).get('make', '?')}`)")
    return config, checkpoint


def _demo_spec() -> ModelSpec:
    config_json, checkpoint = named_model_files(DEMO_MODEL)
    arch = _register_config(config_json.resolve())
    return ModelSpec(DEMO_MODEL, "demo", arch, str(checkpoint.resolve()), str(config_json.resolve()))


# ----------------------------------------------------------------------------------------------
# Devices and models


def default_cache_dir() -> Path:
    """``$MMINSTRUCT_CACHE_DIR`` or ``~/.cache/mminstruct``."""
    env = os.environ.get("MMINSTRUCT_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mminstruct"


def resolve_device(gpu: int | str | None) -> str:
    """``--gpu N`` → ``cuda:N`` when that GPU exists, else ``cpu`` (with a log line).
    A device string (``cpu``, ``cuda:1``) passes through; ``None`` or a negative number is CPU."""
    if isinstance(gpu, str) and not gpu.strip().lstrip("-").isdigit():
        return gpu.strip()
    if gpu is None or int(gpu) < 0:
        return "cpu"
    import torch

    n, count = int(gpu), torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n < count:
        return f"cuda:{n}"
    log.info("GPU %d requested but %s; using the CPU", n,
             f"only {count} GPU(s) exist" if count else "no CUDA GPU is available")
    return "cpu"


def bf16_supported(device: str) -> bool:
    """Whether the device runs bf16 natively (emulated bf16 is slower than fp32)."""
    import torch

    if device.startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def int8_supported(device: str) -> bool:
    """Whether dynamic int8 quantisation (``torch.ao.quantization.quantize_dynamic``) runs here:
    CPU only, with a quantised engine (fbgemm/x86 or qnnpack) built in."""
    if not device.startswith("cpu"):
        return False
    import torch

    return any(e in ("fbgemm", "x86", "qnnpack", "onednn")
               for e in torch.backends.quantized.supported_engines)


def cpu_kind() -> str:
    """``native-bf16`` where the CPU runs bf16 natively (``bf16_supported``: AVX512-BF16 or AMX),
    else ``no-bf16`` (e.g. AVX2 only): the key of ``AUTO_ORDER``."""
    return "native-bf16" if bf16_supported("cpu") else "no-bf16"


def auto_candidates(device: str) -> list[str]:
    """The lower precisions ``auto`` tries on ``device``, in order (see ``AUTO_ORDER``)."""
    if not device.startswith("cpu"):
        return ["bf16"] if bf16_supported(device) else []
    return [p for p in AUTO_ORDER[cpu_kind()] if p != "int8" or int8_supported(device)]


class PrecisionError(ConfigError):
    """A precision asked for by name (``--precision int8``) cannot run this model."""


def check_precision(precision: str, device: str = "cpu") -> str:
    """``precision`` if valid on ``device``; else ConfigError naming the choices."""
    if precision not in PRECISIONS:
        raise ConfigError(choices_message("precision", precision, PRECISIONS))
    if precision == "int8" and not device.startswith("cpu"):
        raise ConfigError(f"precision 'int8' (dynamic quantisation) runs on the CPU only, not on "
                          f"{device}; choose one of: fp32, bf16, auto")
    return precision


class ClipModel:
    """A loaded open_clip model with its preprocess and tokenizer, on one device."""

    def __init__(self, model: Any, preprocess: Callable, tokenizer: Callable, identity: str,
                 device: str = "cpu", precision: str = "auto", name: str = ""):
        check_precision(precision, device)
        self.model, self.preprocess, self.tokenizer = model.eval(), preprocess, tokenizer
        self.identity, self.device, self.precision = identity, device, precision
        self.name = name or identity
        #: fp32, bf16 or int8 once decided (by ``precision`` or by the first batch's check).
        self.decided_precision: str | None = None if precision == "auto" else precision
        #: the first batch's min cosine to fp32 of the precision chosen (auto mode), for reports.
        self.precision_cosine: float | None = None
        self._lock, self._visual_bf16, self._int8 = threading.Lock(), None, None
        self.dim = int(getattr(model, "embed_dim", 0) or self.encode_texts(["a"]).shape[1])

    def encode_image_batch(self, batch: Any, precision: str | bool = "fp32") -> Any:
        """Preprocessed images (N,3,H,W) → L2-normalised float32 (N, dim) on the CPU, in
        ``precision``: ``fp32``; ``bf16`` (bf16 copies of the weights: on CPUs ~2× fp32, while
        autocast is slower than fp32; else autocast); ``int8`` (a dynamically quantised copy of the
        Linear layers, CPU). ``True``/``False`` mean bf16/fp32."""
        import torch

        prec = {True: "bf16", False: "fp32"}.get(precision, precision)  # type: ignore[call-overload]
        with torch.inference_mode():
            x = batch.to(self.device, non_blocking=True)
            if prec == "int8":
                f = self._int8_encoder(x)(x)
            elif prec == "bf16" and self._bf16_visual() is not None:
                f = self._visual_bf16(x.to(torch.bfloat16))
            else:
                with torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16,
                                    enabled=prec == "bf16"):
                    f = self.model.encode_image(x)
            return torch.nn.functional.normalize(f.float(), dim=-1).cpu()

    def _plain_encode_image(self) -> bool:
        from open_clip.model import CLIP, CustomTextCLIP

        return type(self.model).encode_image in (CLIP.encode_image, CustomTextCLIP.encode_image)

    def _bf16_visual(self) -> Any:
        """``visual`` on bf16 copies of its weights (functional_call), if encode_image is just that."""
        import torch

        if self._visual_bf16 is None and self._plain_encode_image():
            visual = self.model.visual
            state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v
                     for k, v in [*visual.named_parameters(), *visual.named_buffers()]}
            self._visual_bf16 = lambda x: torch.func.functional_call(visual, state, (x,))
        return self._visual_bf16

    def _int8_encoder(self, sample: Any) -> Callable[[Any], Any]:
        """A copy of the image tower (or of the model, when encode_image is more than ``visual``)
        with the Linear layers it calls as modules dynamically quantised to int8 (see
        ``int8_copy``); made once, on first use, with ``sample`` (a batch) as the probe input."""
        if self._int8 is None:
            plain = self._plain_encode_image()
            part = self.model.visual if plain else self.model
            q = int8_copy(part, sample[:1].float().cpu(), call=None if plain else "encode_image",
                          name=self.name)
            self._int8 = q if plain else q.encode_image
        return self._int8

    def drop_copies(self, keep: str | None = None) -> None:
        """Free the bf16 / int8 copies of the weights except ``keep``'s."""
        if keep != "bf16":
            self._visual_bf16 = None
        if keep != "int8":
            self._int8 = None

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts → L2-normalised float32 array (N, dim), in fp32."""
        import torch

        texts = list(texts)
        if not texts:
            return np.zeros((0, getattr(self, "dim", 0)), dtype=np.float32)
        with torch.inference_mode():
            tokens = self.tokenizer(texts).to(self.device)
            f = torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)
        return f.cpu().numpy()


def _self_attention_class() -> type:
    """``SelfAttention``: ``nn.MultiheadAttention``'s self-attention (what open_clip's transformer
    blocks call) with its packed input projection and its output projection as ``nn.Linear``
    modules, so dynamic quantisation reaches them; scaled dot-product attention in between."""
    import torch
    from torch import nn

    class SelfAttention(nn.Module):
        def __init__(self, mha: nn.MultiheadAttention):
            super().__init__()
            d = mha.embed_dim
            self.num_heads, self.batch_first = mha.num_heads, mha.batch_first
            self.in_proj = nn.Linear(d, 3 * d, bias=mha.in_proj_bias is not None)
            self.out_proj = nn.Linear(d, d, bias=mha.out_proj.bias is not None)
            with torch.no_grad():
                self.in_proj.weight.copy_(mha.in_proj_weight)
                self.out_proj.weight.copy_(mha.out_proj.weight)
                if mha.in_proj_bias is not None:
                    self.in_proj.bias.copy_(mha.in_proj_bias)
                if mha.out_proj.bias is not None:
                    self.out_proj.bias.copy_(mha.out_proj.bias)

        def forward(self, query: Any, key: Any, value: Any, key_padding_mask: Any = None,
                    need_weights: bool = True, attn_mask: Any = None,
                    average_attn_weights: bool = True, is_causal: bool = False) -> tuple[Any, None]:
            if key is not query or value is not query or need_weights or is_causal \
                    or key_padding_mask is not None:
                raise NotImplementedError("the int8 copy's attention runs plain self-attention only "
                                          "(key and value the query, no weights, no padding mask)")
            x = query if self.batch_first else query.transpose(0, 1)
            b, n, d = x.shape
            h = self.num_heads
            q, k, v = self.in_proj(x).view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
            if attn_mask is not None:
                if attn_mask.dtype == torch.bool:  # MHA: True = masked; SDPA: True = attend
                    attn_mask = torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill(
                        attn_mask, float("-inf"))
                if attn_mask.dim() == 3:
                    attn_mask = attn_mask.view(b, h, n, n)
            out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            out = self.out_proj(out.transpose(1, 2).reshape(b, n, d))
            return (out if self.batch_first else out.transpose(0, 1)), None

    return SelfAttention


def int8_copy(part: Any, sample: Any, *, call: str | None = None, name: str = "") -> Any:
    """A copy of ``part`` (an image tower; or a model whose method ``call`` embeds images) whose
    Linear layers are dynamically quantised to int8 — only those its forward on ``sample`` calls as
    modules: open_clip reads some by attribute (ModifiedResNet's attention pool takes
    ``q_proj.bias`` …), and a quantised Linear has no such tensors. Each ``nn.MultiheadAttention``
    the probe sees used as plain self-attention becomes ``SelfAttention`` (its projections as
    Linear modules). Decided per architecture by that probe, not by the CPU. RuntimeError when
    nothing is left to quantise (every ModifiedResNet: RN50 …, the demo model)."""
    import copy
    import inspect
    import warnings

    import torch
    from torch import nn
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    net = copy.deepcopy(part).float().cpu().eval()
    run = getattr(net, call) if call else net
    called: set[str] = set()
    self_attention: set[str] = set()

    def seen(label: str) -> Callable:
        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            called.add(label)
            if isinstance(module, nn.MultiheadAttention):
                a = inspect.signature(module.forward).bind(*args, **kwargs)
                a.apply_defaults()
                q, k, v = (a.arguments[n] for n in ("query", "key", "value"))
                if (k is q and v is q and module._qkv_same_embed_dim and module.bias_k is None
                        and not module.add_zero_attn and module.dropout == 0
                        and not a.arguments["need_weights"] and not a.arguments["is_causal"]
                        and a.arguments["key_padding_mask"] is None):
                    self_attention.add(label)
        return hook

    hooks = [m.register_forward_pre_hook(seen(n), with_kwargs=True) for n, m in net.named_modules()
             if type(m) in (nn.Linear, nn.MultiheadAttention)]
    try:
        with torch.inference_mode():
            run(sample)
    finally:
        for h in hooks:
            h.remove()
    attention = _self_attention_class()
    quantise = {n for n, m in net.named_modules() if type(m) is nn.Linear and n in called}
    for label in sorted(self_attention):
        parent_name, _, child = label.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, child, attention(getattr(parent, child)))
        quantise |= {f"{label}.in_proj", f"{label}.out_proj"}
    if not quantise:
        raise RuntimeError(f"int8 has nothing to quantise in {name or type(part).__name__}: none of "
                           "its image tower's Linear layers is called as a module (open_clip reads "
                           "them by attribute, as ModifiedResNet's attention pool does)")
    with warnings.catch_warnings():  # torch.ao's deprecation notices, once per model
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(net, {n: default_dynamic_qconfig for n in quantise},
                                dtype=torch.qint8)


_MODELS: OrderedDict[tuple[str, str, str], ClipModel] = OrderedDict()
_MODELS_LOCK = threading.Lock()


def load_clip(spec: str | ModelSpec = DEFAULT_CLIP_MODEL, device: str | int | None = "cpu", *,
              precision: str = "auto", cache_dir: str | os.PathLike | None = None) -> ClipModel:
    """Load (or reuse from this process's cache of the last two) a CLIP model.
    ``device`` is a device string or a GPU number (see ``resolve_device``)."""
    ms, dev = parse_model_spec(spec), resolve_device(device)
    check_precision(precision, dev)
    identity = ms.identity(cache_dir)
    key = (identity, dev, precision)
    with _MODELS_LOCK:
        if key in _MODELS:
            _MODELS.move_to_end(key)
            return _MODELS[key]
        model = _load(ms, identity, dev, precision)
        _MODELS[key] = model
        while len(_MODELS) > 2:  # a model each for, say, the app's view and a background run
            _MODELS.popitem(last=False)
        return model


def loaded_models() -> list[str]:
    """Identities of the models ``load_clip`` holds in this process (oldest first)."""
    with _MODELS_LOCK:
        return [key[0] for key in _MODELS]


_LOAD_ERRORS = (RuntimeError, OSError, ValueError, KeyError, EOFError,  # bad checkpoint, no hub
                pickle.UnpicklingError, zipfile.BadZipFile)


def _load(ms: ModelSpec, identity: str, device: str, precision: str) -> ClipModel:
    import open_clip

    t0 = time.perf_counter()
    name = f"{HF_HUB_PREFIX}{ms.arch}" if ms.kind == "hf-hub" else ms.arch
    if ms.config_path:
        _register_config(Path(ms.config_path))
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=None if ms.kind == "hf-hub" else ms.pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(name)
    except _LOAD_ERRORS as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ModelSpecError(
            f"cannot load CLIP model {ms.raw!r}: {why} (weights are downloaded on first use; without "
            "internet give a local checkpoint: ARCH:/path/to/file.pt)" if ms.kind in ("tag", "hf-hub")
            else f"cannot load checkpoint {ms.pretrained} as {ms.arch}: {why} (is it the right "
            "architecture and an open_clip/OpenAI CLIP state dict?)") from e
    log.info("loaded CLIP %s on %s in %.1f s", ms.raw, device, time.perf_counter() - t0)
    return ClipModel(model, preprocess, tokenizer, identity, device, precision, ms.raw)


# ----------------------------------------------------------------------------------------------
# The on-disk cache and image embeddings


class EmbeddingCache:
    """Vectors (images and texts) and image decode failures for one model identity, in one SQLite
    file under ``folder/clip/``. Every write is one transaction."""

    def __init__(self, folder: str | os.PathLike, identity: str):
        self.identity = identity
        slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in identity.split(":")[0])
        self.path = Path(folder) / "clip" / f"{slug}-{content_key(identity)[:16]}.sqlite"
        self.vectors = VectorStore(self.path)
        self._local = threading.local()
        with self._con() as con:
            con.execute("CREATE TABLE IF NOT EXISTS clip_failures (k TEXT PRIMARY KEY, reason TEXT)")

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=60)
            self._local.con = con
        return con

    def image_key(self, fingerprint: tuple[str, int, int]) -> str:
        return content_key("clip-image", self.identity, list(fingerprint))

    def text_key(self, text: str) -> str:
        return content_key("clip-text", self.identity, text)

    def get_failures(self, keys: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for start in range(0, len(keys), 900):
            chunk = list(keys[start:start + 900])
            q = f"SELECT k, reason FROM clip_failures WHERE k IN ({','.join('?' * len(chunk))})"
            out.update(dict(self._con().execute(q, chunk).fetchall()))
        return out

    def put_failures(self, items: Sequence[tuple[str, str]]) -> None:
        if items:
            with self._con() as con:
                con.executemany("INSERT OR REPLACE INTO clip_failures VALUES (?, ?)", list(items))


def cache_folder(cache: Any) -> Any:
    """The folder a ``cache`` argument names, or None (default folder, no cache, a cache object)."""
    return None if cache in (None, True, False) or isinstance(cache, EmbeddingCache) else cache



def open_cache(cache: Any, identity: str) -> EmbeddingCache | None:
    """``None`` → the default folder, ``False`` → no cache, a folder, or an ``EmbeddingCache``."""
    if cache is False:
        return None
    if isinstance(cache, EmbeddingCache):
        return cache
    return EmbeddingCache(default_cache_dir() if cache is None or cache is True else cache, identity)


# ----------------------------------------------------------------------------------------------
# Text embeddings


def parse_templates(templates: Sequence[str] | None) -> tuple[str, ...]:
    """``()`` (the plain keyword), ``["default"]`` (DEFAULT_TEMPLATES), or templates with one ``{}``."""
    if not templates:
        return ()
    items = list(templates)
    if len(items) == 1 and items[0].strip().lower() == "default":
        return DEFAULT_TEMPLATES
    for t in items:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ConfigError(f"template {t!r} must contain '{{}}' exactly once (where the keyword "
                              "goes), e.g. 'a photo of a {}.'; or pass the single word 'default'")
    return tuple(items)


def embed_texts(texts: Sequence[str], model: ClipModel | ModelSpec | str, *, cache: Any = None,
                device: str | int | None = "cpu") -> np.ndarray:
    """Texts → L2-normalised float32 (N, dim), cached like images (the model loads only on a miss)."""
    texts = list(texts)
    cm = model if isinstance(model, ClipModel) else None
    spec, store_dir = None if cm else parse_model_spec(model), cache_folder(cache)
    ec = open_cache(cache, cm.identity if cm else spec.identity(store_dir))
    vecs = ec.vectors.get_many([ec.text_key(t) for t in texts]) if ec else {}
    found = {t: vecs[ec.text_key(t)] for t in texts if ec and ec.text_key(t) in vecs}
    missing = list(dict.fromkeys(t for t in texts if t not in found))
    if missing:
        cm = cm or load_clip(spec, device, cache_dir=store_dir)
        # rounded as the cache stores them, so a cached run gives bit-identical results
        new = cm.encode_texts(missing).astype(np.float16)
        found.update(zip(missing, new))
        if ec:
            ec.vectors.put_many((ec.text_key(t), v) for t, v in zip(missing, new))
    if not texts:
        return np.zeros((0, cm.dim if cm else 0), np.float32)
    out = np.stack([found[t] for t in texts]).astype(np.float32)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def texts_cached(texts: Sequence[str], model: ModelSpec | str, *, cache: Any = None) -> bool:
    """Whether every text's vector is in the cache (``embed_texts`` then loads no model)."""
    texts = list(texts)
    spec = parse_model_spec(model)
    ec = open_cache(cache, spec.identity(cache_folder(cache)))
    if ec is None:
        return not texts
    keys = [ec.text_key(t) for t in dict.fromkeys(texts)]
    return len(ec.vectors.get_many(keys)) == len(keys)


def keyword_texts(keywords: Sequence[str], templates: Sequence[str] | None = None) -> list[str]:
    """The texts ``embed_keywords`` embeds for ``keywords``: each keyword, or its template
    sentences."""
    temps = parse_templates(templates)
    return list(keywords) if not temps else [t.format(k) for k in keywords for t in temps]


def embed_keywords(keywords: Sequence[str], model: ClipModel | ModelSpec | str, *,
                   templates: Sequence[str] | None = None, cache: Any = None,
                   device: str | int | None = "cpu") -> np.ndarray:
    """One L2-normalised float32 vector per keyword: the keyword itself, or the renormalised mean
    of its template sentences (``templates``, see ``parse_templates``)."""
    temps = parse_templates(templates)
    if not temps:
        return embed_texts(keywords, model, cache=cache, device=device)
    sentences = keyword_texts(keywords, temps)
    vecs = embed_texts(sentences, model, cache=cache, device=device)
    mean = vecs.reshape(len(keywords), len(temps), -1).mean(axis=1)
    return (mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)).astype(np.float32)
