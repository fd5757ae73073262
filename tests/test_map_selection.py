"""A box or lasso on the map selects every row inside it, drawn or not: the server-side selection
(``projection.rows_in_box`` / ``rows_in_lasso`` / ``rows_in_selection``) against an independent
numpy count, and the chart's event → rows (``ui.charts.picked_rows``, ``clicked_rows``)."""

from __future__ import annotations

import numpy as np
import pytest

from mminstruct.errors import InputError
from mminstruct.app.projection import rows_in_box, rows_in_lasso, rows_in_selection


@pytest.fixture(scope="module")
def xy() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.normal(size=(200_000, 2)).astype(np.float32)


def _in_polygon(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd ray casting, written here independently of matplotlib."""
    x, y = points[:, 0].astype(np.float64), points[:, 1].astype(np.float64)
    inside = np.zeros(len(points), bool)
    n = len(poly)
    for i in range(n):
        (x1, y1), (x2, y2) = poly[i], poly[(i + 1) % n]
        crosses = (y1 > y) != (y2 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xcross = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (x < xcross)
    return inside


def test_a_box_selects_every_row_inside_it(xy) -> None:
    box = {"x": [0.5, -0.25], "y": [-1.0, 0.75], "xref": "x", "yref": "y"}  # corners any order
    want = np.flatnonzero((xy[:, 0] >= -0.25) & (xy[:, 0] <= 0.5) & (xy[:, 1] >= -1.0)
                          & (xy[:, 1] <= 0.75))
    got = rows_in_box(xy, box)
    assert len(want) > 20_000  # far more than 20,000 of 200,000 drawn would have held
    assert np.array_equal(got, want) and got.dtype == np.int64


def test_a_lasso_selects_every_row_inside_it(xy) -> None:
    # a concave polygon (an L), as plotly sends a lasso: open path, vertices in data coordinates
    poly = np.array([[-1.5, -1.5], [1.2, -1.5], [1.2, -0.4], [-0.3, -0.4], [-0.3, 1.4],
                     [-1.5, 1.4]])
    got = rows_in_lasso(xy, {"x": poly[:, 0].tolist(), "y": poly[:, 1].tolist()})
    want = np.flatnonzero(_in_polygon(xy, poly))
    assert len(want) > 50_000
    assert np.array_equal(got, want)


def test_several_shapes_are_one_union_sorted_and_distinct(xy) -> None:
    a = {"x": [-1, 0.2], "y": [-1, 0.2]}
    b = {"x": [0, 1], "y": [0, 1]}
    tri = {"x": [2, 3, 2], "y": [2, 2, 3]}
    got = rows_in_selection(xy, [a, b], [tri])
    want = np.union1d(np.union1d(rows_in_box(xy, a), rows_in_box(xy, b)),
                      np.flatnonzero(_in_polygon(xy, np.array([[2, 2], [3, 2], [2, 3]]))))
    assert np.array_equal(got, want)
    assert np.all(np.diff(got) > 0)
    assert len(rows_in_selection(xy)) == 0


def test_degenerate_and_bad_shapes() -> None:
    pts = np.array([[0, 0], [1, 1], [2, 2]], np.float32)
    assert len(rows_in_lasso(pts, {"x": [0, 1], "y": [0, 1]})) == 0  # two points enclose nothing
    assert rows_in_box(pts, ([1, 1], [1, 1])).tolist() == [1]  # edges included
    with pytest.raises(InputError, match="2 x but 1 y"):
        rows_in_box(pts, {"x": [0, 1], "y": [0]})
    with pytest.raises(InputError, match="not a finite number"):
        rows_in_lasso(pts, {"x": [0, 1, float("nan")], "y": [0, 1, 2]})
    with pytest.raises(InputError, match=r"\[N, 2\]"):
        rows_in_selection(np.zeros((3, 3)), [{"x": [0, 1], "y": [0, 1]}])


def test_the_chart_event_selects_over_every_row_and_a_click_maps_back() -> None:
    from ui.charts import map_figure, picked_rows

    rng = np.random.default_rng(3)
    n = 30_000
    xy = rng.normal(size=(n, 2)).astype(np.float32)
    groups = rng.integers(-2, 4, n)
    is_ref = np.arange(n) < 10_000
    names = {0: "a", 1: "b", 2: "c", 3: "d", -1: "unassigned", -2: "excluded"}
    drawn = map_figure(xy, groups, is_ref, names, None)
    fig = drawn.figure
    # every row drawn once in the subgroup traces
    sub = [np.asarray(r) for r in drawn.trace_rows if len(r)]
    assert np.array_equal(np.sort(np.concatenate(sub)), np.arange(n))
    for t, rows in zip(fig.data, drawn.trace_rows):
        if len(rows):
            assert np.allclose(np.asarray(t.x, np.float32), xy[rows, 0])
            assert np.allclose(np.asarray(t.y, np.float32), xy[rows, 1])
            assert t.customdata is None and t.text is None  # no per-point payload at this size
    # a box event whose points list names only a few drawn points: the server takes the shape
    box = {"x": [-0.5, 0.5], "y": [-0.5, 0.5]}
    event = {"selection": {"points": [{"curve_number": 0, "point_index": 0}], "box": [box],
                           "lasso": [], "point_indices": [0]}}
    want = np.flatnonzero((np.abs(xy[:, 0]) <= 0.5) & (np.abs(xy[:, 1]) <= 0.5))
    assert picked_rows(event, xy, drawn.trace_rows) == want.tolist()
    # a click: one point, no shape → its row through (curve number, point index)
    curve = next(i for i, r in enumerate(drawn.trace_rows) if len(r) > 3)
    click = {"selection": {"points": [{"curve_number": curve, "point_index": 3,
                                       "point_number": 3}], "box": [], "lasso": []}}
    assert picked_rows(click, xy, drawn.trace_rows) == [int(drawn.trace_rows[curve][3])]
    camel = {"selection": {"points": [{"curveNumber": curve, "pointIndex": 2}]}}
    assert picked_rows(camel, xy, drawn.trace_rows) == [int(drawn.trace_rows[curve][2])]
    assert picked_rows(None, xy, drawn.trace_rows) == []
    assert picked_rows({"selection": {"points": [{"curve_number": 999, "point_index": 0}]}},
                       xy, drawn.trace_rows) == []


def test_the_map_payload_is_typed_arrays_without_per_point_strings() -> None:
    import plotly.io as pio

    from ui.charts import HOVER_TEXT_MAX, map_figure

    n = HOVER_TEXT_MAX + 10_000
    xy = np.random.default_rng(0).normal(size=(n, 2)).astype(np.float32)
    drawn = map_figure(xy, np.zeros(n, np.int64), np.ones(n, bool), {0: "k"}, None)
    spec = pio.to_json(drawn.figure, validate=False)
    assert '"dtype":"f4"' in spec  # base64 float32, not a JSON list of numbers
    # 8 bytes of x/y a point, ~11-12 B in base64 (plotly escapes "/"); a JSON list is ~40 B
    assert len(spec) < 13 * n + 30_000


def test_a_big_map_draws_its_canvas_at_one_pixel_per_css_pixel() -> None:
    """Above ``GL_FULL_RES_MAX`` points plotly's WebGL canvas is drawn at one pixel per CSS pixel
    (its default, two, shades four times the pixels at every redraw); below it, plotly's
    default."""
    from ui.charts import GL_FULL_RES_MAX, map_figure

    def config(n: int) -> dict:
        xy = np.random.default_rng(0).normal(size=(n, 2)).astype(np.float32)
        return map_figure(xy, np.zeros(n, np.int64), np.ones(n, bool), {0: "k"}, None).config

    assert config(GL_FULL_RES_MAX + 1) == {"plotGlPixelRatio": 1}
    assert config(GL_FULL_RES_MAX) == {}


def test_a_big_map_draws_circles_only_and_tells_the_kinds_apart_by_size() -> None:
    """Above ``HOVER_TEXT_MAX`` points every point is a circle (plotly's WebGL scatter draws any
    other symbol from a texture, slower without a GPU), candidates smaller than references, the
    legend's markers too; at or below it, references are circles and candidates diamonds."""
    from ui.charts import HOVER_TEXT_MAX, map_figure

    def markers(n: int) -> dict[str, set[tuple[str, float]]]:
        xy = np.random.default_rng(0).normal(size=(n, 2)).astype(np.float32)
        is_ref = np.arange(n) < n // 2
        fig = map_figure(xy, np.arange(n) % 3, is_ref, {0: "a", 1: "b", 2: "c"}, None).figure
        out: dict[str, set[tuple[str, float]]] = {"reference": set(), "candidate": set(),
                                                  "legend": set()}
        for t in fig.data:
            kind = ("legend" if t.name in ("reference", "candidate")
                    else "reference" if "reference" in t.hovertemplate else "candidate")
            out[kind].add((t.marker.symbol, t.marker.size) if kind != "legend"
                          else (t.name, t.marker.symbol, t.marker.size))
        return out

    big = markers(HOVER_TEXT_MAX + 1)
    (ref_sym, ref_size), = big["reference"]
    (cand_sym, cand_size), = big["candidate"]
    assert ref_sym == cand_sym == "circle" and cand_size < ref_size
    legend = {name: (symbol, size) for name, symbol, size in big["legend"]}
    assert legend["reference"][0] == legend["candidate"][0] == "circle"
    assert legend["candidate"][1] < legend["reference"][1]
    small = markers(HOVER_TEXT_MAX)
    assert {s for s, _ in small["reference"]} == {"circle"}
    assert {s for s, _ in small["candidate"]} == {"diamond"}


def test_the_rings_script_hands_over_the_rows_coordinates_only() -> None:
    import json
    import re

    from ui.charts import SELECTED_DRAWN_MAX, rings_script

    xy = np.array([[0.5, -1.25], [2.0, 3.0], [7.0, 8.0]], np.float32)
    text = rings_script(xy, [2, 0, 2, 9, -1], "map")
    payload = json.loads(re.fullmatch(r"<script>window.__mmRings = (\{.*?\});.*</script>", text).group(1))
    assert payload["key"] == "map" and payload["r"] > 0
    assert (payload["x"], payload["y"]) == ([0.5, 7.0], [-1.25, 8.0])  # distinct, in range
    empty = json.loads(re.search(r"(\{.*?\});", rings_script(xy, [], "map")).group(1))
    assert empty["x"] == [] and empty["y"] == []  # wipes the rings drawn before
    assert "</" not in rings_script(xy, [1], "</script><b>")[8:-9]
    many = np.zeros((SELECTED_DRAWN_MAX + 5, 2), np.float32)
    big = json.loads(re.search(r"(\{.*?\});", rings_script(many, np.arange(len(many)), "map")).group(1))
    assert len(big["x"]) == SELECTED_DRAWN_MAX
