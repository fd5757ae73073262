"""Reading a judge's scores file (``mminstruct.quality.judge`` writes it): one JSON line per sample,
``{"id", "keyword", "mode", "scores": {aspect: int} | null, "overall", "rationale", "judge"}``.

Used by the quality report (score distributions per subgroup and prompt mode), Review (sort,
filter, reject below a threshold) and export (``--min_score``)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from mminstruct.errors import DataFileError


def read_scores(path: str | Path) -> dict[Any, dict[str, Any]]:
    """A scores file: sample id → its line (the last line of an id wins); DataFileError names the
    file and line of a bad one."""
    out: dict[Any, dict[str, Any]] = {}
    p = Path(path)
    try:
        with open(p, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataFileError(f"{p}: line {n} is not JSON ({e.msg})") from e
                if not isinstance(rec, dict) or "id" not in rec:
                    raise DataFileError(f"{p}: line {n} has no 'id'")
                scores = rec.get("scores")
                if scores is not None and not (isinstance(scores, dict) and all(
                        isinstance(v, (int, float)) and not isinstance(v, bool)
                        for v in scores.values())):
                    raise DataFileError(f"{p}: line {n}: 'scores' must map aspects to numbers")
                ov = rec.get("overall")
                if ov is not None and (isinstance(ov, bool) or not isinstance(ov, (int, float))):
                    raise DataFileError(f"{p}: line {n}: 'overall' is {ov!r}, not a number")
                out[rec["id"]] = rec
    except OSError as e:
        raise DataFileError(f"{p}: cannot read the scores file ({e})") from e
    return out


def below(scores: dict[Any, dict[str, Any]], threshold: float, aspect: str | None = None
          ) -> list[Any]:
    """Ids of the judged samples whose ``overall`` (or ``aspect``'s score) is below ``threshold``
    (unjudged samples are not among them)."""
    out = []
    for sid, rec in scores.items():
        v = rec.get("overall") if aspect is None else (rec.get("scores") or {}).get(aspect)
        if v is not None and v < threshold:
            out.append(sid)
    return out


def distributions(scores: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    """Counts of each overall score (rounded to the unit) and the mean of every aspect, for all
    samples, per subgroup (``keyword``) and per prompt mode (``mode``)."""
    def block(recs: list[dict[str, Any]]) -> dict[str, Any]:
        judged = [r for r in recs if r.get("scores")]
        aspects: dict[str, list[int]] = defaultdict(list)
        for r in judged:
            for a, v in r["scores"].items():
                aspects[a].append(v)
        return {"samples": len(recs), "judged": len(judged),
                "overall_mean": round(sum(r["overall"] for r in judged) / len(judged), 3)
                if judged else None,
                "overall_counts": dict(sorted(Counter(str(round(r["overall"]))
                                                      for r in judged).items())),
                "aspect_means": {a: round(sum(v) / len(v), 3) for a, v in sorted(aspects.items())}}

    recs = list(scores.values())
    by_kw: dict[str, list] = defaultdict(list)
    by_mode: dict[str, list] = defaultdict(list)
    for r in recs:
        by_kw[str(r.get("keyword", ""))].append(r)
        by_mode[str(r.get("mode", ""))].append(r)
    judges = {json.dumps(r.get("judge"), sort_keys=True) for r in recs if r.get("judge")}
    return {"all": block(recs), "by_subgroup": {k: block(v) for k, v in sorted(by_kw.items())},
            "by_mode": {k: block(v) for k, v in sorted(by_mode.items())},
            "judges": [json.loads(j) for j in sorted(judges)]}
