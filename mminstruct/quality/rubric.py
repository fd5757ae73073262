"""The judge's rubric: aspects, their scale, how ``overall`` is computed, the prompt text and the
parsing of a judge's answer.

The default rubric has three aspects scored 1–5, each with a one-sentence rationale:

* ``visual_faithfulness`` — every claim in the answer is supported by the image;
* ``correctness`` — the answer is correct and helpful for the question;
* ``task_fit`` — the sample matches its subgroup's task and the style of its in-context examples.

``overall`` is the mean of the aspects (``"overall": "mean"``), their minimum (``"min"``) or a
weighted mean (``{"weights": {aspect: w}}``), rounded to one decimal.

A rubric file (JSON, or YAML with ``.yaml``/``.yml``) replaces the default::

    {"aspects": {"faithful": "Every claim is supported by the image.", ...},
     "scale": [1, 5], "overall": "mean"}

Any problem with the file is one ``ConfigError`` line naming the file and the problem. The
rubric's hash (``Rubric.hash``) is recorded with every score, so scores from two rubrics are never
mixed in one file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mminstruct.cache import content_key
from mminstruct.errors import ConfigError
from mminstruct.llm.errors import BadJSONError, SchemaMismatchError
from mminstruct.llm.parse import clean_text, find_json

OVERALL_RULES = ("mean", "min")
_ASPECT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


@dataclass(frozen=True)
class Rubric:
    aspects: dict[str, str]  # name → description
    low: int = 1
    high: int = 5
    overall: str = "mean"  # mean | min | weighted
    weights: dict[str, float] = field(default_factory=dict)

    @property
    def hash(self) -> str:
        return content_key("judge-rubric-v1", self.to_json())[:16]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"aspects": dict(self.aspects), "scale": [self.low, self.high],
                               "overall": self.overall}
        if self.weights:
            out["overall"] = {"weights": dict(self.weights)}
        return out

    def overall_of(self, scores: dict[str, int]) -> float:
        vals = [scores[a] for a in self.aspects]
        if self.overall == "min":
            return float(min(vals))
        if self.weights:
            total = sum(self.weights.values())
            return round(sum(scores[a] * w for a, w in self.weights.items()) / total, 2)
        return round(sum(vals) / len(vals), 2)

    # ------------------------------------------------------------------ prompt and answer

    def system_prompt(self) -> str:
        lines = "\n".join(f"- {a}: {d}" for a, d in self.aspects.items())
        template = json.dumps({"scores": {a: self.high for a in self.aspects},
                               "rationale": {a: "one sentence" for a in self.aspects}})
        return (
            "You are a strict judge of training data for a vision-language model. You are shown "
            "an image and one generated question-answer sample about it, and the subgroup (task) "
            "the sample was written for with the in-context examples it imitated. Rate the "
            f"sample on these aspects: {', '.join(self.aspects)}. Each score is an integer from "
            f"{self.low} to {self.high} ({self.low}: fails completely, {self.high}: flawless):\n"
            f"{lines}\nGive one sentence of rationale per aspect. Reply with one JSON object and "
            f"nothing else, exactly like: {template}")

    def response_schema(self) -> dict[str, Any]:
        ints = {a: {"type": "integer"} for a in self.aspects}
        strs = {a: {"type": "string"} for a in self.aspects}
        return {"type": "json_schema", "json_schema": {"name": "judge_scores", "strict": True,
                "schema": {"type": "object", "additionalProperties": False,
                           "required": ["scores", "rationale"], "properties": {
                               "scores": {"type": "object", "properties": ints,
                                          "required": list(self.aspects),
                                          "additionalProperties": False},
                               "rationale": {"type": "object", "properties": strs,
                                             "required": list(self.aspects),
                                             "additionalProperties": False}}}}}

    def fix_messages(self, raw: str) -> list[dict[str, Any]]:
        template = json.dumps({"scores": {a: self.low for a in self.aspects},
                               "rationale": {a: "…" for a in self.aspects}})
        return [{"role": "system", "content": (
                    "You repair the output of another model. It was meant to be one JSON object "
                    f"like {template} (integer scores from {self.low} to {self.high}, aspects "
                    f"{', '.join(self.aspects)}). Return that object as valid JSON and nothing "
                    "else; keep the scores and sentences as given.")},
                {"role": "user", "content": raw[:8000]}]

    def parse(self, text: str) -> dict[str, Any]:
        """``{"scores", "overall", "rationale"}`` from a judge's answer; BadJSONError when there is
        no JSON, SchemaMismatchError when an aspect's score is missing or off the scale."""
        cleaned = clean_text(text or "")
        found = find_json(cleaned) if cleaned else None
        if found is None:
            raise BadJSONError(f"no JSON in the judge's answer: {cleaned[:120]!r}", raw=text)
        value = found[0]
        if isinstance(value, list) and value and isinstance(value[0], dict):
            value = value[0]
        if not isinstance(value, dict):
            raise SchemaMismatchError(f"the judge's answer is a {type(value).__name__}, not an "
                                      "object", raw=text)
        raw_scores = value.get("scores") if isinstance(value.get("scores"), dict) else value
        raw_why = value.get("rationale") if isinstance(value.get("rationale"), dict) else {}
        scores: dict[str, int] = {}
        why: dict[str, str] = {}
        for a in self.aspects:
            v = raw_scores.get(a)
            if isinstance(v, dict):  # {"aspect": {"score": 4, "rationale": "…"}}
                raw_why = {**raw_why, a: v.get("rationale", "")}
                v = v.get("score")
            try:
                n = int(float(v))  # "4", 4.0
            except (TypeError, ValueError):
                raise SchemaMismatchError(f"the judge gave no score for {a!r} (got {v!r})",
                                          raw=text) from None
            if not self.low <= n <= self.high:
                raise SchemaMismatchError(f"the judge's score for {a!r} is {n}, off the scale "
                                          f"{self.low}-{self.high}", raw=text)
            scores[a] = n
            why[a] = str(raw_why.get(a, "") or "")[:500]
        return {"scores": scores, "overall": self.overall_of(scores), "rationale": why}


