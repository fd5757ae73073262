"""Which endpoint to call and with what credentials, as one typed config → one ``openai`` client.

Three kinds of endpoint, all through the official ``openai`` package:

* **OpenAI**: the key from ``$OPENAI_API_KEY`` (or the variable named by ``api_key_env``), the base
  URL from ``$OPENAI_BASE_URL`` when set;
* **Azure OpenAI**: ``azure_endpoint`` (MM-Gen's ``--azure_endpoint_url``), optional
  ``azure_deployment``, ``api_version``; authenticated with an API key (``$AZURE_OPENAI_API_KEY``),
  an Azure AD token (``$AZURE_OPENAI_AD_TOKEN``) or, as MM-Gen did, the Azure CLI credential
  (``azure_cli_credential=True``, needs the ``azure-identity`` package);
* **local OpenAI-compatible servers** (vLLM, Ollama, llama.cpp server, LM Studio) by ``base_url``;
  they accept any key, so none is required.

The key is read when the client is built and is held only by the client: ``EndpointConfig`` never
shows it (``repr``, ``public_json``), every secret is registered with ``errors.redact``, and
``install_log_redaction`` puts a filter on the logging handlers so that no log line carries it.
The client is built with ``max_retries=0``: the engine owns retries (it reads Retry-After, counts
every attempt per error class and shares one back-off with the rate limiter).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from mminstruct.llm.errors import EndpointConfigError, redact, register_secret

ENDPOINT_KINDS = ("openai", "azure", "local")
DEFAULT_AZURE_API_VERSION = "2024-10-21"
#: A placeholder for local servers that ignore the key (the client refuses an empty one).
LOCAL_PLACEHOLDER_KEY = "not-needed"


@dataclass
class EndpointConfig:
    """Where requests go. ``api_key`` may be passed by a caller (the app); it is never shown."""

    base_url: str | None = None
    api_key_env: str | None = None
    api_key: str | None = field(default=None, repr=False)
    azure_endpoint: str | None = None
    azure_deployment: str | None = None
    api_version: str | None = None
    azure_ad_token_env: str = "AZURE_OPENAI_AD_TOKEN"
    azure_cli_credential: bool = False
    organization: str | None = None
    max_connections: int = 1000

    def __post_init__(self) -> None:
        if self.base_url and self.azure_endpoint:
            raise EndpointConfigError(
                "give either --base_url (OpenAI or a local server) or --azure_endpoint_url "
                "(Azure OpenAI), not both")
        for name in ("base_url", "azure_endpoint"):
            url = getattr(self, name)
            if url:
                parsed = urlparse(url)
                if parsed.scheme not in ("http", "https") or not parsed.netloc:
                    raise EndpointConfigError(
                        f"{name} {url!r} is not an http(s) URL (e.g. http://127.0.0.1:8000/v1)")
        if self.max_connections < 1:
            raise EndpointConfigError(f"max_connections must be ≥ 1, got {self.max_connections}")

    @property
    def kind(self) -> str:
        if self.azure_endpoint:
            return "azure"
        base = self.resolved_base_url()
        if base and not _is_openai_host(base):
            return "local"
        return "openai"

    def resolved_base_url(self) -> str | None:
        return self.base_url or os.environ.get("OPENAI_BASE_URL") or None

    def key_env_name(self) -> str:
        if self.api_key_env:
            return self.api_key_env
        return "AZURE_OPENAI_API_KEY" if self.azure_endpoint else "OPENAI_API_KEY"

    def resolve_key(self) -> str | None:
        """The API key: the caller's, else the environment variable's; None when neither."""
        key = self.api_key or os.environ.get(self.key_env_name()) or None
        register_secret(key)
        return key

    def public_json(self) -> dict[str, Any]:
        """What may be written to a manifest: where, never with what key."""
        return {
            "kind": self.kind,
            "base_url": self.resolved_base_url() if not self.azure_endpoint else None,
            "azure_endpoint": self.azure_endpoint,
            "azure_deployment": self.azure_deployment,
            "api_version": self.api_version if self.azure_endpoint else None,
            "api_key_env": self.key_env_name(),
            "auth": self._auth_kind(),
        }

    def _auth_kind(self) -> str:
        if self.api_key:
            return "key from caller"
        if self.azure_endpoint and not os.environ.get(self.key_env_name()):
            if self.azure_cli_credential:
                return "azure cli credential"
            if os.environ.get(self.azure_ad_token_env):
                return f"azure ad token from ${self.azure_ad_token_env}"
        return f"key from ${self.key_env_name()}"


OPENAI_URL = "https://api.openai.com/v1"
BASE_URL_ENV = "OPENAI_BASE_URL"


def effective_base_url(base_url: str | None) -> tuple[str, str]:
    """(the URL a request goes to, where it comes from): ``base_url`` when given, else
    ``$OPENAI_BASE_URL`` when set, else OpenAI's — the rule the ``openai`` client follows."""
    if base_url and base_url.strip():
        return base_url.strip(), "base URL"
    env = os.environ.get(BASE_URL_ENV, "").strip()
    if env:
        return env, f"${BASE_URL_ENV}"
    return OPENAI_URL, "OpenAI's default URL"


