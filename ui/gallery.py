"""Thumbnails and image galleries.

* ``thumbnail(path)`` → JPEG bytes (longest side 160 px), cached by path and mtime;
  ``thumbnail_url(path)`` the same as a small data URL (for table image columns).
* ``gallery(items, key)`` → the keys of the items ticked on the page shown: a paginated grid of
  thumbnails with escaped captions and an optional checkbox each (a page's ticks are kept while
  another page is shown).
* ``curation_actions(ws, emb, rows, key)``: send the chosen images to a subgroup, exclude them, or
  restore them — persisted in the workspace settings.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from mminstruct.errors import ImageError
from mminstruct.data.images import data_url, encode_jpeg

from .safe import md_escape

THUMB_SIDE = 160


@st.cache_data(max_entries=20_000, show_spinner=False)
def _thumb(path: str, mtime_ns: int, side: int) -> bytes | None:
    try:
        return encode_jpeg(path, max_side=side, quality=75)
    except ImageError:
        return None


def thumbnail(path: str | os.PathLike, side: int = THUMB_SIDE) -> bytes | None:
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        return None
    return _thumb(str(path), mtime, side)


def thumbnail_url(path: str | os.PathLike, side: int = 72) -> str | None:
    jpeg = thumbnail(path, side)
    return data_url(jpeg) if jpeg else None


@dataclass
class Item:
    key: Any  # returned when ticked
    path: Path
    caption: str = ""
    flag: str = ""  # shown as a warning line (e.g. low confidence)


def _page(n: int, page_size: int, key: str) -> tuple[int, int]:
    pages = max(1, -(-n // page_size))
    if pages == 1:
        return 0, n
    page = st.number_input(f"Page (of {pages})", 1, pages, 1, key=f"{key}:page")
    start = (int(page) - 1) * page_size
    return start, min(n, start + page_size)


def gallery(items: Sequence[Item], key: str, *, columns: int = 6, page_size: int = 36,
            selectable: bool = True) -> list[Any]:
    """A grid of thumbnails; returns the keys of the ticked items (on this page)."""
    if not items:
        st.caption("No images.")
        return []
    start, stop = _page(len(items), page_size, key)
    # Streamlit drops a widget's value once a run does not draw it: the ticks of the other pages
    # are saved as plain session values, so turning the page and back keeps them; the ticks of
    # images no longer in the gallery (another selection) go
    prefix = f"{key}:sel:"
    shown_anywhere = {f"{prefix}{item.key}" for item in items}
    for k in [k for k in st.session_state if isinstance(k, str) and k.startswith(prefix)]:
        if k in shown_anywhere:
            st.session_state[k] = st.session_state[k]
        else:
            del st.session_state[k]
    every = selectable and st.checkbox("Select every image on this page", key=f"{key}:all")
    chosen: list[Any] = []
    shown = list(items[start:stop])
    for row in range(0, len(shown), columns):
        cols = st.columns(columns)
        for col, item in zip(cols, shown[row:row + columns]):
            with col:
                # one element: the thumbnail with its caption and flag under it (a gallery rerun
                # sends, and the browser lays out, an element per line otherwise)
                lines = [md_escape(item.caption, 90)] if item.caption else []
                if item.flag:
                    lines.append(f":orange[{md_escape(item.flag, 60)}]")
                jpeg = thumbnail(item.path)
                if jpeg is None:
                    st.caption("  \n".join(["(unreadable image)", *lines]))
                else:
                    st.image(jpeg, caption="  \n".join(lines) or None, width="stretch")
                if selectable:
                    ticked = st.checkbox(f"Select {md_escape(item.path.name, 60)}",
                                         key=f"{prefix}{item.key}", disabled=every)
                    if ticked or every:
                        chosen.append(item.key)
    return chosen


def curation_actions(ws: Any, emb: Any, rows: Sequence[int], key: str) -> bool:
    """Buttons acting on rows of ``emb.all_vectors``; returns True when the workspace changed."""
    if not rows:
        return False
    keywords = ws.subgroup_names()  # the keywords, then the subgroups made from selections
    by_kind: dict[str, list[Any]] = {"reference": [], "candidate": []}
    for r in rows:
        by_kind[emb.locate(int(r))[0]].append(emb.item_key(int(r)))
    c1, c2, c3, c4 = st.columns([2, 1, 1, 1])
    with c1:
        target = st.selectbox("Subgroup", keywords, key=f"{key}:target") if keywords else None
    changed = False
    with c2:
        if st.button(f"Send {len(rows)} to subgroup", key=f"{key}:send", disabled=not keywords):
            for kind, keys in by_kind.items():
                ws.assign(kind, keys, target)
            changed = True
    with c3:
        if st.button(f"Exclude {len(rows)}", key=f"{key}:exclude"):
            for kind, keys in by_kind.items():
                ws.set_excluded(kind, keys, True)
            changed = True
    with c4:
        if st.button(f"Restore {len(rows)}", key=f"{key}:restore",
                     help="Undo exclusions and manual subgroup choices"):
            for kind, keys in by_kind.items():
                ws.set_excluded(kind, keys, False)
                ws.assign(kind, keys, None)
            changed = True
    if changed:
        ws.save()
        st.toast("Saved to the workspace.")
    return changed
