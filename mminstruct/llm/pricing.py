"""A small price table for the cost estimate in a run's manifest.

Prices are US dollars per million tokens (input, output) for standard requests, as published by
OpenAI for these models (PRICES_AS_OF); the Batch API costs half. A model name matches the longest
table entry it starts with, so ``gpt-4o-2024-08-06`` and an Azure deployment called
``gpt-4o-450K`` price as ``gpt-4o`` while ``gpt-4o-mini`` prices as itself. Any other model (a
local server, an unlisted deployment name) has no estimate, and the manifest says so instead of
guessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PRICES_AS_OF = "2025-06"

#: model prefix → (input $/1M tokens, output $/1M tokens)
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o-2024-05-13": (5.00, 15.00),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.5-preview": (75.00, 150.00),
    "o1": (15.00, 60.00),
    "o3": (2.00, 8.00),
    "o4-mini": (1.10, 4.40),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
}

BATCH_DISCOUNT = 0.5


@dataclass(frozen=True)
class CostEstimate:
    model: str
    priced_as: str | None
    input_tokens: int
    output_tokens: int
    usd: float | None
    batch_usd: float | None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model, "priced_as": self.priced_as,
            "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
            "usd": None if self.usd is None else round(self.usd, 4),
            "usd_if_batch_api": None if self.batch_usd is None else round(self.batch_usd, 4),
            "prices_as_of": PRICES_AS_OF,
        }
        if self.usd is None:
            out["note"] = (f"cost unknown: no price for model {self.model!r} in the table "
                           f"({', '.join(sorted(PRICES))})")
        return out


def price_for(model: str) -> tuple[str, tuple[float, float]] | None:
    name = model.strip().lower()
    best = None
    for prefix in PRICES:
        if name == prefix or name.startswith(prefix + "-") or name.startswith(prefix + "_"):
            if best is None or len(prefix) > len(best):
                best = prefix
    return (best, PRICES[best]) if best else None


def estimate_cost(model: str, input_tokens: int, output_tokens: int) -> CostEstimate:
    found = price_for(model)
    if found is None:
        return CostEstimate(model, None, input_tokens, output_tokens, None, None)
    name, (pin, pout) = found
    usd = input_tokens / 1e6 * pin + output_tokens / 1e6 * pout
    return CostEstimate(model, name, input_tokens, output_tokens, usd, usd * BATCH_DISCOUNT)
