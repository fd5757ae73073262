"""A run's manifest: parameters (never the key), model, counts per outcome and error class, token
usage and an estimated cost — written beside the output as ``{prefix}_{stamp}.manifest.json``.

Counts come from the run log, not from memory, so a run resumed three times reports the same
numbers as one that ran straight through: outcomes from each prompt's latest record, and tokens,
attempts and errors summed over every record (a failure later retried on resume was paid for too).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..cache import atomic_write_json
from ..llm.pricing import estimate_cost
from .runlog import iter_records


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
    latest: dict[int, dict[str, Any]] = {}
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
        latest[idx] = {"ok": rec.get("outcome") == "ok", "class": rec.get("error_class"),
                       "n": int(rec.get("n_items") or 0), "exp": rec.get("n_expected"),
                       "drop": int(rec.get("dropped") or 0), "fr": rec.get("finish_reason"),
                       "how": rec.get("parse")}
    for r in latest.values():
        s.prompts += 1
        if r["ok"]:
            s.ok += 1
            s.items += r["n"]
            s.item_count_histogram[r["n"]] += 1
            s.wrong_item_count += int(r["exp"] is not None and r["n"] != r["exp"])
            s.dropped_items += r["drop"]
            if r["how"]:
                s.parse_paths[r["how"]] += 1
        else:
            s.failed += 1
            s.failed_by_class[r["class"] or "unknown"] += 1
        if r["fr"]:
            s.finish_reasons[r["fr"]] += 1
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


def manifest_path_for(output: Path) -> Path:
    return output.with_name(output.stem + ".manifest.json")


def write_manifest(path: Path, manifest: dict[str, Any]) -> Path:
    return atomic_write_json(path, manifest)
