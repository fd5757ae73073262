"""Talking to a VLM behind an OpenAI-compatible API: endpoint config and client, request shapes,
rate limiting, error classes and answer parsing. See ``mminstruct.generate`` for the engine."""

from .client import EndpointConfig, build_client, install_log_redaction
from .errors import ERROR_CLASSES, RULES, LLMError, classify, redact
from .limiter import RateLimiter
from .parse import ParseResult, parse_items

__all__ = ["EndpointConfig", "build_client", "install_log_redaction", "ERROR_CLASSES", "RULES",
           "LLMError", "classify", "redact", "RateLimiter", "ParseResult", "parse_items"]
