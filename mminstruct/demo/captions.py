"""Caption text for training the demo CLIP, computed from a chart's spec.

Captions vary a lot on purpose: the plain keywords a user types ("bar chart", "scatter plot"), the
prompt templates zero-shot code wraps them in ("a photo of a {}."), synonyms ("bar graph",
"scatterplot", "donut chart"), and details a tiny model can learn to see (orientation, number of
slices, lines or groups, stacked or grouped bars) and the chart's subject ("of sales by region").
"""

from __future__ import annotations

import random

from mminstruct.demo.charts import ChartSpec

#: The keyword each chart type must answer to, zero-shot.
TYPE_KEYWORDS: dict[str, str] = {"bar": "bar chart", "line": "line chart", "pie": "pie chart",
                                 "scatter": "scatter plot"}
SYNONYMS: dict[str, tuple[str, ...]] = {
    "bar": ("bar chart", "bar chart", "bar chart", "bar graph", "bar plot"),
    "line": ("line chart", "line chart", "line chart", "line graph", "line plot"),
    "pie": ("pie chart", "pie chart", "pie chart", "pie graph"),
    "scatter": ("scatter plot", "scatter plot", "scatter plot", "scatterplot", "scatter chart",
                "scatter graph"),
}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve")

#: Short prompt templates in the style of zero-shot classification prompts.
PROMPT_TEMPLATES: tuple[str, ...] = (
    "{}", "{}", "a {}", "a {}.", "a photo of a {}.", "a photo of the {}.", "an image of a {}.",
    "a picture of a {}.", "a rendering of a {}.", "a screenshot of a {}.", "a drawing of a {}.",
    "a bad photo of a {}.", "a low resolution photo of a {}.", "a close-up photo of a {}.",
    "a photo of a small {}.", "a photo of a large {}.", "a cropped photo of a {}.", "itap of a {}.",
    "a bright photo of a {}.", "a blurry photo of a {}.", "a good photo of a {}.", "art of the {}.",
    "a {} from a report.", "a {} in a slide.", "this is a {}.", "a chart: {}.", "an example of a {}.",
    "a diagram showing a {}.", "a diagram of a {}.", "a clean {}.", "a simple {}.",
)


def _count(n: int, rng: random.Random) -> str:
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) and rng.random() < 0.6 else str(n)


def _subtype_names(spec: ChartSpec, rng: random.Random) -> list[str]:
    base = rng.choice(SYNONYMS[spec.kind])
    k = len(spec.series)
    if spec.kind == "bar":
        horiz = bool(spec.options.get("horizontal"))
        orient = "horizontal" if horiz else "vertical"
        by_sub = {
            "vertical": ["vertical bar chart", "column chart", "bar chart with vertical bars"],
            "horizontal": ["horizontal bar chart", "horizontal bar graph", "bar chart with horizontal bars"],
            "grouped": ["grouped bar chart", "clustered bar chart", f"grouped {orient} bar chart"],
            "stacked": ["stacked bar chart", f"stacked {orient} bar chart", "stacked bar graph"],
        }
        return by_sub[spec.subtype] + [base]
    if spec.kind == "line":
        if k > 1:
            return [f"line chart with {_count(k, rng)} lines", "multi-line chart", "line graph", base]
        return ["line chart", "line graph with one line", "time series line chart", base]
    if spec.kind == "pie":
        if spec.subtype == "donut":
            return ["donut pie chart", "pie chart with a hole in the middle", "ring pie chart",
                    "donut chart", base]
        return ["pie chart", "round pie chart", "circular pie chart", base]
    if k > 1:
        return [f"scatter plot with {_count(k, rng)} groups", "scatter plot with colored groups", base]
    return ["scatter plot with dots", "scatter plot", base]


def _details(spec: ChartSpec, rng: random.Random) -> list[str]:
    n, k = len(spec.categories), len(spec.series)
    if spec.kind == "bar":
        if spec.subtype in ("vertical", "horizontal"):
            return [f"with {_count(n, rng)} bars", f"with {_count(n, rng)} categories"]
        return [f"with {_count(k, rng)} series", f"comparing {_count(k, rng)} series",
                f"with {_count(n, rng)} categories"]
    if spec.kind == "line":
        what = "years" if spec.xlabel == "Year" else "months"
        return [f"over {_count(n, rng)} {what}", f"with {_count(n, rng)} points per line",
                f"with {_count(k, rng)} line{'s' if k > 1 else ''}"]
    if spec.kind == "pie":
        return [f"with {_count(n, rng)} slices", f"divided into {_count(n, rng)} slices",
                f"with {_count(n, rng)} wedges"]
    pts = sum(len(g) for g in spec.points)
    return [f"with {pts} points", f"with {_count(k, rng)} group{'s' if k > 1 else ''} of dots",
            "drawn with dots"]


def make_caption(spec: ChartSpec, rng: random.Random, keyword_share: float = 0.35) -> str:
    """One caption for ``spec``; call again with the same rng for another. ``keyword_share`` of
    them are a type keyword (or synonym) in a prompt template."""
    names = _subtype_names(spec, rng)
    if rng.random() < keyword_share:  # a bare keyword in a prompt template: the zero-shot case
        name = TYPE_KEYWORDS[spec.kind] if rng.random() < 0.6 else rng.choice(names)
        return rng.choice(PROMPT_TEMPLATES).format(name)
    name = rng.choice(names)
    subject = _subject(spec)
    parts = [f"a {name}"]
    if rng.random() < 0.6:
        parts.append(rng.choice(_details(spec, rng)))
    if rng.random() < 0.25:  # titles are barely legible to a tiny model: seldom
        parts.append(rng.choice((f"of {subject}", f"showing {subject}", f"about {subject}")))
    text = " ".join(parts)
    if rng.random() < 0.05:
        text = f"{spec.title}: {text}"
    return text + ("." if rng.random() < 0.5 else "")


def _subject(spec: ChartSpec) -> str:
    return spec.title.lower().replace(" vs ", " versus ")
