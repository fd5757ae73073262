"""A run's manifest: parameters (never the key), model, counts per outcome and error class, token
usage and an estimated cost — written as ``generated_data/manifests/{prefix}_{stamp}.manifest.json``
(``manifest_path_for``; ``find_manifest`` also finds one beside its output, as earlier versions
wrote it).

Counts come from the run log, not from memory, so a run resumed three times reports the same
numbers as one that ran straight through: outcomes from each prompt's latest record, and tokens,
attempts and errors summed over every record (a failure later retried on resume was paid for too).

Cost: a small price table, US dollars per million tokens (input, output) for standard requests as
published by OpenAI for these models, kept with its date and source in ``prices.json`` beside
this module; the Batch API costs half. A model name matches the longest entry it starts with, so
``gpt-4o-2024-08-06`` and an Azure deployment called ``gpt-4o-450K`` price as ``gpt-4o`` while
``gpt-4o-mini`` prices as itself. Any other model (a
local server, an unlisted deployment name) gets no estimate, and the manifest says so.
"""

from __future__ import annotations

import functools
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mminstruct.cache import atomic_write_json
from mminstruct.errors import ConfigError
from mminstruct.llm.requests import match_model
from mminstruct.generate.runlog import iter_records

PRICES_FILE = Path(__file__).with_name("prices.json")


@dataclass(frozen=True)
class PriceTable:
    """``prices.json``: model prefix → (input $/1M tokens, output $/1M tokens), its date and source."""

    as_of: str
    source: str
    batch_discount: float
    models: dict[str, tuple[float, float]]


@functools.cache
def price_table(path: Path = PRICES_FILE) -> PriceTable:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        models = {str(k): (float(v["input"]), float(v["output"])) for k, v in doc["models"].items()}
        return PriceTable(str(doc["as_of"]), str(doc["source"]), float(doc["batch_discount"]), models)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"price table {path}: cannot be read ({e}); expected keys as_of, source, "
                          "batch_discount and models (name -> input, output)") from e


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
            "prices_as_of": price_table().as_of,
        }
        if self.usd is None:
            out["note"] = (f"cost unknown: no price for model {self.model!r} in the table "
                           f"({', '.join(sorted(price_table().models))})")
        return out


def price_for(model: str) -> tuple[str, tuple[float, float]] | None:
    prices = price_table().models
    best = match_model(model, prices)  # the image-token table matches model names the same way
    return (best, prices[best]) if best else None


def estimate_cost(model: str, input_tokens: int, output_tokens: int) -> CostEstimate:
    found = price_for(model)
    if found is None:
        return CostEstimate(model, None, input_tokens, output_tokens, None, None)
    name, (pin, pout) = found
    usd = input_tokens / 1e6 * pin + output_tokens / 1e6 * pout
    return CostEstimate(model, name, input_tokens, output_tokens, usd, usd * price_table().batch_discount)



def batch_api_cost(cost: dict[str, Any], model: str, log_path: Path, start: int,
                   n: int) -> dict[str, Any]:
    """A Batch API run's ``cost``: the tokens of batch responses (each record's ``batch_usage``)
    at batch prices, the rest — format-fix calls, sent online — at standard prices."""
    b_in = b_out = 0
    for _, rec in iter_records(log_path):
        if start <= rec["prompt_idx"] < start + n:
            usage = rec.get("batch_usage") or {}
            b_in += int(usage.get("input") or 0)
            b_out += int(usage.get("output") or 0)
    o_in = max(0, int(cost.get("input_tokens") or 0) - b_in)
    o_out = max(0, int(cost.get("output_tokens") or 0) - b_out)
    batch, online = estimate_cost(model, b_in, b_out), estimate_cost(model, o_in, o_out)
    out = {**cost, "pricing": "batch_api", "batch_tokens": {"input": b_in, "output": b_out},
           "online_tokens": {"input": o_in, "output": o_out},
           "usd_at_standard_prices": cost.get("usd")}
    if batch.batch_usd is not None and online.usd is not None:
        usd = round(batch.batch_usd + online.usd, 4)
        out.update(usd=usd, usd_if_batch_api=usd,
                   note="batch requests at Batch API prices (half the standard price); "
                        "format-fix calls, sent online, at standard prices")
    return out


