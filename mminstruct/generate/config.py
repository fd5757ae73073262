"""The typed configuration of a generation run (what the CLIs and the app build, and the engine
takes). Validated on construction: a bad value raises ConfigError naming it.

Each field is declared once, with ``mminstruct.cli.setting``: its type and default (the field),
its help text, section, range rule and command-line flag (the ``Setting`` in its metadata).
``SETTINGS``, ``RULES``, ``BOUNDS`` and ``DEFAULTS`` are read from the declarations;
``add_config_arguments`` makes the flags of data_generator, batch_data_generator and the judge,
``config_from_args`` reads them back, ``number_widget`` gives the app's number fields their range and help,
and the app's ``EndpointSettings`` take their defaults from ``DEFAULTS``."""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from mminstruct.cache import content_key, file_sha256
from mminstruct.cli import (UNSET, Setting, add_setting_arguments, setting, settings_of,
                            values_from_args)
from mminstruct.errors import ConfigError, DataFileError
from mminstruct.data.formats import FILE_NAME_MAX, check_file_prefix, prompts_dir
from mminstruct.llm.client import EndpointConfig
from mminstruct.llm.requests import MAX_TOKENS_FIELDS, max_tokens_key

DEFAULT_GENERATOR_MODEL = "gpt-4o"

#: Parameters that change what is generated: a resumed run must use the same values. Their names
#: as hashed into a run's identity (``generator_model`` is hashed as ``model_name``, its name when
#: the earliest runs were written, so that those runs still resume).
CONTENT_PARAMS = ("prompt_file", "start_idx", "num_prompts", "model_name", "max_image_side",
                  "jpeg_quality", "temperature", "max_tokens", "seed", "structured_outputs",
                  "format_fix_attempts")
#: a content parameter's field, where its hashed name is an older one
_CONTENT_FIELD = {"model_name": "generator_model"}

#: The sections of a generation config; the title of each one's group of flags in ``--help``.
SECTIONS: dict[str, str] = {
    "run": "MM-Gen",
    "endpoint": "endpoint (the key is read from the environment, never a flag)",
    "limits": "throughput and retries",
    "sampling": "requests",
    "output": "runs",
    "batch": "OpenAI Batch API (half the price; results within the completion window)",
    "range": "",  # --start_idx, --num_prompts: on the parser itself
}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _folder(v: Any) -> str:
    return v or "."


def _window(v: Any) -> bool:
    return bool(re.fullmatch(r"[1-9]\d*[hd]", str(v)))


