"""Step 3's error classes: what went wrong with one request, whether to retry, and its counter.

Every failure the engine meets is turned into an ``LLMError`` subclass by ``classify`` (for the
``openai`` client's exceptions) or raised directly (parsing, images). Each class carries its rule:

=================  =========================================================  ==========  =======
class (counter)    what                                                       retried     stops
=================  =========================================================  ==========  =======
rate_limit         HTTP 429 (Retry-After / retry-after-ms honoured)           yes         no
quota              HTTP 429 ``insufficient_quota`` (billing, not pacing)      no          the run
auth               HTTP 401/403, a missing or wrong key (also a gateway's 400  no          the run
                   whose body says the key is invalid)
not_found          HTTP 404, an unknown model / deployment / URL              no          the run
content_filter     the provider's content filter (400 code or finish_reason)  no          no
context_length     the prompt is longer than the model's context window       no          no
image_rejected     the provider refused an image (400 invalid_image, …)       no          no
bad_request        any other HTTP 4xx                                         no          no
timeout            no answer within ``--timeout`` seconds                     yes         no
server             HTTP 5xx (and 409)                                          yes         no
connection         connection refused, dropped or reset                       yes         no
bad_json           no JSON list in the answer, even after a format-fix call   no          no
schema_mismatch    JSON found but no item has the mode's keys, after a fix    no          no
length             finish_reason "length": the answer was cut off             no          no
refusal            the model refused (``message.refusal`` or a refusal text)  no          no
image_error        a prompt's image is missing or unreadable on our side      no          no
bad_prompt         a prompt entry in the prompt file is malformed             no          no
budget             the judge's ``--max_cost`` was reached                     no          the run
=================  =========================================================  ==========  =======

"Stops the run" means the condition would fail every remaining prompt the same way (no money,
wrong key, wrong model), so the engine stops sending, leaves the remaining prompts unfinished, and
``--resume`` continues once the cause is fixed. The prompt that met it is not recorded as failed.

Messages pass through ``redact`` before they are stored or logged, so a server that echoes the API
key back (some do, in 401 bodies) cannot leak it into a file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from mminstruct.errors import ConfigError, GenerationError


@dataclass(frozen=True)
class Rule:
    counter: str
    retry: bool
    stops_run: bool
    what: str


RULES: dict[str, Rule] = {
    "rate_limit": Rule("rate_limit", True, False, "HTTP 429 rate limit"),
    "quota": Rule("quota", False, True, "quota exhausted (insufficient_quota)"),
    "auth": Rule("auth", False, True, "authentication failed"),
    "not_found": Rule("not_found", False, True, "model, deployment or URL not found"),
    "content_filter": Rule("content_filter", False, False, "blocked by the content filter"),
    "context_length": Rule("context_length", False, False, "prompt exceeds the context window"),
    "image_rejected": Rule("image_rejected", False, False, "the provider rejected an image"),
    "bad_request": Rule("bad_request", False, False, "request refused (HTTP 4xx)"),
    "timeout": Rule("timeout", True, False, "request timed out"),
    "server": Rule("server", True, False, "server error (HTTP 5xx)"),
    "connection": Rule("connection", True, False, "connection failed or dropped"),
    "bad_json": Rule("bad_json", False, False, "no JSON list in the answer"),
    "schema_mismatch": Rule("schema_mismatch", False, False, "JSON items lack the mode's keys"),
    "length": Rule("length", False, False, "answer cut off (finish_reason length)"),
    "refusal": Rule("refusal", False, False, "the model refused"),
    "image_error": Rule("image_error", False, False, "an image is missing or unreadable"),
    "bad_prompt": Rule("bad_prompt", False, False, "malformed prompt entry"),
    "budget": Rule("budget", False, True, "the cost cap (--max_cost) was reached"),
}

ERROR_CLASSES: tuple[str, ...] = tuple(RULES)

#: Classes a resumed run re-sends when asked to retry failures (transient or fixable by the user).
RETRYABLE_ON_RESUME: frozenset[str] = frozenset(
    {"rate_limit", "timeout", "server", "connection", "quota", "auth", "not_found"}
)


class LLMError(GenerationError):
    """One request's failure, with its class name, rule and (for 429) the server's Retry-After."""

    kind: ClassVar[str] = "bad_request"

    def __init__(self, message: str, *, retry_after: float | None = None,
                 status: int | None = None, raw: str | None = None,
                 param: str | None = None):
        super().__init__(redact(message))
        self.retry_after = retry_after
        self.status = status
        self.raw = raw  # the model's text, for parse failures
        self.param = param  # a 400's unsupported request parameter (``unsupported_param``)

    @property
    def rule(self) -> Rule:
        return RULES[self.kind]

    @property
    def retryable(self) -> bool:
        return self.rule.retry

    @property
    def stops_run(self) -> bool:
        return self.rule.stops_run


class RateLimitError(LLMError):
    """HTTP 429: slow down (retried, honouring Retry-After)."""

    kind = "rate_limit"


class QuotaError(LLMError):
    """HTTP 429 insufficient_quota: out of credit (stops the run)."""

    kind = "quota"


class AuthError(LLMError):
    """HTTP 401/403 (stops the run)."""

    kind = "auth"


class NotFoundError(LLMError):
    """HTTP 404: unknown model or deployment (stops the run)."""

    kind = "not_found"


class ContentFilterError(LLMError):
    """The provider's content filter blocked the request."""

    kind = "content_filter"


