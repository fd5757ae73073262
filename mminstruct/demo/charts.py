"""Synthetic charts, drawn deterministically with matplotlib.

A chart is first described by a ``ChartSpec`` — its type and subtype, the data it shows, and how it
looks (style sheet, palette, font, size) — made by ``make_spec(seed)`` from nothing but the seed.
``render_chart(spec)`` then draws exactly that data with matplotlib's Agg canvas (no pyplot, no global
backend switch), and ``chart_jpeg(spec)`` encodes it. The same seed gives the same spec and the same
bytes (on the same matplotlib version); the questions in ``questions.py`` and the captions used to train
the demo CLIP are computed from the spec, so they are right by construction.

Styles come in two disjoint sets, so that a model trained on one can be tested on charts that look
different: ``TRAIN_LOOKS`` and ``HELDOUT_LOOKS`` (style sheets and fonts); ``ALL_LOOKS`` is both.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mminstruct.cache import content_key
from mminstruct.errors import ConfigError, choices_message
from mminstruct.demo import topics

if TYPE_CHECKING:
    from PIL import Image

CHART_TYPES: tuple[str, ...] = ("bar", "line", "pie", "scatter")
SUBTYPES: dict[str, tuple[str, ...]] = {
    "bar": ("vertical", "horizontal", "grouped", "stacked"),
    "line": ("single", "multi"),
    "pie": ("pie", "donut"),
    "scatter": ("single", "groups"),
}
#: How often each chart type is drawn in the demo workspace (bars and lines dominate, as in ChartQA).
TYPE_WEIGHTS: dict[str, float] = {"bar": 0.35, "line": 0.3, "pie": 0.15, "scatter": 0.2}


@dataclass(frozen=True)
class Looks:
    """Which style sheets and fonts a family of charts is drawn with."""

    name: str
    sheets: tuple[str, ...]
    fonts: tuple[str, ...]


TRAIN_LOOKS = Looks(
    "train",
    ("default", "ggplot", "bmh", "fivethirtyeight", "grayscale", "seaborn-v0_8-darkgrid",
     "seaborn-v0_8-whitegrid", "dark_background", "petroff10"),
    ("DejaVu Sans", "DejaVu Serif", "DejaVu Sans Mono"),
)
HELDOUT_LOOKS = Looks(
    "heldout",
    ("classic", "Solarize_Light2", "seaborn-v0_8-ticks", "tableau-colorblind10"),
    ("STIXGeneral",),
)
ALL_LOOKS = Looks("all", TRAIN_LOOKS.sheets + HELDOUT_LOOKS.sheets, TRAIN_LOOKS.fonts + HELDOUT_LOOKS.fonts)
LOOKS: dict[str, Looks] = {lk.name: lk for lk in (TRAIN_LOOKS, HELDOUT_LOOKS, ALL_LOOKS)}

#: Palettes as hex lists (None: the style sheet's own colour cycle).
PALETTES: dict[str, tuple[str, ...] | None] = {
    "sheet": None,
    "tab10": ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"),
    "set2": ("#66c2a5", "#fc8d62", "#8da0cb", "#e78ac3", "#a6d854", "#ffd92f", "#e5c494", "#b3b3b3"),
    "dark": ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666"),
    "pastel": ("#fbb4ae", "#b3cde3", "#ccebc5", "#decbe4", "#fed9a6", "#ffffcc", "#e5d8bd", "#fddaec"),
    "blues": ("#08306b", "#08519c", "#2171b5", "#4292c6", "#6baed6", "#9ecae1", "#c6dbef", "#deebf7"),
    "warm": ("#7f0000", "#b30000", "#d7301f", "#ef6548", "#fc8d59", "#fdbb84", "#fdd49e", "#fee8c8"),
}
SEQUENTIAL = frozenset({"blues", "warm"})
#: (width, height) in pixels; the long side stays within 320–480 so workspaces build fast.
SIZES: tuple[tuple[int, int], ...] = (
    (480, 360), (448, 336), (400, 300), (480, 320), (480, 270), (432, 288), (360, 360), (400, 400),
    (320, 320), (360, 480), (336, 448), (320, 400),
)


@dataclass(frozen=True)
class Series:
    name: str
    values: tuple[float, ...]


@dataclass(frozen=True)
class ChartSpec:
    """Everything a chart shows and how it looks. ``categories`` are the x labels (bar/line) or the
    slice labels (pie); scatter charts keep their points in ``points`` (one list per series)."""

    seed: int
    kind: str
    subtype: str
    title: str
    xlabel: str
    ylabel: str
    unit: str
    categories: tuple[str, ...]
    series: tuple[Series, ...]
    points: tuple[tuple[tuple[float, float], ...], ...] = ()
    sheet: str = "default"
    font: str = "DejaVu Sans"
    font_size: float = 10.0
    width: int = 400
    height: int = 300
    palette: str = "sheet"
    options: dict[str, object] = field(default_factory=dict, hash=False)

    @property
    def values(self) -> tuple[float, ...]:
        """The first series' values (the only series of single-series charts)."""
        return self.series[0].values

    @property
    def series_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.series)


