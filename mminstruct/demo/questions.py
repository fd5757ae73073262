"""Questions about a chart and their answers, computed from the data the chart was drawn from.

``chart_questions(spec, rng)`` lists every question that has exactly one right answer for that chart
(ties and near-zero correlations are left out), each a ``QA`` with its ``kind`` and ``params`` (the
category, year, series… it is about), so a reader can recompute the answer from ``spec`` alone.
Multiple-choice variants list options A–D and are answered with the letter.
``pick_questions`` chooses one or two of them for a reference record.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from statistics import mean

from mminstruct.demo.charts import ChartSpec, format_value

LETTERS = "ABCD"
MC_SUFFIX = "Answer with the option's letter from the given choices directly."


@dataclass(frozen=True)
class QA:
    kind: str
    question: str
    answer: str
    params: dict[str, object] = field(default_factory=dict, hash=False)


def _unique_arg(values: list[float] | tuple[float, ...], best: str = "max") -> int | None:
    """Index of the single max (or min) value, or None when it is tied."""
    target = max(values) if best == "max" else min(values)
    hits = [i for i, v in enumerate(values) if v == target]
    return hits[0] if len(hits) == 1 else None


def _multiple_choice(rng: random.Random, kind: str, question: str, right: str, pool: list[str],
                     params: dict[str, object]) -> QA | None:
    wrong = [p for p in dict.fromkeys(pool) if p != right]
    if len(wrong) < 3:
        return None
    options = rng.sample(wrong, 3) + [right]
    rng.shuffle(options)
    letter = LETTERS[options.index(right)]
    text = question + "\n" + "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
    return QA(kind + "_mc", f"{text}\n{MC_SUFFIX}", letter,
              {**params, "options": options, "right": right})


def _noun(label: str) -> str:
    """'Region' -> 'region'; 'Study hours' -> 'study hours'."""
    return label.split(" (")[0].strip().lower() or "category"


def chart_questions(spec: ChartSpec, rng: random.Random) -> list[QA]:
    """Every well-posed question about ``spec`` (``rng`` only orders options and picks pairs)."""
    maker = {"bar": _bar_questions, "line": _line_questions, "pie": _pie_questions,
             "scatter": _scatter_questions}[spec.kind]
    return [q for q in maker(spec, rng) if q is not None]


def _bar_questions(spec: ChartSpec, rng: random.Random) -> list[QA | None]:
    cats, noun = list(spec.categories), _noun(spec.xlabel)
    out: list[QA | None] = []
    if len(spec.series) == 1:
        vals = spec.values
        hi, lo = _unique_arg(vals, "max"), _unique_arg(vals, "min")
        if hi is not None:
            out.append(QA("bar_max", f"Which {noun} has the highest value?", cats[hi]))
            out.append(_multiple_choice(rng, "bar_max", f"Which {noun} has the highest value?",
                                        cats[hi], cats, {}))
        if lo is not None:
            out.append(QA("bar_min", f"Which {noun} has the lowest value?", cats[lo]))
        c = rng.randrange(len(cats))
        out.append(QA("bar_value", f"What is the value for {cats[c]}?", format_value(vals[c]),
                      {"category": cats[c]}))
        a, b = rng.sample(range(len(cats)), 2)
        out.append(QA("bar_diff", f"What is the difference between the values of {cats[a]} and "
                      f"{cats[b]}?", format_value(abs(vals[a] - vals[b])),
                      {"a": cats[a], "b": cats[b]}))
        out.append(QA("bar_compare", f"Is the value of {cats[a]} greater than the value of "
                      f"{cats[b]}?", "Yes" if vals[a] > vals[b] else "No",
                      {"a": cats[a], "b": cats[b]}))
        out.append(QA("bar_count", "How many bars are there in the chart?", str(len(cats))))
        out.append(QA("bar_sum", "What is the sum of all the values shown?",
                      format_value(sum(vals))))
        return out
    names = list(spec.series_names)
    c = rng.randrange(len(cats))
    col = [s.values[c] for s in spec.series]
    top = _unique_arg(col, "max")
    if top is not None:
        out.append(QA("group_top_series", f"In {cats[c]}, which series has the highest value?",
                      names[top], {"category": cats[c]}))
    j = rng.randrange(len(names))
    out.append(QA("group_value", f"What is the value of {names[j]} for {cats[c]}?",
                  format_value(spec.series[j].values[c]), {"series": names[j], "category": cats[c]}))
    best = _unique_arg(spec.series[j].values, "max")
    if best is not None:
        q = f"For {names[j]}, which {noun} has the highest value?"
        out.append(QA("group_top_category", q, cats[best], {"series": names[j]}))
        out.append(_multiple_choice(rng, "group_top_category", q, cats[best], cats,
                                    {"series": names[j]}))
    out.append(QA("group_series_count", "How many data series does the legend show?", str(len(names))))
    if spec.subtype == "stacked":
        out.append(QA("stack_total", f"What is the total value of the stacked bar for {cats[c]}?",
                      format_value(sum(col)), {"category": cats[c]}))
        totals = [sum(s.values[i] for s in spec.series) for i in range(len(cats))]
        tall = _unique_arg(totals, "max")
        if tall is not None:
            out.append(QA("stack_tallest", f"Which {noun} has the largest total?", cats[tall]))
    return out


def _line_questions(spec: ChartSpec, rng: random.Random) -> list[QA | None]:
    xs, axis = list(spec.categories), _noun(spec.xlabel)
    out: list[QA | None] = []
    i = rng.randrange(len(xs))
    a, b = sorted(rng.sample(range(len(xs)), 2))
    if len(spec.series) == 1:
        vals = spec.values
        out.append(QA("line_value", f"What was the value in {xs[i]}?", format_value(vals[i]),
                      {"x": xs[i]}))
        hi = _unique_arg(vals, "max")
        if hi is not None:
            q = f"In which {axis} was the value highest?"
            out.append(QA("line_peak", q, xs[hi]))
            out.append(_multiple_choice(rng, "line_peak", q, xs[hi], xs, {}))
        lo = _unique_arg(vals, "min")
        if lo is not None:
            out.append(QA("line_low", f"In which {axis} was the value lowest?", xs[lo]))
        if vals[a] != vals[b]:
            out.append(QA("line_trend", f"Did the value increase or decrease from {xs[a]} to {xs[b]}?",
                          "Increase" if vals[b] > vals[a] else "Decrease", {"from": xs[a], "to": xs[b]}))
        out.append(QA("line_change", f"What is the difference between the values in {xs[a]} and "
                      f"{xs[b]}?", format_value(abs(vals[b] - vals[a])), {"from": xs[a], "to": xs[b]}))
        out.append(QA("line_count", "How many data points does the line have?", str(len(xs))))
        return out
    names = list(spec.series_names)
    j = rng.randrange(len(names))
    out.append(QA("multi_value", f"What was the value of {names[j]} in {xs[i]}?",
                  format_value(spec.series[j].values[i]), {"series": names[j], "x": xs[i]}))
    col = [s.values[i] for s in spec.series]
    top = _unique_arg(col, "max")
    if top is not None:
        q = f"Which series had the highest value in {xs[i]}?"
        out.append(QA("multi_top_series", q, names[top], {"x": xs[i]}))
    peak = _unique_arg(spec.series[j].values, "max")
    if peak is not None:
        q = f"In which {axis} did {names[j]} reach its highest value?"
        out.append(QA("multi_peak", q, xs[peak], {"series": names[j]}))
        out.append(_multiple_choice(rng, "multi_peak", q, xs[peak], xs, {"series": names[j]}))
    out.append(QA("multi_count", "How many lines are shown in the chart?", str(len(names))))
    return out


def _pie_questions(spec: ChartSpec, rng: random.Random) -> list[QA | None]:
    cats, vals = list(spec.categories), spec.values
    out: list[QA | None] = [QA("pie_count", "How many slices does the pie have?", str(len(cats)))]
    hi, lo = _unique_arg(vals, "max"), _unique_arg(vals, "min")
    if hi is not None:
        out.append(QA("pie_largest", "Which slice is the largest?", cats[hi]))
        out.append(_multiple_choice(rng, "pie_largest", "Which slice is the largest?", cats[hi], cats, {}))
    if lo is not None:
        out.append(QA("pie_smallest", "Which slice is the smallest?", cats[lo]))
    c = rng.randrange(len(cats))
    out.append(QA("pie_share", f"What percentage of the whole does {cats[c]} account for?",
                  f"{format_value(vals[c])}%", {"category": cats[c]}))
    a, b = rng.sample(range(len(cats)), 2)
    out.append(QA("pie_pair", f"What is the combined share of {cats[a]} and {cats[b]}?",
                  f"{format_value(vals[a] + vals[b])}%", {"a": cats[a], "b": cats[b]}))
    return out


def pearson(points: list[tuple[float, float]]) -> float:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = mean(xs), mean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    return sxy / (sxx * syy) ** 0.5 if sxx > 0 and syy > 0 else 0.0


def _scatter_questions(spec: ChartSpec, rng: random.Random) -> list[QA | None]:
    pts = [p for g in spec.points for p in g]
    out: list[QA | None] = []
    r = pearson(pts)
    xn, yn = _noun(spec.xlabel), _noun(spec.ylabel)
    if abs(r) >= 0.4:
        right = "Positive" if r > 0 else "Negative"
        q = f"Is the relationship between {xn} and {yn} positive or negative?"
        out.append(QA("scatter_corr", q, right))
        out.append(_multiple_choice(
            rng, "scatter_corr", f"Which best describes the relationship between {xn} and {yn}?",
            f"{right} correlation",
            ["Positive correlation", "Negative correlation", "No correlation", "Not enough data"], {}))
    if len(spec.points) == 1:
        out.append(QA("scatter_count", "How many points are plotted?", str(len(pts))))
        return out
    names = list(spec.series_names)
    out.append(QA("scatter_groups", "How many groups are shown in the legend?", str(len(names))))
    means = [mean(p[1] for p in g) for g in spec.points]
    top = _unique_arg(means, "max")
    if top is not None:
        out.append(QA("scatter_group_mean", f"Which group has the highest average {yn}?", names[top]))
    j = rng.randrange(len(names))
    out.append(QA("scatter_group_count", f"How many points belong to {names[j]}?",
                  str(len(spec.points[j])), {"series": names[j]}))
    return out


def pick_questions(spec: ChartSpec, rng: random.Random, max_turns: int = 2) -> list[QA]:
    """One question (most records) or two of different kinds, multiple choice now and then."""
    qs = chart_questions(spec, rng)
    n = 1 if max_turns < 2 or rng.random() < 0.7 else 2
    chosen: list[QA] = []
    for q in rng.sample(qs, len(qs)):
        base = q.kind.removesuffix("_mc")
        if all(c.kind.removesuffix("_mc") != base for c in chosen):
            chosen.append(q)
        if len(chosen) == n:
            break
    return chosen


def conversations(qas: list[QA]) -> list[dict[str, str]]:
    """LLaVA turns: the first question carries the ``<image>`` token."""
    turns: list[dict[str, str]] = []
    for k, qa in enumerate(qas):
        turns.append({"from": "human", "value": ("<image>\n" if k == 0 else "") + qa.question})
        turns.append({"from": "gpt", "value": qa.answer})
    return turns