class ContextLengthError(LLMError):
    """The prompt exceeds the model's context window."""

    kind = "context_length"


class ImageRejectedError(LLMError):
    """The provider could not use an image."""

    kind = "image_rejected"


class BadRequestError(LLMError):
    """Any other HTTP 4xx."""

    kind = "bad_request"


class RequestTimeoutError(LLMError):
    """No answer within the per-request timeout (retried)."""

    kind = "timeout"


class ServerError(LLMError):
    """HTTP 5xx (retried)."""

    kind = "server"


class ConnectionFailedError(LLMError):
    """Connection refused, reset or dropped (retried)."""

    kind = "connection"


class BadJSONError(LLMError):
    """No JSON list could be found or repaired in the answer."""

    kind = "bad_json"


class SchemaMismatchError(LLMError):
    """JSON items lack the mode's keys."""

    kind = "schema_mismatch"


class LengthError(LLMError):
    """The answer was cut off by the token limit."""

    kind = "length"


class RefusalError(LLMError):
    """The model refused the request."""

    kind = "refusal"


class ImageFileError(LLMError):
    """A prompt image is missing or unreadable (never sent)."""

    kind = "image_error"


class BadPromptError(LLMError):
    """A prompt entry in the prompt file is malformed."""

    kind = "bad_prompt"


class BudgetError(LLMError):
    """The judge's cost cap was reached (stops the run; ``--resume`` with a higher cap goes on)."""

    kind = "budget"


BY_KIND: dict[str, type[LLMError]] = {c.kind: c for c in (
    RateLimitError, QuotaError, AuthError, NotFoundError, ContentFilterError, ContextLengthError,
    ImageRejectedError, BadRequestError, RequestTimeoutError, ServerError, ConnectionFailedError,
    BadJSONError, SchemaMismatchError, LengthError, RefusalError, ImageFileError, BadPromptError,
    BudgetError)}


class EndpointConfigError(ConfigError):
    """The endpoint cannot be configured (no key, bad URL, Azure without an endpoint, …)."""


class RunStopped(GenerationError):
    """The run stopped before every prompt finished (quota, auth, cancel); ``--resume`` continues."""

    def __init__(self, message: str, reason: str):
        super().__init__(redact(message))
        self.reason = reason


# ----------------------------------------------------------------------------------------------
# Secrets

_SECRETS: set[str] = set()
_KEY_PATTERN = re.compile(r"\b(sk-[A-Za-z0-9_\-]{3})[A-Za-z0-9_\-]{6,}")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\"]{8,}")


def register_secret(secret: str | None) -> None:
    """Remember a secret so that ``redact`` removes it from any message (keys, AD tokens)."""
    if secret and len(secret) >= 6:
        _SECRETS.add(secret)


def redact(text: Any) -> str:
    """``text`` with registered secrets, ``sk-…`` keys and bearer tokens replaced by ``***``."""
    s = str(text)
    for secret in _SECRETS:
        if secret in s:
            s = s.replace(secret, "***")
    s = _KEY_PATTERN.sub(r"\1***", s)
    return _BEARER.sub(r"\1***", s)


# ----------------------------------------------------------------------------------------------
# Classifying the openai client's exceptions

_CONTENT_FILTER_CODES = {"content_filter", "content_policy_violation", "responsibleaipolicyviolation"}
_CONTEXT_CODES = {"context_length_exceeded", "string_above_max_length"}
_IMAGE_CODES = {"invalid_image", "image_parse_error", "invalid_image_url", "invalid_image_format",
                "image_too_large", "unsupported_image"}


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (preferred) or ``retry-after`` (seconds or an HTTP
    date); None when absent or unreadable."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime
    from datetime import datetime, timezone
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