@dataclass
class GenerationConfig:
    # run: MM-Gen's own flags
    input_folder: Path = setting(  # noqa: RUF009  (a field with its declaration)
        section="run", flag_default="", from_flag=_folder,
        help="folder the prompt file's image paths are relative to (default: the working folder)")
    output_folder: Path = setting(section="run", flag_default="", from_flag=_folder,  # noqa: RUF009
                                  help="results go to OUTPUT/generated_data/")
    prompt_file: str = setting(section="run", help="prompt file: a path, or a name under "
                               "INPUT/generated_prompts/")
    file_prefix: str = setting(section="run", help="prefix of the output file's name")
    start_idx: int = setting(0, section="range", min=0, help="first prompt to process (of the "
                             "whole range, when sharded)")
    #: -1: every prompt from start_idx on
    num_prompts: int = setting(-1, section="range", test=lambda v: v == -1 or v >= 0,
                               what="-1 (all) or ≥ 0",
                               help="number of prompts to process (-1: all)")
    #: the generator (a VLM behind the endpoint); MM-Gen's flag is --model_name
    generator_model: str = setting(DEFAULT_GENERATOR_MODEL, section="run", flag="model_name",
                                   help="model (Azure: deployment) name (default %(default)s)")
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    # limits: throughput and retries
    concurrency: int = setting(64, section="limits", min=1, max=100_000,
                               help="requests in flight (default %(default)s)")
    rpm: float | None = setting(None, section="limits", above=0, ui_max=1e9,
                                help="requests per minute (default: the provider's "
                                "x-ratelimit-limit-requests header)")
    tpm: float | None = setting(None, section="limits", above=0, ui_max=1e12,
                                help="tokens per minute (default: the provider's "
                                "x-ratelimit-limit-tokens header)")
    max_retries: int = setting(6, section="limits", min=0, max=100,
                               help="retries per request (default %(default)s)")
    timeout: float = setting(120.0, section="limits", above=0, what="> 0 seconds", ui_min=1.0,
                             ui_max=3600.0, help="seconds per request (default %(default)s)")
    retry_base_delay: float = setting(1.0, section="limits", min=0, help="first back-off in "
                                      "seconds, doubled per retry (default %(default)s)")
    retry_max_delay: float = setting(60.0, section="limits",  # ≥ retry_base_delay: check_values
                                     help="longest back-off in seconds (default %(default)s)")
    # sampling: what each request carries
    max_image_side: int = setting(1024, section="sampling", min=16, max=16_384,
                                  help="downscale images to this longest side (default "
                                  "%(default)s)")
    jpeg_quality: int = setting(85, section="sampling", min=1, max=100,
                                help="JPEG quality (default %(default)s)")
    image_cache_mb: int = setting(256, section="sampling", min=0, help="memory for encoded "
                                  "images, reused across prompts (default %(default)s)")
    temperature: float | None = setting(None, section="sampling", min=0, max=2)
    max_tokens: int | None = setting(None, section="sampling", above=0, ui_max=1_000_000,
                                     help="answer token limit (default: the model's)")
    #: The body key of the token limit: auto | max_tokens | max_completion_tokens (o-series).
    max_tokens_field: str = setting(
        "auto", section="sampling", choices=MAX_TOKENS_FIELDS,
        help="the request key of --max_tokens: max_completion_tokens for models that refuse "
        "max_tokens (o1, o3, o4-mini, gpt-5, …: what auto picks by the model name), max_tokens "
        "for servers that know only it (default %(default)s)")
    seed: int | None = setting(None, section="sampling")
    structured_outputs: bool = setting(False, section="sampling", help="send a JSON schema as "
                                       "response_format (models that support it)")
    format_fix_attempts: int = setting(1, section="sampling", min=0, max=5,
                                       help="format-fixing calls for an answer that is not valid "
                                       "JSON (default %(default)s)")
    allow_outside_paths: bool = setting(False, section="sampling",
                                        help="allow image paths outside --input_folder")
    # output: the run's files, resuming
    resume: bool = setting(False, section="output", help="continue the latest unfinished run "
                           "with this --file_prefix in --output_folder")
    retry_failed: bool = setting(False, section="output", help="with --resume, also re-send "
                                 "prompts that failed for a transient reason (rate limit, "
                                 "timeout, server, …)")
    dry_run: bool = setting(False, section="output", help="write the requests as an OpenAI "
                            "Batch API JSONL file and call nothing")
    fsync_interval: float = setting(1.0, section="output", min=0, flag=None)
    status_interval: float = setting(1.0, section="output", above=0, flag=None)
    cancel_grace: float = setting(10.0, section="output", min=0, flag=None)
    debug: bool = setting(False, section="run", help="debug logging")
    #: Run on Ray (``local``, ``auto`` or ``HOST:PORT``): callers hand the config to
    #: ``mminstruct.distributed.generate.run_on_ray``; None runs in this process.
    ray_address: str | None = setting(
        None, section="output", metavar="ADDRESS|auto|local",
        help="run on Ray (needs requirements-ray.txt): 'local' starts a private instance, "
        "'auto' joins this machine's cluster, HOST:PORT a head node; --concurrency is then per "
        "worker and --rpm/--tpm hold for the cluster")
    # batch: OpenAI Batch API (generate/batch_api.py): submit files of requests instead of calling
    batch_api: bool = setting(False, section="batch", help="send the requests as Batch API files "
                              "(upload, create, poll, download) instead of online calls; "
                              "--resume continues polling after a crash without resubmitting")
    batch_poll_seconds: float = setting(
        30.0, section="batch", above=0, what="> 0 seconds",
        help="seconds between batch status checks (default %(default)s), growing ×1.5 while "
        "nothing changes …")
    batch_poll_max_seconds: float = setting(300.0, section="batch",
                                            help="… up to this (default %(default)s)")
    batch_completion_window: str = setting(
        "24h", section="batch", test=_window,
        what="a duration such as 24h (what the provider accepts)",
        help="the batches' completion window (default %(default)s)")
    batch_max_submits: int = setting(
        3, section="batch", min=1, max=20,
        help="times a request is submitted before a transient failure (5xx, 429, expired "
        "batch) is recorded (default %(default)s)")
    batch_max_requests: int = setting(
        50_000, section="batch", min=1, max=50_000,
        what="between 1 and 50000 (the Batch API's limit per file)",
        help="requests per batch file (default %(default)s, the maximum)")
    batch_max_bytes: int = setting(
        190 * 1024 * 1024, section="batch", min=1024, max=200 * 1024 * 1024,
        what="between 1 KiB and 200 MiB (the Batch API's limit per file)",
        flag="batch_max_mb", flag_type=float, to_flag=lambda v: v / 2**20,
        from_flag=lambda v: int(v * 1024 * 1024),
        help="MiB per batch file (default %(default)s; the API allows 200 MB)")

    def __post_init__(self) -> None:
        self.input_folder = Path(self.input_folder)
        self.output_folder = Path(self.output_folder)
        check_file_prefix(self.file_prefix, "file_prefix", FILE_NAME_MAX)
        if not self.input_folder.is_dir():
            raise ConfigError(f"input_folder {str(self.input_folder)!r} is not a folder")
        if not str(self.generator_model).strip():
            raise ConfigError("generator_model (--model_name) is empty")
        check_values({f.name: getattr(self, f.name) for f in fields(self)})
        max_tokens_key(self.generator_model, self.max_tokens_field)  # an unknown field: ConfigError
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

    @property
    def model_name(self) -> str:
        """The generator's name under its old attribute name (``generator_model``), for code
        written before the rename."""
        return self.generator_model

    def content_params(self) -> dict[str, Any]:
        out = {k: getattr(self, _CONTENT_FIELD.get(k, k)) for k in CONTENT_PARAMS}
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