@dataclass
class LogSummary:
    prompts: int = 0
    ok: int = 0
    failed: int = 0
    failed_by_class: Counter = field(default_factory=Counter)
    items: int = 0
    wrong_item_count: int = 0
    item_count_histogram: Counter = field(default_factory=Counter)
    dropped_items: int = 0
    errors_by_class: Counter = field(default_factory=Counter)
    requests: int = 0
    retries: int = 0
    format_fixes: int = 0
    finish_reasons: Counter = field(default_factory=Counter)
    parse_paths: Counter = field(default_factory=Counter)
    input_tokens: int = 0
    output_tokens: int = 0
    records: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts, "succeeded": self.ok, "failed": self.failed,
            "by_outcome": {"ok": self.ok, **dict(sorted(self.failed_by_class.items()))},
            "items": self.items,
            "prompts_with_wrong_item_count": self.wrong_item_count,
            "items_per_prompt": {str(k): v for k, v in sorted(self.item_count_histogram.items())},
            "dropped_items": self.dropped_items,
            "requests": self.requests, "retries": self.retries,
            "format_fixes": self.format_fixes,
            "finish_reasons": dict(self.finish_reasons),
            "parse_paths": dict(self.parse_paths),
            "log_records": self.records,
        }


def summarize_log(log_path: Path, start: int, n: int) -> LogSummary:
    s = LogSummary()
    latest: dict[int, tuple] = {}
    for _, rec in iter_records(log_path):
        idx = rec["prompt_idx"]
        if not start <= idx < start + n:
            continue
        s.records += 1
        usage = rec.get("usage") or {}
        s.input_tokens += int(usage.get("input") or 0)
        s.output_tokens += int(usage.get("output") or 0)
        s.requests += int(rec.get("attempts") or 0)
        s.retries += int(rec.get("retries") or 0)
        s.format_fixes += int(rec.get("fixes") or 0)
        s.errors_by_class.update(rec.get("errors") or {})
        # a tuple per prompt, not a dict: 150,000 of them stay small
        latest[idx] = (rec.get("outcome") == "ok", rec.get("error_class"),
                       int(rec.get("n_items") or 0), rec.get("n_expected"),
                       int(rec.get("dropped") or 0), rec.get("finish_reason"), rec.get("parse"))
    for ok, error_class, n_items, expected, dropped, finish, how in latest.values():
        s.prompts += 1
        if ok:
            s.ok += 1
            s.items += n_items
            s.item_count_histogram[n_items] += 1
            s.wrong_item_count += int(expected is not None and n_items != expected)
            s.dropped_items += dropped
            if how:
                s.parse_paths[how] += 1
        else:
            s.failed += 1
            s.failed_by_class[error_class or "unknown"] += 1
        if finish:
            s.finish_reasons[finish] += 1
    return s


def build_manifest(*, output: Path | None, run_dir: Path, meta: dict[str, Any],
                   parameters: dict[str, Any], endpoint: dict[str, Any], model: str,
                   prompt_file: dict[str, Any], summary: LogSummary, len_samples: int,
                   limits: dict[str, Any], session: dict[str, Any]) -> dict[str, Any]:
    cost = estimate_cost(model, summary.input_tokens, summary.output_tokens)
    return {
        "output": str(output) if output else None,
        "run_dir": str(run_dir),
        "created": meta.get("created"),
        "finished": datetime.now().isoformat(timespec="seconds"),
        "model": model,
        "endpoint": endpoint,
        "prompt_file": prompt_file,
        "parameters": parameters,
        "counts": {**summary.to_json(), "samples": len_samples},
        "errors_by_class": dict(sorted(summary.errors_by_class.items())),
        "tokens": {"input": summary.input_tokens, "output": summary.output_tokens,
                   "total": summary.input_tokens + summary.output_tokens},
        "cost": cost.to_json(),
        "rate_limits": limits,
        "last_session": session,
    }


#: Manifests live in ``generated_data/manifests/``, not beside the outputs: MM-Gen's merge.py
#: takes every ``*{run_id}*.json`` of the folder as an output (a manifest sorted first broke it).
MANIFESTS_DIR = "manifests"
MANIFEST_SUFFIX = ".manifest.json"


def sidecar_path(output: str | os.PathLike, suffix: str) -> Path:
    """Where a file about the output ``output`` goes (its manifest, its quality report):
    ``manifests/{stem}{suffix}`` beside it, out of MM-Gen merge.py's ``*.json`` glob."""
    p = Path(output)
    return p.parent / MANIFESTS_DIR / (p.stem + suffix)


def manifest_path_for(output: Path) -> Path:
    """Where the manifest of the output file ``output`` is written."""
    return sidecar_path(output, MANIFEST_SUFFIX)


def find_manifest(output: Path) -> Path | None:
    """The manifest of ``output``: in ``manifests/``, or beside it (the name of earlier versions)."""
    for p in (manifest_path_for(output), output.with_name(output.stem + MANIFEST_SUFFIX)):
        if p.is_file():
            return p
    return None


def write_manifest(path: Path, manifest: dict[str, Any]) -> Path:
    return atomic_write_json(path, manifest)