#: A gateway's HTTP 400 that is really a wrong key (LiteLLM's "Authentication Error", a proxy's
#: "invalid api key"): read from the error's code, type or message.
_AUTH_CODES = {"invalid_api_key", "authentication_error", "auth_error", "invalid_authentication",
               "unauthorized", "permission_denied"}
_AUTH_MESSAGE = re.compile(r"authentication error|(invalid|incorrect|wrong|missing)\s+(api[\s_-]?)?"
                           r"(key|token)|api key (is )?(not valid|invalid)|unauthori[sz]ed")
#: OpenAI's answer to a parameter a model does not take: code ``unsupported_parameter`` /
#: ``unsupported_value`` with the parameter in ``param``, or "Unsupported parameter: 'temperature'".
_UNSUPPORTED_CODES = {"unsupported_parameter", "unsupported_value"}
_UNSUPPORTED_MESSAGE = re.compile(r"unsupported (?:parameter|value):\s*'([a-z_]+)'|'([a-z_]+)' is not "
                                  r"supported with this model|does not support (?:the )?'?"
                                  r"([a-z_]+)'? parameter", re.IGNORECASE)


def unsupported_param(body: Any, message: str) -> str | None:
    """The request parameter an HTTP 400 says the model does not support (None when it names none)."""
    err = body.get("error", body) if isinstance(body, dict) else {}
    if isinstance(err, dict) and str(err.get("code") or "").lower() in _UNSUPPORTED_CODES \
            and isinstance(err.get("param"), str) and err["param"]:
        return err["param"]
    m = _UNSUPPORTED_MESSAGE.search(message or "")
    return next((g for g in m.groups() if g), None) if m else None


def _body_fields(body: Any) -> tuple[str, str, str]:
    """(code, type, message) from an error body, lower-cased; both OpenAI's ``{"error": {…}}`` and a
    bare object are read, and Azure's ``innererror.code``."""
    err = body.get("error", body) if isinstance(body, dict) else {}
    if not isinstance(err, dict):
        return "", "", str(err).lower()
    code = str(err.get("code") or "")
    inner = err.get("innererror")
    if isinstance(inner, dict) and inner.get("code"):
        code = code or str(inner["code"])
        if str(inner["code"]).lower() == "responsibleaipolicyviolation":
            code = "content_filter"
    return code.lower(), str(err.get("type") or "").lower(), str(err.get("message") or "").lower()


def classify(exc: BaseException) -> LLMError:
    """The ``LLMError`` for an exception raised by the ``openai`` client (or anything else)."""
    import openai

    if isinstance(exc, LLMError):
        return exc
    if isinstance(exc, openai.APITimeoutError):
        return RequestTimeoutError(f"timed out: {exc}")
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        detail = f" ({type(cause).__name__}: {cause})" if cause else ""
        return ConnectionFailedError(f"connection failed: {exc}{detail}")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        code, etype, msg = _body_fields(exc.body)
        text = f"HTTP {status}: {exc.message}"
        headers = getattr(exc.response, "headers", None)
        if status == 429:
            if "insufficient_quota" in (code, etype) or "exceeded your current quota" in msg:
                return QuotaError(text, status=status)
            return RateLimitError(text, retry_after=parse_retry_after(headers), status=status)
        if status in (401, 403):
            return AuthError(text, status=status)
        if status == 404:
            return NotFoundError(text, status=status)
        if status >= 500 or status in (408, 409):
            return ServerError(text, retry_after=parse_retry_after(headers), status=status)
        if code in _AUTH_CODES or etype in _AUTH_CODES or _AUTH_MESSAGE.search(msg):
            return AuthError(text, status=status)
        param = unsupported_param(exc.body, msg)
        if param is not None:
            return BadRequestError(text, status=status, param=param)
        if code in _CONTENT_FILTER_CODES or "content management policy" in msg \
                or "content filter" in msg:
            return ContentFilterError(text, status=status)
        if code in _CONTEXT_CODES or "maximum context length" in msg or "context length" in msg:
            return ContextLengthError(text, status=status)
        if code in _IMAGE_CODES or ("image" in msg and any(w in msg for w in (
                "invalid", "unsupported", "could not", "cannot", "unable", "too large"))):
            return ImageRejectedError(text, status=status)
        return BadRequestError(text, status=status)
    if isinstance(exc, openai.APIError):
        return BadRequestError(f"API error: {exc}")
    return BadRequestError(f"{type(exc).__name__}: {exc}")