#: Every declared setting of a generation run, by field name (``mminstruct.cli.Setting``).
SETTINGS: dict[str, Setting] = settings_of(GenerationConfig)

#: Each setting's one default, read from the declarations: what the command lines show and the
#: app's settings start from.
DEFAULTS: dict[str, Any] = {n: s.default for n, s in SETTINGS.items() if s.default is not UNSET}

#: The range rule of each setting that has one: (test, what it must be). One table for the
#: command lines, the app's settings and the config itself.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    n: r for n, s in SETTINGS.items() if (r := s.rule()) is not None}

#: The closed range of each numeric setting bounded at both ends.
BOUNDS: dict[str, tuple[int, int]] = {
    n: (s.min, s.max) for n, s in SETTINGS.items()  # type: ignore[misc]
    if s.min is not None and s.max is not None}


def number_widget(name: str, with_help: bool = False) -> dict[str, Any]:
    """The app's number field for setting ``name``: ``min_value``, ``max_value`` (and ``help``)."""
    return SETTINGS[name].widget(with_help)


#: The endpoint's flags (``EndpointConfig``'s fields, which live with the client in ``llm``).
ENDPOINT_SETTINGS: dict[str, Setting] = {}


def _endpoint_setting(name: str, **kw: Any) -> None:
    f = next(f for f in fields(EndpointConfig) if f.name == name)
    annotation = str(f.type)
    ENDPOINT_SETTINGS[name] = Setting(section="endpoint", name=name, default=f.default,
                                      kind=annotation.replace(" | None", "").strip(),
                                      optional="None" in annotation, **kw)


_endpoint_setting("base_url", help="OpenAI-compatible base URL, e.g. a local vLLM, Ollama, "
                  "llama.cpp or LM Studio server (default: $OPENAI_BASE_URL or OpenAI)")