DEFAULT_RUBRIC = Rubric({
    "visual_faithfulness": "every claim in the answer is supported by the image (nothing "
                           "invented, nothing contradicted by what is visible).",
    "correctness": "the answer is correct and helpful for the question asked.",
    "task_fit": "the sample matches its subgroup's task and the style of its in-context "
                "examples (the kind of question they ask and the form of their answers).",
})


def load_rubric(path: str | Path | None) -> Rubric:
    """The rubric in ``path`` (JSON or YAML), or the default for None; ConfigError (one line)
    naming the file and the problem."""
    if path is None or str(path) == "":
        return DEFAULT_RUBRIC
    p = Path(path)
    where = f"rubric file {p}"
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(f"{where}: not found") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where}: cannot be read ({e})") from e
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{where}: not valid YAML{at}") from e
    else:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: not valid JSON (line {e.lineno}: {e.msg})") from e
    return rubric_from_json(doc, where)


def rubric_from_json(doc: Any, where: str = "rubric") -> Rubric:
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: expected an object with 'aspects', got "
                          f"{type(doc).__name__}")
    unknown = sorted(set(doc) - {"aspects", "scale", "overall", "name", "description"})
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid keys: aspects, scale, "
                          "overall, name, description")
    aspects = doc.get("aspects")
    if isinstance(aspects, list):  # [{"name": …, "description": …}]
        try:
            aspects = {str(a["name"]): str(a.get("description", "")) for a in aspects}
        except (TypeError, KeyError) as e:
            raise ConfigError(f"{where}: each aspect in the list needs a 'name'") from e
    if not isinstance(aspects, dict) or not aspects:
        raise ConfigError(f"{where}: 'aspects' must be a non-empty object "
                          "(aspect name -> description)")
    for name, desc in aspects.items():
        if not _ASPECT_NAME.match(str(name)):
            raise ConfigError(f"{where}: aspect name {name!r} must be lower-case letters, digits "
                              "and _ (starting with a letter, at most 40)")
        if name == "overall":
            raise ConfigError(f"{where}: 'overall' is computed, it cannot be an aspect")
        if not isinstance(desc, str) or not desc.strip():
            raise ConfigError(f"{where}: aspect {name!r} needs a description (a sentence)")
    scale = doc.get("scale", [1, 5])
    if (not isinstance(scale, list) or len(scale) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in scale)
            or not scale[0] < scale[1] or scale[1] - scale[0] > 100):
        raise ConfigError(f"{where}: 'scale' is {scale!r}; it must be [low, high], two integers "
                          "with low < high (e.g. [1, 5])")
    overall = doc.get("overall", "mean")
    weights: dict[str, float] = {}
    if isinstance(overall, dict):
        w = overall.get("weights")
        if not isinstance(w, dict) or set(w) != set(aspects) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                for v in w.values()) or not sum(w.values()) > 0:
            raise ConfigError(f"{where}: 'overall' weights must give every aspect "
                              f"({', '.join(aspects)}) a number ≥ 0, not all 0")
        weights = {a: float(w[a]) for a in aspects}
        overall = "weighted"
    elif overall not in OVERALL_RULES:
        raise ConfigError(f"{where}: unknown overall {overall!r}; choose one of: mean, min, "
                          "or {\"weights\": {aspect: weight}}")
    return Rubric({str(k): str(v).strip() for k, v in aspects.items()}, scale[0], scale[1],
                  overall, weights)
