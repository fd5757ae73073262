"""The embedding map: a plotly WebGL scatter (``Scattergl``), one trace per subgroup, reference
images as circles and candidates as diamonds, the row index in ``customdata`` so a box or lasso
selection maps back to images. Hover text is HTML-escaped (plotly renders a few tags in hover
labels; a question containing markup shows as text)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np

PALETTE = ("#3b5bdb", "#e8590c", "#2f9e44", "#c2255c", "#7048e8", "#0c8599", "#f08c00",
           "#5c940d", "#862e9c", "#1864ab", "#d9480f", "#087f5b")
UNASSIGNED_COLOR = "#adb5bd"
EXCLUDED_COLOR = "#212529"


def hover_text(kind: str, path: str, question: str, group: str) -> str:
    q = html.escape(question[:90] + ("…" if len(question) > 90 else ""))
    lines = [f"<b>{html.escape(group)}</b> · {kind}", html.escape(path[-70:])]
    if q:
        lines.append(q)
    return "<br>".join(lines)


def map_figure(xy: np.ndarray, rows: np.ndarray, groups: np.ndarray, is_reference: np.ndarray,
               keywords: Sequence[str], hover: Sequence[str], selected: Sequence[int] = (),
               height: int = 620):
    """``rows``: the drawn rows (indices into the full set); the other arrays are per drawn row."""
    import plotly.graph_objects as go

    fig = go.Figure()
    names = {k: kw for k, kw in enumerate(keywords)}
    names[-1], names[-2] = "unassigned", "excluded"
    hover = np.asarray(hover, dtype=object)
    sel = set(int(s) for s in selected)
    for g in [*range(len(keywords)), -1, -2]:
        mask = groups == g
        if not mask.any():
            continue
        color = PALETTE[g % len(PALETTE)] if g >= 0 else (UNASSIGNED_COLOR if g == -1
                                                          else EXCLUDED_COLOR)
        ref = is_reference[mask]
        drawn = rows[mask]
        fig.add_trace(go.Scattergl(
            x=xy[mask, 0], y=xy[mask, 1], mode="markers", name=f"{names[g]} ({int(mask.sum())})",
            customdata=drawn.reshape(-1, 1), text=hover[mask],
            hovertemplate="%{text}<extra></extra>",
            marker=dict(color=color, size=np.where(ref, 9, 6).tolist(),
                        symbol=np.where(ref, "circle", "diamond").tolist(),
                        opacity=0.85,
                        line=dict(width=[1.5 if int(r) in sel else 0 for r in drawn],
                                  color="#000000")),
        ))
    for label, symbol in (("reference", "circle"), ("candidate", "diamond")):
        fig.add_trace(go.Scattergl(x=[None], y=[None], mode="markers", name=label,
                                   marker=dict(color="#868e96", symbol=symbol, size=8),
                                   hoverinfo="skip", showlegend=True))
    # the legend under the plot: the toolbar (top right) never covers it
    fig.update_layout(height=height, dragmode="lasso", margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", yanchor="top", y=-0.02, x=0,
                                  xanchor="left"), uirevision="map",
                      xaxis=dict(showticklabels=False, title=None, zeroline=False),
                      yaxis=dict(showticklabels=False, title=None, zeroline=False),
                      plot_bgcolor="#fafbfd")
    return fig


def selected_row(point: dict) -> int | None:
    """The row index a selected point carries in ``customdata`` (plotly sends it back as a
    scalar, a one-element list, or — from a 2-D array — an object keyed "0")."""
    cd = point.get("customdata")
    if isinstance(cd, dict):
        cd = cd.get("0", next(iter(cd.values()), None))
    elif isinstance(cd, (list, tuple)):
        cd = cd[0] if cd else None
    try:
        return int(cd) if cd is not None else None
    except (TypeError, ValueError):
        return None


def picked_rows(event: Any, n_rows: int) -> list[int]:
    """The rows (sorted, distinct, < ``n_rows``) of the points a ``st.plotly_chart(on_select=…)``
    event selected: ``{"selection": {"points": [{"customdata": …}, …]}}``."""
    points = (event or {}).get("selection", {}).get("points", []) if event else []
    return sorted({r for r in (selected_row(pt) for pt in points) if r is not None and r < n_rows})


def select_from_map(sel_state: dict, rows: list[int]) -> None:
    """A box, lasso or click selection on the map replaces the selection: its rows, its source,
    and no similarity scores (those belong to a text query's selection)."""
    sel_state.update(rows=list(rows), source="map selection", scores={})