def chart_seed(seed: int, purpose: str, index: int) -> int:
    """The seed of chart ``index`` of a set (``purpose``: reference, candidate, train, heldout…), so
    that different sets never share charts."""
    return int(content_key("demo-chart", int(seed), purpose, int(index))[:15], 16)


def get_looks(name: str) -> Looks:
    if name not in LOOKS:
        raise ConfigError(choices_message("chart looks", name, LOOKS))
    return LOOKS[name]


def pick_kind(rng: random.Random, weights: dict[str, float] | None = None) -> str:
    w = weights or TYPE_WEIGHTS
    return rng.choices(list(w), weights=list(w.values()))[0]


# ----------------------------------------------------------------------------------------------
# Specs


def make_spec(seed: int, kind: str | None = None, looks: str = "all", subtype: str | None = None,
              weights: dict[str, float] | None = None) -> ChartSpec:
    """A random chart described completely by ``seed`` (and the optional fixed kind/subtype)."""
    rng = random.Random(seed)
    kind = kind or pick_kind(rng, weights)
    if kind not in SUBTYPES:
        raise ConfigError(choices_message("chart type", kind, CHART_TYPES))
    subtype = subtype or rng.choice(SUBTYPES[kind])
    if subtype not in SUBTYPES[kind]:
        raise ConfigError(choices_message(f"{kind} subtype", subtype, SUBTYPES[kind]))
    lk = get_looks(looks)
    width, height = rng.choice(SIZES)
    look = dict(sheet=rng.choice(lk.sheets), font=rng.choice(lk.fonts),
                font_size=round(rng.uniform(7.5, 11.5) * (min(width, height) / 360) ** 0.5, 1),
                width=width, height=height, palette=rng.choice(list(PALETTES)))
    maker = {"bar": _bar_spec, "line": _line_spec, "pie": _pie_spec, "scatter": _scatter_spec}[kind]
    return maker(rng, seed, subtype, look)


