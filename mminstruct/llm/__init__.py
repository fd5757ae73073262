"""Talking to a VLM behind an OpenAI-compatible API: endpoint config and client, request shapes,
rate limiting, error classes and answer parsing. See ``mminstruct.generate`` for the engine."""

from mminstruct.llm.client import EndpointConfig, build_client, install_log_redaction
from mminstruct.llm.errors import ERROR_CLASSES, RULES, LLMError, classify, redact
from mminstruct.llm.limiter import Limiter, RateLimiter
from mminstruct.llm.parse import ParseResult, parse_items

__all__ = ["EndpointConfig", "build_client", "install_log_redaction", "ERROR_CLASSES", "RULES",
           "LLMError", "classify", "redact", "Limiter", "RateLimiter", "ParseResult", "parse_items"]
