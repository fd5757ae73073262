"""The typed configuration of a generation run (what the CLIs and the app build, and the engine
takes). Validated on construction: a bad value raises ConfigError naming it."""

from __future__ import annotations

import os
import re
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from collections.abc import Callable, Mapping
from typing import Any

from mminstruct.cache import content_key, file_sha256
from mminstruct.errors import ConfigError, DataFileError
from mminstruct.data.formats import FILE_NAME_MAX, check_file_prefix, prompts_dir
from mminstruct.llm.client import EndpointConfig

DEFAULT_GENERATOR_MODEL = "gpt-4o"

#: Parameters that change what is generated: a resumed run must use the same values.
CONTENT_PARAMS = ("prompt_file", "start_idx", "num_prompts", "model_name", "max_image_side",
                  "jpeg_quality", "temperature", "max_tokens", "seed", "structured_outputs",
                  "format_fix_attempts")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


#: The closed range of each numeric setting bounded at both ends: ``RULES`` and the app's number
#: widgets (their min and max) read it.
BOUNDS: dict[str, tuple[int, int]] = {
    "concurrency": (1, 100_000),
    "max_retries": (0, 100),
    "max_image_side": (16, 16_384),
    "jpeg_quality": (1, 100),
    "format_fix_attempts": (0, 5),
    "batch_max_submits": (1, 20),
}


def _between(name: str) -> tuple[Callable[[Any], bool], str]:
    lo, hi = BOUNDS[name]
    return (lambda v: lo <= v <= hi), f"between {lo} and {hi}"


#: The range rule of each numeric setting: (test, what it must be). One table for the command
#: lines, the app's settings and the config itself.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "start_idx": (lambda v: v >= 0, "≥ 0"),
    "num_prompts": (lambda v: v == -1 or v >= 0, "-1 (all) or ≥ 0"),
    "concurrency": _between("concurrency"),
    "rpm": (lambda v: v is None or v > 0, "> 0"),
    "tpm": (lambda v: v is None or v > 0, "> 0"),
    "max_retries": _between("max_retries"),
    "timeout": (lambda v: v > 0, "> 0 seconds"),
    "retry_base_delay": (lambda v: v >= 0, "≥ 0"),
    "max_image_side": _between("max_image_side"),
    "jpeg_quality": _between("jpeg_quality"),
    "image_cache_mb": (lambda v: v >= 0, "≥ 0"),
    "temperature": (lambda v: v is None or 0 <= v <= 2, "between 0 and 2"),
    "max_tokens": (lambda v: v is None or v > 0, "> 0"),
    "format_fix_attempts": _between("format_fix_attempts"),
    "fsync_interval": (lambda v: v >= 0, "≥ 0"),
    "status_interval": (lambda v: v > 0, "> 0"),
    "cancel_grace": (lambda v: v >= 0, "≥ 0"),
    "batch_poll_seconds": (lambda v: v > 0, "> 0 seconds"),
    "batch_completion_window": (lambda v: bool(re.fullmatch(r"[1-9]\d*[hd]", str(v))),
                                "a duration such as 24h (what the provider accepts)"),
    "batch_max_submits": _between("batch_max_submits"),
    "batch_max_requests": (lambda v: 1 <= v <= 50_000,
                           "between 1 and 50000 (the Batch API's limit per file)"),
    "batch_max_bytes": (lambda v: 1024 <= v <= 200 * 1024 * 1024,
                        "between 1 KiB and 200 MiB (the Batch API's limit per file)"),
}


def check_values(values: Mapping[str, Any]) -> None:
    """Check the settings in ``values`` (any subset) against ``RULES``; ConfigError names the
    first bad one and what it must be."""
    for name, value in values.items():
        rule = RULES.get(name)
        if rule is None:
            continue
        test, what = rule
        if value is not None and name != "batch_completion_window" and not _number(value):
            raise ConfigError(f"{name} is {value!r}; it must be a number {what}")
        if not test(value):
            raise ConfigError(f"{name} is {value!r}; it must be {what}")
    if {"retry_base_delay", "retry_max_delay"} <= values.keys() \
            and values["retry_max_delay"] < values["retry_base_delay"]:
        raise ConfigError(f"retry_max_delay is {values['retry_max_delay']!r}; it must be "
                          "≥ retry_base_delay")