def _distinct_values(rng: random.Random, n: int, lo: int, hi: int, step: int) -> list[int]:
    """``n`` different multiples of ``step`` in [lo, hi] (so maxima and minima are unique)."""
    pool = list(range(-(-lo // step) * step, hi + 1, step))
    return rng.sample(pool, n) if len(pool) >= n else [lo + i * step for i in range(n)]


def _bar_spec(rng: random.Random, seed: int, subtype: str, look: dict) -> ChartSpec:
    t = rng.choice(topics.CATEGORY_TOPICS)
    n_series = 1 if subtype in ("vertical", "horizontal") else rng.choice((2, 2, 3))
    n = rng.randint(3, 7 if n_series == 1 else 5)
    cats = tuple(rng.sample(t.categories, n))
    lo, hi, step = t.scale
    series = []
    names = rng.choice(topics.SERIES_NAMES)
    for k in range(n_series):
        name = names[k] if n_series > 1 else t.ylabel
        series.append(Series(name, tuple(float(v) for v in _distinct_values(rng, n, lo, hi, step))))
    options = {
        "value_labels": rng.random() < 0.35,
        "horizontal": subtype == "horizontal" or (subtype == "stacked" and rng.random() < 0.4),
        "edge": rng.random() < 0.3,
        "bar_width": rng.uniform(0.5, 0.85),
        "grid": rng.random() < 0.5,
        "legend_loc": rng.choice(("best", "upper right", "upper left", "lower right")),
        "multicolor": n_series == 1 and rng.random() < 0.3,
        "rotate": rng.choice((0, 0, 30, 45)),
    }
    return ChartSpec(seed, "bar", subtype, t.title, t.xlabel, t.ylabel, t.unit, cats, tuple(series),
                     options=options, **look)


def _line_spec(rng: random.Random, seed: int, subtype: str, look: dict) -> ChartSpec:
    t = rng.choice(topics.TREND_TOPICS)
    if t.axis == "year":
        n = rng.randint(6, 12)
        start = rng.randint(2000, 2024 - n)
        cats = tuple(str(y) for y in range(start, start + n))
    else:
        n = rng.randint(6, 12)
        first = rng.randint(0, 12 - n)
        cats = tuple(topics.MONTHS[first:first + n])
    n_series = 1 if subtype == "single" else rng.choice((2, 2, 3))
    names = rng.choice(topics.SERIES_NAMES)
    lo, hi, step = t.scale
    series = []
    for k in range(n_series):
        level = rng.uniform(lo + (hi - lo) * 0.2, hi - (hi - lo) * 0.2)
        slope = rng.uniform(-1, 1) * (hi - lo) / (1.5 * n)
        vals, v = [], level - slope * n / 2
        for _ in range(n):
            v += slope + rng.gauss(0, (hi - lo) * 0.06)
            vals.append(float(round(min(max(v, lo), hi) / step) * step))
        series.append(Series(names[k] if n_series > 1 else t.ylabel, tuple(vals)))
    options = {
        "markers": rng.random() < 0.55,
        "marker": rng.choice(("o", "s", "^", "D")),
        "linewidth": rng.uniform(1.2, 2.8),
        "linestyles": rng.random() < 0.25,
        "fill": n_series == 1 and rng.random() < 0.15,
        "grid": rng.random() < 0.6,
        "legend_loc": rng.choice(("best", "upper left", "lower right", "upper right")),
        "rotate": rng.choice((0, 0, 45)) if len(cats) > 8 else 0,
    }
    return ChartSpec(seed, "line", subtype, t.title, t.xlabel, t.ylabel, t.unit, cats, tuple(series),
                     options=options, **look)


def _pie_spec(rng: random.Random, seed: int, subtype: str, look: dict) -> ChartSpec:
    t = rng.choice(topics.SHARE_TOPICS)
    n = rng.randint(3, 7)
    cats = tuple(rng.sample(t.categories, n))
    # Integer percentages summing to 100, all different (so "largest slice" has one answer).
    while True:
        cuts = sorted(rng.sample(range(3, 98), n - 1))
        parts = [b - a for a, b in zip([0] + cuts, cuts + [100])]
        if min(parts) >= 3 and len(set(parts)) == n:
            break
    options = {
        "labels": rng.choice(("labels", "labels", "legend")),
        "autopct": rng.random() < 0.6,
        "startangle": rng.choice((0, 45, 90, 140)),
        "explode": rng.random() < 0.25,
        "counterclock": rng.random() < 0.5,
        "shadow": False,
        "edge": rng.random() < 0.5,
    }
    return ChartSpec(seed, "pie", subtype, t.title, "", "", "%", cats,
                     (Series(t.ylabel, tuple(float(p) for p in parts)),), options=options, **look)


def _scatter_spec(rng: random.Random, seed: int, subtype: str, look: dict) -> ChartSpec:
    t = rng.choice(topics.RELATION_TOPICS)
    n_groups = 1 if subtype == "single" else rng.choice((2, 2, 3))
    names = rng.choice(topics.GROUP_NAMES)
    (xlo, xhi), (ylo, yhi) = t.xrange, t.yrange
    sign = t.sign if t.sign else rng.choice((1, -1))
    # mostly clear trends, sometimes a loose cloud (where no correlation question is asked)
    strength = rng.uniform(0.55, 0.95) if rng.random() < 0.75 else rng.uniform(0.0, 0.5)
    groups, series = [], []
    for g in range(n_groups):
        n = rng.randint(10, 50)
        shift = (g - (n_groups - 1) / 2) * 0.18
        pts = []
        for _ in range(n):
            u = min(max(rng.gauss(0.5 + shift, 0.2), 0.0), 1.0)
            v = 0.5 + sign * strength * (u - 0.5) + rng.gauss(0, 0.12 * (1.2 - strength))
            v = min(max(v, 0.0), 1.0)
            pts.append((round(xlo + u * (xhi - xlo), 1), round(ylo + v * (yhi - ylo), 1)))
        groups.append(tuple(pts))
        series.append(Series(names[g] if n_groups > 1 else t.ylabel, tuple(p[1] for p in pts)))
    options = {
        "marker": rng.choice(("o", "o", "s", "^", "D", "x")),
        "size": rng.uniform(12, 60),
        "alpha": rng.uniform(0.55, 1.0),
        "grid": rng.random() < 0.6,
        "legend_loc": rng.choice(("best", "upper left", "lower right")),
    }
    return ChartSpec(seed, "scatter", subtype, t.title, t.xlabel, t.ylabel, "", (), tuple(series),
                     points=tuple(groups), options=options, **look)


# ----------------------------------------------------------------------------------------------
# Drawing


def _colors(spec: ChartSpec, n: int, default_cycle: list[str]) -> list[str]:
    pal = PALETTES.get(spec.palette) or tuple(default_cycle) or PALETTES["tab10"]
    if spec.palette in SEQUENTIAL and 1 < n <= 4:  # shades far apart, so series stay distinct
        step = (len(pal) - 1) // (n - 1) if n > 1 else 1
        return [pal[i * min(step, 3)] for i in range(n)]
    return [pal[i % len(pal)] for i in range(n)]


def render_chart(spec: ChartSpec) -> Image.Image:
    """Draw ``spec`` on an Agg canvas of exactly ``width × height`` pixels; an RGB PIL image."""
    import warnings

    import matplotlib
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    dpi = 100
    rc = {"font.family": spec.font, "font.size": spec.font_size, "axes.titlesize": spec.font_size * 1.2,
          "axes.unicode_minus": False, "svg.hashsalt": "mminstruct"}
    with matplotlib.style.context(spec.sheet), matplotlib.rc_context(rc), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tight_layout / glyph warnings on tiny canvases
        cycle = [c["color"] for c in matplotlib.rcParams["axes.prop_cycle"]]
        fig = Figure(figsize=(spec.width / dpi, spec.height / dpi), dpi=dpi)
        canvas = FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        {"bar": _draw_bar, "line": _draw_line, "pie": _draw_pie, "scatter": _draw_scatter}[spec.kind](
            ax, spec, cycle)
        ax.set_title(spec.title)
        fig.subplots_adjust(**_margins(spec))
        canvas.draw()
        w, h = canvas.get_width_height()
        img = Image.frombuffer("RGBA", (w, h), bytes(canvas.buffer_rgba()), "raw", "RGBA", 0, 1)
    return img.convert("RGB")


def _margins(spec: ChartSpec) -> dict[str, float]:
    """Subplot margins from the text sizes (what tight_layout measures, estimated: 3× faster)."""
    w, h = spec.width, spec.height
    px = spec.font_size * 100 / 72  # font size in pixels at 100 dpi
    char = 0.62 * px
    top = h - px * 2.1 - 6
    if spec.kind == "pie":
        right = w - 8 - (char * max(map(len, spec.categories)) + 30 if spec.options["labels"] == "legend"
                         else 0)
        return {"left": 8 / w, "right": max(right, w * 0.55) / w, "bottom": 8 / h, "top": top / h}
    o = spec.options
    horizontal = bool(o.get("horizontal"))
    cats = spec.categories
    numbers = [abs(v) for s in spec.series for v in s.values]
    if spec.kind == "bar" and spec.subtype == "stacked":
        numbers.append(sum(max(s.values) for s in spec.series))
    widest_number = len(f"{max(numbers):.1f}") if numbers else 4
    if horizontal:
        left_text, bottom_text = max(map(len, cats)), 0
    else:
        left_text = widest_number
        bottom_text = max(map(len, cats)) if cats else 0
    rot = float(o.get("rotate", 0) or 0)
    tick_h = px * 1.25 + (char * bottom_text * math.sin(math.radians(rot)) if rot else 0)
    left = char * left_text + px * 1.5 + 14
    bottom = tick_h + px * 1.5 + 12
    right = w - 12 - (char * 1.5 if not horizontal and spec.kind != "scatter" else char * 2)
    return {"left": min(left / w, 0.45), "right": right / w, "bottom": min(bottom / h, 0.45),
            "top": top / h}


def chart_jpeg(spec: ChartSpec, quality: int = 88) -> bytes:
    buf = io.BytesIO()
    render_chart(spec).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _legend(ax, spec: ChartSpec) -> None:
    ax.legend(loc=spec.options.get("legend_loc", "best"), fontsize=spec.font_size * 0.85,
              framealpha=0.8)


def _draw_bar(ax, spec: ChartSpec, cycle: list[str]) -> None:
    o = spec.options
    n, k = len(spec.categories), len(spec.series)
    colors = _colors(spec, max(k, n), cycle)
    horizontal = bool(o["horizontal"])
    width = float(o["bar_width"])
    pos = list(range(n))
    edge = {"edgecolor": "black", "linewidth": 0.6} if o["edge"] else {}
    bottoms = [0.0] * n
    for j, s in enumerate(spec.series):
        if spec.subtype == "grouped":
            w = width / k
            p = [x - width / 2 + w * (j + 0.5) for x in pos]
            base = None
        else:
            w, p = width, pos
            base = list(bottoms) if spec.subtype == "stacked" else None
        color = colors if (k == 1 and o["multicolor"]) else colors[j]
        label = s.name if k > 1 else None
        if horizontal:
            bars = ax.barh(p, s.values, height=w, left=base, color=color, label=label, **edge)
        else:
            bars = ax.bar(p, s.values, width=w, bottom=base, color=color, label=label, **edge)
        if o["value_labels"] and spec.subtype != "stacked":
            ax.bar_label(bars, labels=[_fmt(v) for v in s.values], fontsize=spec.font_size * 0.8,
                         padding=2)
        bottoms = [b + v for b, v in zip(bottoms, s.values)]
    if horizontal:
        ax.set_yticks(pos, spec.categories)
        ax.invert_yaxis()
        ax.set_xlabel(spec.ylabel)
        ax.set_ylabel(spec.xlabel)
    else:
        ax.set_xticks(pos, spec.categories, rotation=o["rotate"],
                      ha="right" if o["rotate"] else "center")
        ax.set_xlabel(spec.xlabel)
        ax.set_ylabel(spec.ylabel)
    ax.grid(bool(o["grid"]), axis="x" if horizontal else "y", alpha=0.4)
    ax.set_axisbelow(True)
    if k > 1:
        _legend(ax, spec)


def _draw_line(ax, spec: ChartSpec, cycle: list[str]) -> None:
    o = spec.options
    x = list(range(len(spec.categories)))
    colors = _colors(spec, len(spec.series), cycle)
    styles = ("-", "--", ":", "-.")
    for j, s in enumerate(spec.series):
        ax.plot(x, s.values, color=colors[j], linewidth=o["linewidth"],
                linestyle=styles[j % 4] if o["linestyles"] else "-",
                marker=o["marker"] if o["markers"] else None, markersize=4.5,
                label=s.name if len(spec.series) > 1 else None)
        if o["fill"]:
            ax.fill_between(x, s.values, min(s.values), color=colors[j], alpha=0.2)
    step = max(1, math.ceil(len(x) / 8))
    ax.set_xticks(x[::step], spec.categories[::step], rotation=o["rotate"])
    ax.set_xlabel(spec.xlabel)
    ax.set_ylabel(spec.ylabel)
    ax.grid(bool(o["grid"]), alpha=0.4)
    if len(spec.series) > 1:
        _legend(ax, spec)


def _draw_pie(ax, spec: ChartSpec, cycle: list[str]) -> None:
    o = spec.options
    vals = spec.values
    colors = _colors(spec, len(vals), cycle)
    explode = None
    if o["explode"]:
        big = vals.index(max(vals))
        explode = [0.1 if i == big else 0.0 for i in range(len(vals))]
    wedgeprops: dict[str, object] = {}
    if spec.subtype == "donut":
        wedgeprops["width"] = 0.45
    if o["edge"]:
        wedgeprops.update(edgecolor="white", linewidth=1.2)
    with_labels = o["labels"] == "labels"
    ax.pie(vals, labels=list(spec.categories) if with_labels else None, colors=colors,
           autopct="%1.0f%%" if o["autopct"] else None, startangle=o["startangle"],
           counterclock=bool(o["counterclock"]), explode=explode, wedgeprops=wedgeprops,
           pctdistance=0.78 if spec.subtype == "donut" else 0.6,
           textprops={"fontsize": spec.font_size * 0.85})
    if not with_labels:
        ax.legend(list(spec.categories), loc="center left", bbox_to_anchor=(0.92, 0.5),
                  fontsize=spec.font_size * 0.8, frameon=False)
    ax.set_aspect("equal")


def _draw_scatter(ax, spec: ChartSpec, cycle: list[str]) -> None:
    o = spec.options
    colors = _colors(spec, len(spec.points), cycle)
    for j, pts in enumerate(spec.points):
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=o["size"], alpha=o["alpha"],
                   marker=o["marker"], color=colors[j],
                   label=spec.series[j].name if len(spec.points) > 1 else None)
    ax.set_xlabel(spec.xlabel)
    ax.set_ylabel(spec.ylabel)
    ax.grid(bool(o["grid"]), alpha=0.4)
    if len(spec.points) > 1:
        _legend(ax, spec)


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


format_value = _fmt
