"""The embedding map: every point drawn in a plotly WebGL scatter (``Scattergl``), and a box or
lasso selection made on the server over every row.

* ``map_figure(xy, groups, is_reference, names, ...)`` → ``MapFigure``: one trace per subgroup and
  kind (``MARKERS``: reference images as circles, candidates as diamonds; above ``HOVER_TEXT_MAX``
  points, ``MARKERS_BIG``: both as circles, candidates the smaller), x/y as float32 arrays (plotly sends
  them to the browser as base64 typed arrays: 210,000 points are about 2.3 MB), no ``customdata``;
  ``trace_rows[curve]`` maps a point of trace ``curve`` back to its row; ``config`` (for
  ``st.plotly_chart``) draws the WebGL canvas at one pixel per CSS pixel above ``GL_FULL_RES_MAX``
  points. Per-point hover text
  (HTML-escaped: plotly renders a few tags in hover labels) only up to ``HOVER_TEXT_MAX`` points;
  above that the hover names the subgroup and kind, and the gallery shows the image.
* ``picked_rows(event, xy, trace_rows)``: the rows a ``st.plotly_chart(on_select=…)`` event
  selected. A box or lasso is tested against every row of ``xy`` on the server
  (``projection.rows_in_selection``), so what is selected is what is inside the shape, whether
  the browser drew that point or not; a click (one point, no shape) maps back through
  ``trace_rows``.
* ``rings_script(xy, rows, key)``: the selection's rings (a click, a search, "more like these")
  are not part of the figure: a ``<script>`` (for ``st.html``) hands their coordinates to the
  page, and the map's script draws them on a 2-D canvas over the plot, again after every zoom,
  pan or redraw. A new selection thus leaves the figure as it was, and the browser redraws no
  WebGL point (``Plotly.react`` redraws every point once per new figure: 0.5–1 s at 210,000
  points without a GPU).
* ``CLICK_TO_SELECT_JS``: Streamlit's chart sets plotly's ``clickmode`` to ``"event"`` while the
  box or lasso tool is active, so a click there selects nothing; this script (run once per page
  with ``st.html(..., unsafe_allow_javascript=True)``) passes such a click on to the chart's own
  selection handler as a one-point selection. It also empties a box or lasso event's list of
  points before Streamlit serialises it (the server needs only the shape), and holds plotly's
  WebGL redraws while a box or lasso is dragged or moved (plotly redraws every point twice a
  mouse move to dim those outside the shape) and keeps plotly's redraw on release until the run
  the release asked for has ended and its page (the gallery) is painted, draws the
  rings ``rings_script`` handed over, and hands ``Plotly.react`` the arrays plotly already
  plotted when a figure comes again unchanged (Streamlit's chart does so each time it mounts
  one: plotly drew every point twice a page visit; ``bench/map_mount.py``).
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mminstruct.app.projection import rows_in_selection

PALETTE = ("#3b5bdb", "#e8590c", "#2f9e44", "#c2255c", "#7048e8", "#0c8599", "#f08c00",
           "#5c940d", "#862e9c", "#1864ab", "#d9480f", "#087f5b")
UNASSIGNED_COLOR = "#adb5bd"
EXCLUDED_COLOR = "#212529"
HOVER_TEXT_MAX = 20_000  # per-point hover text up to this many points (payload: ~150 B a point)
SELECTED_DRAWN_MAX = 50_000  # the selection's rings drawn at most (the selection itself is whole)
#: above this many points the WebGL canvas has one pixel per CSS pixel (plotly's default is two:
#: four times the pixels to shade at each redraw, 2-3x the time of a redraw without a GPU —
#: bench/map_drag.py); the markers are a few pixels wide, and the box, lasso and hover are exact
#: either way
GL_FULL_RES_MAX = 50_000
#: per kind: (plotly marker symbol, size in px)
MARKERS = {"reference": ("circle", 9), "candidate": ("diamond", 6)}
#: the same above ``HOVER_TEXT_MAX`` points. Circles only: plotly's WebGL scatter draws a circle
#: with a plain shader and any other symbol from a texture: a redraw of 210,000 points took 1.3x
#: as long with diamonds, without a GPU (``bench/map_symbols.py``); the kinds differ by size (at
#: 3-5 px a diamond is hardly told from a circle anyway)
MARKERS_BIG = {"reference": ("circle", 5), "candidate": ("circle", 3)}
LEGEND_SIZE = 8  # the legend's marker for each kind: its symbol at this size (below HOVER_TEXT_MAX)
LEGEND_SCALE_BIG = 1.8  # above it: the kind's own size times this (the sizes tell the kinds apart)


def hover_text(kind: str, path: str, question: str, group: str) -> str:
    q = html.escape(question[:90] + ("…" if len(question) > 90 else ""))
    lines = [f"<b>{html.escape(group)}</b> · {kind}", html.escape(path[-70:])]
    if q:
        lines.append(q)
    return "<br>".join(lines)


def _template_safe(text: str) -> str:
    """Text for a plotly hovertemplate: HTML-escaped, and no ``%{`` read as a variable."""
    return html.escape(text).replace("%{", "%\u200b{")


@dataclass
class MapFigure:
    figure: Any
    trace_rows: list[np.ndarray] = field(default_factory=list)  # per curve number: its rows
    config: dict[str, Any] = field(default_factory=dict)  # plotly's config: st.plotly_chart(config=)


def group_color(g: int) -> str:
    return PALETTE[g % len(PALETTE)] if g >= 0 else (UNASSIGNED_COLOR if g == -1 else EXCLUDED_COLOR)


def map_figure(xy: np.ndarray, groups: np.ndarray, is_reference: np.ndarray,
               names: Mapping[int, str], hover: Sequence[str] | None = None,
               height: int = 620,
               markers: Mapping[str, tuple[str, int]] | None = None) -> MapFigure:
    """Every row of ``xy`` ([N, 2]) drawn, coloured by ``groups`` (subgroup index, -1 unassigned,
    -2 excluded; ``names`` maps each to its name). ``hover``: per-row hover text (None: the
    subgroup and kind only). ``markers``: (symbol, size) per kind, instead of ``MARKERS`` or
    ``MARKERS_BIG`` (a benchmark compares them). The selection's rings are ``rings_script``'s."""
    # plotly's validators look pandas up in sys.modules: imported here first (under the import
    # lock), so a page run never sees the half-imported module another thread is loading
    import pandas  # noqa: F401, PLC0415
    import plotly.graph_objects as go  # noqa: PLC0415

    xy = np.asarray(xy, dtype=np.float32)
    groups = np.asarray(groups)
    is_reference = np.asarray(is_reference, dtype=bool)
    n = len(xy)
    hover_arr = np.asarray(hover, dtype=object) if hover is not None else None
    big = n > HOVER_TEXT_MAX
    kinds = dict(markers if markers is not None else (MARKERS_BIG if big else MARKERS))
    traces: list[dict[str, Any]] = []
    trace_rows: list[np.ndarray] = []
    present = np.unique(groups)
    order = [g for g in present.tolist() if g >= 0] + [g for g in (-1, -2) if g in present]
    for g in order:
        in_group = groups == g
        total = int(in_group.sum())
        name = names.get(int(g), "?")
        first = True
        for kind, ref in (("reference", True), ("candidate", False)):
            rows = np.flatnonzero(in_group & (is_reference == ref))
            if not len(rows):
                continue
            t: dict[str, Any] = dict(
                type="scattergl", x=xy[rows, 0], y=xy[rows, 1], mode="markers",
                name=f"{name} ({total:,})", legendgroup=f"g{g}", showlegend=first,
                marker=dict(color=group_color(int(g)), symbol=kinds[kind][0],
                            size=kinds[kind][1], opacity=0.75 if big else 0.85))
            if hover_arr is not None:
                t.update(text=hover_arr[rows], hovertemplate="%{text}<extra></extra>")
            else:
                t["hovertemplate"] = f"<b>{_template_safe(name)}</b> · {kind}<extra></extra>"
            traces.append(t)
            trace_rows.append(rows)
            first = False
    for label, (symbol, size) in kinds.items():
        size = round(size * LEGEND_SCALE_BIG) if big else LEGEND_SIZE
        traces.append(dict(type="scattergl", x=[None], y=[None], mode="markers", name=label,
                           marker=dict(color="#868e96", symbol=symbol, size=size),
                           hoverinfo="skip", showlegend=True))
        trace_rows.append(np.zeros(0, np.int64))
    # the legend under the plot: the toolbar (top right) never covers it
    layout = dict(height=height, dragmode="lasso", margin=dict(l=10, r=10, t=40, b=10),
                  legend=dict(orientation="h", yanchor="top", y=-0.02, x=0, xanchor="left"),
                  uirevision="map", hovermode="closest",
                  xaxis=dict(showticklabels=False, title=None, zeroline=False),
                  yaxis=dict(showticklabels=False, title=None, zeroline=False),
                  plot_bgcolor="#fafbfd")
    config = {"plotGlPixelRatio": 1} if n > GL_FULL_RES_MAX else {}
    return MapFigure(go.Figure(data=traces, layout=layout), trace_rows, config)


def ring_radius(n: int) -> float:
    """A ring's radius in CSS pixels on a map of ``n`` points (around its marker)."""
    return 3.5 if n > HOVER_TEXT_MAX else 5.5


def rings_script(xy: np.ndarray, rows: Sequence[int] | np.ndarray, key: str) -> str:
    """A ``<script>`` (for ``st.html(..., unsafe_allow_javascript=True)`` after the chart) that
    hands the page the rings of ``rows`` (distinct, in range, at most ``SELECTED_DRAWN_MAX``) for
    the map of widget key ``key``; ``CLICK_TO_SELECT_JS`` draws them. No rows: the rings drawn
    before are wiped. Only numbers and the key reach the page."""
    xy = np.asarray(xy)
    sel = np.asarray(rows, dtype=np.int64).reshape(-1)
    sel = np.unique(sel[(sel >= 0) & (sel < len(xy))])[:SELECTED_DRAWN_MAX]
    payload = {"key": str(key), "r": ring_radius(len(xy)),
               "x": np.round(xy[sel, 0].astype(np.float64), 6).tolist(),
               "y": np.round(xy[sel, 1].astype(np.float64), 6).tolist()}
    text = json.dumps(payload, separators=(",", ":")).replace("<", "\\u003c")
    return (f"<script>window.__mmRings = {text};"
            " if (window.__mmDrawRings) window.__mmDrawRings();</script>")


def _point_field(point: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if point.get(name) is not None:
            return point[name]
    return None


def clicked_rows(points: Sequence[Mapping[str, Any]], trace_rows: Sequence[np.ndarray]) -> list[int]:
    """Rows of the points a click (or any point list) names by (curve number, point index)."""
    out: set[int] = set()
    for pt in points:
        curve = _point_field(pt, "curve_number", "curveNumber")
        idx = _point_field(pt, "point_index", "pointIndex", "point_number", "pointNumber")
        try:
            curve, idx = int(curve), int(idx)
        except (TypeError, ValueError):
            continue
        if 0 <= curve < len(trace_rows) and 0 <= idx < len(trace_rows[curve]):
            out.add(int(trace_rows[curve][idx]))
    return sorted(out)


def selection_shapes(event: Any) -> tuple[list[Any], list[Any]]:
    """(boxes, lassos) of a ``st.plotly_chart`` selection event, in data coordinates."""
    sel = ((event or {}).get("selection") or {}) if event else {}
    return list(sel.get("box") or []), list(sel.get("lasso") or [])


def picked_rows(event: Any, xy: np.ndarray, trace_rows: Sequence[np.ndarray]) -> list[int]:
    """The rows (sorted, distinct) a selection event picked: every row of ``xy`` inside its box
    or lasso, or — a click, no shape — the clicked point's row."""
    boxes, lassos = selection_shapes(event)
    if boxes or lassos:
        return rows_in_selection(xy, boxes, lassos).tolist()
    sel = ((event or {}).get("selection") or {}) if event else {}
    return clicked_rows(sel.get("points") or [], trace_rows)


MAP_SOURCE = "map selection"  # a box or lasso drawn on the map (the chart shows it selected)
CLICK_SOURCE = "map click"  # a point clicked (the map rings it: plotly marks nothing)


def select_from_map(sel_state: dict, rows: list[int], source: str = MAP_SOURCE) -> None:
    """A box, lasso or click selection on the map replaces the selection: its rows, its source,
    and no similarity scores (those belong to a text query's selection)."""
    sel_state.update(rows=list(rows), source=source, scores={})


CLICK_TO_SELECT_JS = """
<script>
(function () {
  // A click on a point while the box or lasso tool is active: Streamlit's chart sets plotly's
  // clickmode to "event" then, so the click would select nothing. Pass it on to the chart's
  // selection handler as a one-point selection (no box, no lasso).
  if (window.__mmClickToSelect) return;
  window.__mmClickToSelect = true;
  // A box or lasso: the server tests its shape against every row, so the event goes on without
  // its list of points (tens of thousands of objects to serialise, send and parse otherwise).
  function dropPoints(ev) {
    var shaped = ev && ev.selections && ev.selections.some(function (s) {
      return s && (s.type === "rect" || s.type === "path"); });
    if (shaped && ev.points && ev.points.length) ev.points = [];
  }
  function hook() {
    document.querySelectorAll(".stPlotlyChart .js-plotly-plot").forEach(function (gd) {
      if (gd.__mmClick || typeof gd.on !== "function") return;
      gd.__mmClick = true;
      ["plotly_afterplot", "plotly_relayout", "plotly_relayouting"].forEach(function (e) {
        gd.on(e, drawRings); });  // the rings follow every redraw, zoom and pan
      if (gd._ev && typeof gd._ev.prependListener === "function") {
        gd._ev.prependListener("plotly_selected", dropPoints);
      }
      gd.on("plotly_click", function (ev) {
        var mode = gd._fullLayout && gd._fullLayout.dragmode;
        if ((mode !== "lasso" && mode !== "select") || !ev || !ev.points || !ev.points.length) return;
        var pt = ev.points[0];
        gd.emit("plotly_selected", {points: [{curveNumber: pt.curveNumber,
          pointNumber: pt.pointNumber, pointIndex: pt.pointIndex, x: pt.x, y: pt.y}],
          selections: []});
      });
      drawRings();
    });
  }
  // While a box or lasso is dragged, plotly dims the points outside it as the mouse moves: it
  // clears and redraws every WebGL point twice a mouse move (about a second a redraw at 210,000
  // points without a GPU: 19 s for a ten-step drag). Those redraws are skipped while the button
  // is down (the outline follows the mouse meanwhile: it is SVG).
  // On release plotly draws the final selection, and only then does the browser send the
  // selection to the server; the server's reply (the gallery) then waits behind that redraw too
  // (0.3-0.5 s at 210,000 points without a GPU). So the release's redraws wait, in order and
  // each once (a redraw draws every point: the last clear and the last draw of each scene are
  // enough): until the server's run that the release asked for has ended (Streamlit's app element
  // says "notRunning" again) and its page is painted with its images, 3 s at most; or 400 ms
  // when the release sent nothing (it selected nothing new). The box or lasso outline shows at
  // once meanwhile; the gallery comes before the points outside the box are dimmed. A page may
  // opt out with window.__mmRedrawAfterRun = false.
  var held = false, releasing = false, waiting = [], waitTimer = null, runWatch = null;
  function holdable(obj, name) {
    if (!obj || typeof obj[name] !== "function" || obj["__mmHeld_" + name]) return;
    var real = obj[name];
    obj["__mmHeld_" + name] = real;
    obj[name] = function () {
      if (held) return undefined;
      if (releasing) {
        var self = this, args = arguments;
        waiting = waiting.filter(function (w) { return w.obj !== self || w.name !== name; });
        waiting.push({obj: self, name: name, call: function () { return real.apply(self, args); }});
        return undefined;
      }
      return real.apply(this, arguments);
    };
  }
  function drawWaiting() {
    if (waitTimer !== null) { clearTimeout(waitTimer); waitTimer = null; }
    if (runWatch) { runWatch.disconnect(); runWatch = null; }
    releasing = false;
    var calls = waiting;
    waiting = [];
    calls.forEach(function (w) {
      try { w.call(); } catch (e) { /* a scene replaced meanwhile: its successor draws itself */ }
    });
  }
  function afterRun() {  // the release's message is sent: wait for the run it asked for
    var app = document.querySelector("[data-testid=stApp]");
    if (runWatch || !app || typeof MutationObserver !== "function") return;
    clearTimeout(waitTimer);
    waitTimer = setTimeout(drawWaiting, 3000);
    runWatch = new MutationObserver(function () {
      if (app.getAttribute("data-test-script-state") !== "notRunning") return;
      runWatch.disconnect();
      runWatch = null;
      whenPainted(drawWaiting);
    });
    runWatch.observe(app, {attributes: true, attributeFilter: ["data-test-script-state"]});
  }
  // the page settled (no change to it for 100 ms: Streamlit renders a run's elements in batches)
  // and its images (the gallery's thumbnails) loaded and painted: the redraw then holds up none
  // of their frames (a WebGL redraw without a GPU is read back at the next frame); 1.5 s at most
  function whenPainted(then) {
    var until = Date.now() + 1500, changed = Date.now();
    var watch = new MutationObserver(function () { changed = Date.now(); });
    watch.observe(document.body, {childList: true, subtree: true, attributes: true});
    (function check() {
      var loading = Array.prototype.some.call(document.images, function (im) { return !im.complete; });
      if ((loading || Date.now() - changed < 100) && Date.now() < until) { setTimeout(check, 25); return; }
      watch.disconnect();
      requestAnimationFrame(function () { setTimeout(then, 0); });
    })();
  }
  if (window.WebSocket && !WebSocket.prototype.__mmSend) {
    var send = WebSocket.prototype.send;
    WebSocket.prototype.__mmSend = send;
    WebSocket.prototype.send = function () {
      var out = send.apply(this, arguments);
      if (releasing) afterRun();
      return out;
    };
  }
  document.addEventListener("mousedown", function (ev) {
    if (releasing) drawWaiting();
    var el = ev.target && ev.target.closest ? ev.target : null;
    var gd = el && el.closest(".stPlotlyChart .js-plotly-plot");
    var fl = gd && gd._fullLayout;
    if (window.__mmHoldRedraws === false) return;  // a page may opt out (bench/map_drag.py does)
    if (!fl || (fl.dragmode !== "select" && fl.dragmode !== "lasso") || !el.closest(".nsewdrag, .selectionlayer")) return;
    Object.keys(fl._plots || {}).forEach(function (k) { holdable(fl._plots[k] && fl._plots[k]._scene, "draw"); });
    if (fl._glcanvas && typeof fl._glcanvas.each === "function") {
      fl._glcanvas.each(function (d) { if (d) holdable(d.regl, "clear"); });
    }
    held = true;
  }, true);
  // capture: before plotly's own handler of the release; a release the page did not see
  // (outside the window) ends the hold at the next move without a button, or on blur
  function release() {
    if (!held) return;
    held = false;
    if (window.__mmRedrawAfterRun === false) return;  // a page may opt out (bench/map_release.py)
    releasing = true;
    if (waitTimer !== null) clearTimeout(waitTimer);
    waitTimer = setTimeout(drawWaiting, 400);
  }
  document.addEventListener("mouseup", release, true);
  document.addEventListener("mousemove", function (ev) { if (held && ev.buttons === 0) release(); }, true);
  window.addEventListener("blur", function () { held = false; drawWaiting(); });
  // The selection's rings (ui.charts.rings_script hands them over as window.__mmRings): a 2-D
  // canvas over the plot of the chart with that key, drawn again after every plotly redraw, zoom
  // or pan; it takes no mouse events (the plot under it gets them).
  function drawRings() {
    var r = window.__mmRings;
    var gd = r && r.key ? document.querySelector(".st-key-" + r.key + " .js-plotly-plot") : null;
    var fl = gd && gd._fullLayout, box = gd && gd.querySelector(".svg-container");
    if (!fl || !fl.xaxis || !fl.yaxis || !box) return;
    var cv = box.querySelector("canvas.mm-rings");
    if (!cv) {
      cv = document.createElement("canvas");
      cv.className = "mm-rings";
      cv.style.cssText = "position:absolute;left:0;top:0;pointer-events:none";
      box.appendChild(cv);
    }
    var dpr = window.devicePixelRatio || 1, w = fl.width, h = fl.height;
    if (cv.width !== Math.round(w * dpr) || cv.height !== Math.round(h * dpr)) {
      cv.width = Math.round(w * dpr); cv.height = Math.round(h * dpr);
      cv.style.width = w + "px"; cv.style.height = h + "px";
    }
    var ctx = cv.getContext("2d"), xa = fl.xaxis, ya = fl.yaxis, n = (r.x || []).length;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    cv.setAttribute("data-rings", String(n));
    if (!n) return;
    ctx.save();
    ctx.beginPath(); ctx.rect(xa._offset, ya._offset, xa._length, ya._length); ctx.clip();
    ctx.beginPath(); ctx.lineWidth = 1.2; ctx.strokeStyle = "#000000";
    for (var i = 0; i < n; i++) {
      var px = xa._offset + xa.c2p(r.x[i]), py = ya._offset + ya.c2p(r.y[i]);
      ctx.moveTo(px + r.r, py); ctx.arc(px, py, r.r, 0, 2 * Math.PI);
    }
    ctx.stroke();
    ctx.restore();
  }
  window.__mmDrawRings = drawRings;
  // A chart mounted (a page visit, a new figure) is plotted, then Streamlit's chart hands
  // Plotly.react the same figure again as new objects (its theme pass copies it through JSON).
  // plotly decodes a base64 array anew at each react and compares data arrays by identity, so it
  // computed and drew every point a second time (0.4-0.6 s at 210,000 points without a GPU).
  // So plotly gets each base64 array decoded here, as a typed array that keeps its text: the
  // next react whose array has the same dtype and text gets the plotted typed array back, and
  // a short plain array (a legend entry's [null]) or a layout part equal (as JSON) to the plotted
  // one gets the plotted object. plotly sees them unchanged; a figure that did change keeps its
  // new parts and is drawn again. Streamlit's own copy of the figure is left as it was.
  var TYPED = {f8: Float64Array, f4: Float32Array, i4: Int32Array, u4: Uint32Array, i2: Int16Array,
               u2: Uint16Array, i1: Int8Array, u1: Uint8Array, u1c: Uint8ClampedArray};
  function decoded(spec, old) {
    if (!spec || typeof spec !== "object" || typeof spec.bdata !== "string" || !TYPED[spec.dtype] ||
        (spec.shape !== undefined && String(spec.shape).indexOf(",") !== -1)) return null;
    if (old && old.__mmBdata === spec.bdata && old.__mmDtype === spec.dtype) return old;
    var bin = atob(spec.bdata), bytes = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    var arr = new TYPED[spec.dtype](bytes.buffer);
    arr.__mmBdata = spec.bdata;
    arr.__mmDtype = spec.dtype;
    return arr;
  }
  function sameShort(a, b) {
    return Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.length <= 64 &&
      JSON.stringify(a) === JSON.stringify(b);
  }
  function trace(t, old) {
    if (!t || typeof t !== "object" || t === old) return t;
    var c = Object.assign({}, t);
    Object.keys(t).forEach(function (k) {
      var arr = decoded(t[k], old && old[k]);
      if (arr) c[k] = arr;
      else if (old && sameShort(t[k], old[k])) c[k] = old[k];
    });
    if (old && old.uid !== undefined && c.uid === undefined) c.uid = old.uid;
    return c;
  }
  function shareLayout(nu, old) {
    if (!nu || !old || nu === old) return;
    Object.keys(nu).forEach(function (k) {
      var v = nu[k], o = old[k];
      if (v && o && v !== o && typeof v === "object" && typeof o === "object") {
        try { if (JSON.stringify(v) === JSON.stringify(o)) nu[k] = o; } catch (e) { /* kept */ }
      }
    });
  }
  function wrapReact(P) {
    if (!P || P.__mmShared || typeof P.react !== "function") return;
    P.__mmShared = true;
    var real = P.react;
    P.react = function (gd, data, layout) {
      var args = Array.prototype.slice.call(arguments);
      if (window.__mmShareReact === false) return real.apply(this, args);  // bench/map_mount.py
      try {
        var whole = !!data && !Array.isArray(data) && typeof data === "object";
        var fig = whole ? data : {data: data, layout: layout};
        // (the figure plotted coming back, as Streamlit's chart does after each plot: as is)
        if (gd && gd.closest && gd.closest(".stPlotlyChart") && Array.isArray(fig.data) &&
            fig.data !== gd.data) {
          var plotted = gd._fullData && Array.isArray(gd.data) && gd.data.length === fig.data.length
            ? gd.data : null;
          var traces = fig.data.map(function (t, i) { return trace(t, plotted && plotted[i]); });
          var lay = fig.layout && typeof fig.layout === "object" ? Object.assign({}, fig.layout) : fig.layout;
          if (plotted) shareLayout(lay, gd.layout);
          if (whole) args[1] = Object.assign({}, fig, {data: traces, layout: lay});
          else { args[1] = traces; args[2] = lay; }
        }
      } catch (e) { args = Array.prototype.slice.call(arguments); }  // as it came
      return real.apply(this, args);
    };
  }
  if (window.Plotly) {
    wrapReact(window.Plotly);
  } else {
    try {  // the chart's code loads later: wrap it as it arrives
      var loaded;
      Object.defineProperty(window, "Plotly", {configurable: true, enumerable: true,
        get: function () { return loaded; }, set: function (p) { loaded = p; wrapReact(p); }});
    } catch (e) { /* wrapped by hook() */ }
  }
  setInterval(function () { hook(); wrapReact(window.Plotly); }, 400);
  hook();
})();
</script>
"""