_endpoint_setting("api_key_env", help="environment variable holding the API key (default "
                  "OPENAI_API_KEY, or AZURE_OPENAI_API_KEY with --azure_endpoint_url)")
_endpoint_setting("azure_endpoint", flag="azure_endpoint_url",
                  help="Azure OpenAI endpoint, e.g. https://NAME.openai.azure.com/")
_endpoint_setting("azure_deployment", help="Azure deployment (default: --model_name)")
_endpoint_setting("api_version", help="Azure API version")
_endpoint_setting("azure_cli_credential",
                  help="authenticate to Azure with `az login` (needs azure-identity)")


def config_settings(sections: Iterable[str] | None = None,
                    names: Iterable[str] | None = None) -> list[Setting]:
    """The declared settings (the endpoint's with them, as section ``endpoint``) of the given
    sections, or the given names, in declaration order."""
    every = [*[s for s in SETTINGS.values() if s.section == "run"], *ENDPOINT_SETTINGS.values(),
             *[s for s in SETTINGS.values() if s.section != "run"]]
    if names is not None:
        wanted = set(names)
        unknown = wanted - {s.name for s in every}
        if unknown:
            raise ValueError(f"no such setting: {sorted(unknown)}")
        return [s for s in every if s.name in wanted]
    keep = set(SECTIONS) if sections is None else set(sections)
    return [s for s in every if s.section in keep]


def add_config_arguments(parser: argparse.ArgumentParser, sections: Iterable[str] | None = None,
                         *, names: Iterable[str] | None = None, required: Iterable[str] = (),
                         ) -> dict[str, Any]:
    """The flags of the settings of ``sections`` (or ``names``), grouped by section as in
    ``SECTIONS``; ``required``: settings whose flag must be given. Returns the argument groups by
    section (for a command's own flags)."""
    return add_setting_arguments(parser, config_settings(sections, names), groups=SECTIONS,
                                 required=tuple(required))


def config_from_args(args: argparse.Namespace, cls: type[GenerationConfig] = GenerationConfig,
                     **overrides: Any) -> GenerationConfig:
    """The config from flags made by ``add_config_arguments`` (a setting without its flag keeps
    its default); ``overrides`` win (a subclass's own fields, the judge's)."""
    endpoint = EndpointConfig(**values_from_args(args, list(ENDPOINT_SETTINGS.values())))
    kwargs: dict[str, Any] = values_from_args(args, list(settings_of(cls).values()))
    kwargs["endpoint"] = endpoint
    kwargs.update(overrides)
    return cls(**kwargs)


def check_values(values: Mapping[str, Any]) -> None:
    """Check the settings in ``values`` (any subset) against ``RULES``; ConfigError names the
    first bad one and what it must be."""
    for name, value in values.items():
        rule = RULES.get(name)
        if rule is None:
            continue
        test, what = rule
        if value is not None and SETTINGS[name].kind in ("int", "float") and not _number(value):
            raise ConfigError(f"{name} is {value!r}; it must be a number {what}")
        if not test(value):
            raise ConfigError(f"{name} is {value!r}; it must be {what}")
    if {"retry_base_delay", "retry_max_delay"} <= values.keys() \
            and values["retry_max_delay"] < values["retry_base_delay"]:
        raise ConfigError(f"retry_max_delay is {values['retry_max_delay']!r}; it must be "
                          "≥ retry_base_delay")


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
    if "model_name" in d and "generator_model" not in d:  # written before the rename
        kwargs["generator_model"] = d["model_name"]
    ep = d.get("endpoint") or {}
    ep_fields = {f.name for f in fields(EndpointConfig)}
    endpoint = EndpointConfig(**{k: v for k, v in ep.items() if k in ep_fields})
    return cls(**kwargs, endpoint=endpoint)


__all__ = [
    "BOUNDS",
    "CONTENT_PARAMS",
    "DEFAULTS",
    "RULES",
    "SECTIONS",
    "SETTINGS",
    "GenerationConfig",
    "add_config_arguments",
    "check_values",
    "config_from_args",
    "config_from_dict",
    "number_widget",
    "resolve_prompt_file",
    "resolved_range",
]