def endpoint_label(base_url: str | None) -> str:
    """What a person is told about the endpoint: ``http://…``, ``http://… (from
    $OPENAI_BASE_URL)`` or ``https://api.openai.com/v1 (OpenAI's default URL)``."""
    url, where = effective_base_url(base_url)
    return url if where == "base URL" else f"{url} ({'from ' if where.startswith('$') else ''}{where})"


def _is_openai_host(url: str) -> bool:
    host = urlparse(url).hostname or ""
    return host == "api.openai.com" or host.endswith(".openai.com")


def build_client(cfg: EndpointConfig, *, timeout: float = 120.0, ssl_context: Any = None,
                 min_connections: int = 1) -> Any:
    """An ``openai.AsyncOpenAI`` / ``AsyncAzureOpenAI`` for ``cfg``, with ``max_retries=0`` and a
    pool of ``max(cfg.max_connections, min_connections)`` connections.

    Raises EndpointConfigError (one line, naming the variable to set) when no credential is found.
    """
    import openai

    kwargs_http: dict[str, Any] = {"limits": _limits(max(cfg.max_connections, min_connections)),
                                   "timeout": timeout}
    if ssl_context is not None:
        kwargs_http["verify"] = ssl_context
    http_client = openai.DefaultAsyncHttpxClient(**kwargs_http)
    key = cfg.resolve_key()
    if cfg.azure_endpoint:
        kwargs: dict[str, Any] = {
            "azure_endpoint": cfg.azure_endpoint,
            "api_version": cfg.api_version or os.environ.get("OPENAI_API_VERSION")
            or DEFAULT_AZURE_API_VERSION,
        }
        if cfg.azure_deployment:
            kwargs["azure_deployment"] = cfg.azure_deployment
        if key:
            kwargs["api_key"] = key
        elif cfg.azure_cli_credential:
            kwargs["azure_ad_token_provider"] = _azure_cli_token_provider()
        elif os.environ.get(cfg.azure_ad_token_env):
            token = os.environ[cfg.azure_ad_token_env]
            register_secret(token)
            kwargs["azure_ad_token"] = token
        else:
            raise EndpointConfigError(
                f"no Azure credential: set ${cfg.key_env_name()} (an API key) or "
                f"${cfg.azure_ad_token_env} (an Azure AD token), or pass --azure_cli_credential")
        return openai.AsyncAzureOpenAI(**kwargs, max_retries=0, timeout=timeout,
                                       http_client=http_client)
    base = cfg.resolved_base_url()
    if not key:
        if cfg.kind == "local":
            key = LOCAL_PLACEHOLDER_KEY
        else:
            raise EndpointConfigError(
                f"no API key: set ${cfg.key_env_name()} (or name another variable with "
                "--api_key_env), or pass --base_url for a local OpenAI-compatible server")
    return openai.AsyncOpenAI(api_key=key, base_url=base, organization=cfg.organization,
                              max_retries=0, timeout=timeout, http_client=http_client)


#: Connections per client in a pool of clients: httpcore scans its whole pool on every request
#: and every release, so one pool of 1,000 connections costs more CPU than 32 pools of 32.
CONNECTIONS_PER_CLIENT = 32


def build_clients(cfg: EndpointConfig, *, concurrency: int, timeout: float = 120.0) -> list[Any]:
    """``ceil(concurrency / 32)`` clients for ``cfg``; the engine binds each worker to one, so a
    client sees about 32 requests in flight at most, and its pool holds at least that many."""
    import httpx2

    n = max(1, -(-concurrency // CONNECTIONS_PER_CLIENT))
    ssl_context = httpx2.create_ssl_context() if n > 1 else None  # loading CAs once, not n times
    share = -(-concurrency // n)
    return [build_client(cfg, timeout=timeout, ssl_context=ssl_context, min_connections=share)
            for _ in range(n)]


def _limits(max_connections: int) -> Any:
    import httpx2

    return httpx2.Limits(max_connections=max_connections,
                         max_keepalive_connections=min(max_connections, 1000))


def _azure_cli_token_provider() -> Any:
    try:
        from azure.identity.aio import AzureCliCredential, get_bearer_token_provider
    except ImportError as e:
        raise EndpointConfigError(
            "--azure_cli_credential needs the azure-identity package: pip install azure-identity"
        ) from e
    return get_bearer_token_provider(AzureCliCredential(),
                                     "https://cognitiveservices.azure.com/.default")


# ----------------------------------------------------------------------------------------------
# Logging hygiene


class RedactingFilter(logging.Filter):
    """Rewrites every record's message through ``errors.redact`` (keys, bearer tokens)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string elsewhere: leave the record alone
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def install_log_redaction(quiet_http: bool = True) -> None:
    """Add ``RedactingFilter`` to the root logger's handlers (once) and keep the HTTP libraries'
    own loggers at WARNING: their debug lines describe requests we never want in a log."""
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    if quiet_http:
        for name in ("openai", "httpx", "httpx2", "httpcore", "httpcore2"):
            logging.getLogger(name).setLevel(logging.WARNING)