@dataclass
class GenerationConfig:
    input_folder: Path
    output_folder: Path
    prompt_file: str
    file_prefix: str
    start_idx: int = 0
    num_prompts: int = -1  # -1: every prompt from start_idx on
    model_name: str = DEFAULT_GENERATOR_MODEL
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    concurrency: int = 64
    rpm: float | None = None
    tpm: float | None = None
    max_retries: int = 6
    timeout: float = 120.0
    retry_base_delay: float = 1.0
    retry_max_delay: float = 60.0
    max_image_side: int = 1024
    jpeg_quality: int = 85
    image_cache_mb: int = 256
    temperature: float | None = None
    max_tokens: int | None = None
    #: The body key of the token limit: auto | max_tokens | max_completion_tokens (o-series).
    max_tokens_field: str = "auto"
    seed: int | None = None
    structured_outputs: bool = False
    format_fix_attempts: int = 1
    resume: bool = False
    retry_failed: bool = False
    dry_run: bool = False
    fsync_interval: float = 1.0
    status_interval: float = 1.0
    cancel_grace: float = 10.0
    allow_outside_paths: bool = False
    debug: bool = False
    #: Run on Ray (``local``, ``auto`` or ``HOST:PORT``): callers hand the config to
    #: ``mminstruct.distributed.generate.run_on_ray``; None runs in this process.
    ray_address: str | None = None
    # OpenAI Batch API (generate/batch_api.py): submit files of requests instead of calling online
    batch_api: bool = False
    batch_poll_seconds: float = 30.0  # first interval between status checks, grown ×1.5 to …
    batch_poll_max_seconds: float = 300.0  # … this while nothing changes
    batch_completion_window: str = "24h"
    batch_max_submits: int = 3  # times a request is submitted before its failure is recorded
    batch_max_requests: int = 50_000  # per input file (the API's limit)
    batch_max_bytes: int = 190 * 1024 * 1024  # per input file (the API's limit is 200 MB)

    def __post_init__(self) -> None:
        self.input_folder = Path(self.input_folder)
        self.output_folder = Path(self.output_folder)
        check_file_prefix(self.file_prefix, "file_prefix", FILE_NAME_MAX)
        if not self.input_folder.is_dir():
            raise ConfigError(f"input_folder {str(self.input_folder)!r} is not a folder")
        if not str(self.model_name).strip():
            raise ConfigError("model_name is empty")
        check_values({f.name: getattr(self, f.name) for f in fields(self)})
        from mminstruct.llm.requests import max_tokens_key

        max_tokens_key(self.model_name, self.max_tokens_field)  # an unknown field: ConfigError
        # a longer first interval than the default cap raises the cap
        self.batch_poll_max_seconds = max(self.batch_poll_max_seconds, self.batch_poll_seconds)
        if self.ray_address is not None:
            if not isinstance(self.ray_address, str):
                raise ConfigError(f"ray_address must be a string, got {self.ray_address!r}")
            self.ray_address = self.ray_address.strip() or None
        if self.dry_run and self.resume:
            raise ConfigError("--dry_run writes a Batch API file and calls nothing; it cannot "
                              "be combined with --resume")

    @property
    def prompt_path(self) -> Path:
        return resolve_prompt_file(self.input_folder, self.prompt_file)

    def content_params(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in CONTENT_PARAMS}
        out["prompt_file"] = str(self.prompt_path.resolve())
        return out

    def public_json(self) -> dict[str, Any]:
        """Every parameter, as JSON, without any secret."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "endpoint":
                out[f.name] = self.endpoint.public_json()
            elif isinstance(v, Path):
                out[f.name] = str(v)
            else:
                out[f.name] = v
        out["prompt_file_resolved"] = str(self.prompt_path)
        return out

    def identity(self, prompt_count: int) -> str:
        """A content key of everything that decides what the run generates (resume must match)."""
        params = self.content_params()
        params["num_prompts"] = resolved_range(self.start_idx, self.num_prompts, prompt_count)[1]
        return content_key("generation-run-v2", params, file_sha256(self.prompt_path))



#: Each setting's one default, read from the dataclass: what the command lines show and the app's
#: settings start from.
DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(GenerationConfig)
                            if f.default is not MISSING}

def resolved_range(start_idx: int, num_prompts: int, count: int) -> tuple[int, int]:
    """(start, n) with n = every remaining prompt for -1 and clipped to the file's end."""
    if start_idx > count:
        raise ConfigError(f"start_idx {start_idx} is past the end of the prompt file "
                          f"({count} prompts)")
    n = count - start_idx if num_prompts == -1 else min(num_prompts, count - start_idx)
    return start_idx, n


def resolve_prompt_file(input_folder: Path, prompt_file: str | os.PathLike) -> Path:
    """The prompt file as given (absolute, or relative to the working folder), or under the input
    folder, or — as MM-Gen looked for it — under ``input_folder/generated_prompts/``."""
    p = Path(prompt_file)
    tried = [p, input_folder / p, prompts_dir(input_folder) / p]
    for cand in tried:
        if cand.is_file():
            return cand
    raise DataFileError(f"prompt file {str(prompt_file)!r} not found; looked at: "
                        + ", ".join(str(t) for t in dict.fromkeys(tried)))


def config_from_dict(d: dict[str, Any], cls: type[GenerationConfig] = GenerationConfig
                     ) -> GenerationConfig:
    """Rebuild a config from ``public_json``-like data (e.g. the app's saved settings); ``cls``:
    a subclass (the judge's ``JudgeConfig``)."""
    known = {f.name for f in fields(cls)}
    kwargs = {k: v for k, v in d.items() if k in known and k != "endpoint"}
    ep = d.get("endpoint") or {}
    ep_fields = {f.name for f in fields(EndpointConfig)}
    endpoint = EndpointConfig(**{k: v for k, v in ep.items() if k in ep_fields})
    return cls(**kwargs, endpoint=endpoint)


__all__ = ["GenerationConfig", "resolve_prompt_file", "resolved_range", "config_from_dict",
           "CONTENT_PARAMS"]
