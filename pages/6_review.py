"""Review: browse generated samples by keyword with their images and in-context sources, filter
and search, reject, and export what is kept to MM-Gen, LLaVA or LLaMA-Factory ShareGPT JSON."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from mminstruct.errors import MMInstructError
from mminstruct.app.review import (DEFAULT_EXPORT_FORMAT, EXPORT_FORMATS, EXPORT_LABELS, GeneratedData, export_name,
                                   export_reviewed, get_format, filter_samples, load_generated,
                                   next_free_name, sort_and_filter_by_score, sources)
from mminstruct.app.workspace import Workspace
from ui.gallery import thumbnail
from ui.judge_view import judge_panel, show_scores
from ui.quality_view import quality_panel
from ui.safe import md_escape
from ui.settings import mark_synced, sync
from ui.state import require_workspace, through_app
from ui import nav

PAGE_SIZE = 10

through_app(nav.REVIEW)
st.title("Review")
ws = require_workspace()
outputs = ws.output_files()
if not outputs:
    st.info("No generated data yet: start a run on the Generate page.")
    st.page_link(nav.GENERATE, label="Go to the Generate page")
    st.stop()

name = st.selectbox("Generated file", [p.name for p in outputs], key="rv_file")
path = ws.generated_dir / name


@st.cache_data(max_entries=3, show_spinner="Reading the generated samples…")
def _load(p: str, mtime: int) -> GeneratedData:
    return load_generated(p)


@st.cache_resource(max_entries=3, show_spinner=False)
def _sources(p: str, mtime: int):
    return sources(p)


try:
    mtime = path.stat().st_mtime_ns
    data = _load(str(path), mtime)
    src = _sources(str(path), mtime)
except (MMInstructError, OSError) as e:
    st.error(f"Cannot read {name}: {e}")
    st.stop()

if st.session_state.get("rv_error"):
    st.error(st.session_state.pop("rv_error"))
samples = data.samples
rejected = set(ws.settings.rejected.get(name, []))
h = data.header
st.caption(md_escape(f"{len(samples):,} samples · mode {h.get('mode', '?')} · model "
                     f"{h.get('model', '?')} · {len(rejected):,} rejected", 200))
if src.note:
    st.caption(md_escape(src.note, 200))

flag_ids = quality_panel(ws, path, name, h.get("input_folder"))  # issue 10: the quality report
judged = judge_panel(ws, path, name)  # issue 24: a judge's scores
keywords = sorted({str(s.get("keyword", "")) for s in samples})
c1, c2, c3 = st.columns([2, 2, 1])
kw_pick = c1.multiselect("Keywords", keywords, key="rv_kw")
query = c2.text_input("Search the text", key="rv_q")
show = c3.selectbox("Show", ["all", "kept", "rejected"], key="rv_show")
shown = filter_samples(samples, keywords=kw_pick, query=query, rejected=rejected, show=show)
if flag_ids is not None:
    shown = [s for s in shown if s.get("id") in flag_ids]
if judged.scores:
    shown = sort_and_filter_by_score(shown, judged.scores, aspect=judged.aspect,
                                     sort=judged.sort, at_most=judged.at_most)
pages = max(1, -(-len(shown) // PAGE_SIZE))
page = st.number_input(f"Page (of {pages}) · {len(shown):,} sample(s) match", 1, pages, 1,
                       key="rv_page")
start = (int(page) - 1) * PAGE_SIZE
root = Path(h["input_folder"]) if h.get("input_folder") else ws.input_root


def _set_rejected(root: str, output: str, sid: int, key: str) -> None:
    """The toggle's callback: saved once, before the page redraws."""
    try:
        w = Workspace.open(root)
        w.set_rejected(output, [sid], bool(st.session_state.get(key)))
        w.save()
    except MMInstructError as e:
        st.session_state["rv_error"] = f"Not saved: {e}"
        return
    mark_synced(key, w, sid in w.settings.rejected.get(output, []))


def _card(s: dict) -> None:
    sid = s.get("id")
    with st.container(border=True):
        c_img, c_txt, c_act = st.columns([1, 4, 1])
        img = s.get("image_1") or s.get("image")
        if isinstance(img, str) and root is not None:
            jpeg = thumbnail(root / img, 320)
            if jpeg:
                c_img.image(jpeg, width="stretch")
        with c_txt:
            st.caption(md_escape(f"sample {sid} · {s.get('keyword', '')} · prompt "
                                 f"{s.get('prompt_idx')}" + (f" · {s['variant']}" if s.get("variant")
                                                             else ""), 160))
            for turn in s.get("conversations", []):
                st.text(f"{'Q' if turn.get('from') == 'human' else 'A'}: {turn.get('value', '')}")
            show_scores(judged.scores.get(sid))
        with c_act:
            key = f"rv_rej_{name}_{sid}"
            sync(key, ws, sid in rejected)  # as workspace.json holds it (another tab, a restart)
            st.toggle("Rejected", key=key, on_change=_set_rejected,
                      args=(str(ws.root), name, sid, key))
        icl = s.get("icl_indices") or []
        if icl:
            with st.expander(f"In-context sources ({len(icl)})"):
                for idx in icl:
                    ref = src.reference(int(idx))
                    if ref is None:
                        st.caption(f"reference sample {idx}: not found")
                        continue
                    r_img, r_txt = st.columns([1, 5])
                    img_path = src.reference_image(int(idx))
                    jpeg = thumbnail(img_path) if img_path else None
                    if jpeg:
                        r_img.image(jpeg, width="stretch")
                    with r_txt:
                        st.caption(f"reference sample {idx}")
                        for turn in ref.get("conversations", [])[:4]:
                            st.text(f"{'Q' if turn.get('from') == 'human' else 'A'}: "
                                    f"{turn.get('value', '')}")


for s in shown[start:start + PAGE_SIZE]:
    _card(s)

st.subheader("Export")
st.caption(f"{len(samples) - len(rejected):,} kept of {len(samples):,} (rejected samples are left out)")
c1, c2 = st.columns([2, 1])
fmt = c1.radio("Format", EXPORT_FORMATS, format_func=EXPORT_LABELS.get, horizontal=True,
               index=EXPORT_FORMATS.index(DEFAULT_EXPORT_FORMAT), key="rv_fmt")
is_folder = get_format(fmt).folder
if is_folder:  # hf: images embedded; the card's licence instead of a path choice
    absolute = False
    licence = c2.text_input("Licence (Hub id)", value="other", key="rv_license",
                            help="The dataset card's license: e.g. cc-by-4.0, mit, apache-2.0")
else:
    licence = None
    absolute = c2.checkbox("Absolute image paths", key="rv_abs",
                           help="Otherwise paths are relative to the export file's folder")
dest = next_free_name(ws.exports_dir / export_name(path, fmt))  # never overwrites
st.caption(f"Writes {md_escape(dest.name, 200)}" + ("/ (Parquet + dataset card)" if is_folder else ""))
if st.button("Export", type="primary", key="rv_export"):
    try:
        report = export_reviewed(path, dest, fmt, rejected=rejected, absolute_paths=absolute,
                                 license=licence)
    except (MMInstructError, OSError) as e:
        st.error(f"Export failed: {e}")
    else:
        st.session_state["rv_last_export"] = (str(report.dest), report.written, report.summary())
last = st.session_state.get("rv_last_export")
if last and Path(last[0]).parent != ws.exports_dir:  # another workspace's export: not this one's
    last = None
if last and Path(last[0]).is_dir():  # the hf folder: load it with datasets, publish it with hf upload
    st.success(f"Wrote {last[1]:,} samples to {md_escape(last[0], 200)}")
    st.caption(md_escape(last[2], 1000))
    st.code(f"hf upload USER/NAME {last[0]} --repo-type dataset", language="bash")
elif last and Path(last[0]).is_file():
    p = Path(last[0])
    st.success(f"Wrote {last[1]:,} samples to {md_escape(str(p), 200)}")
    st.caption(md_escape(last[2], 1000))
    st.download_button(f"Download {p.name}", data=p.read_bytes(), file_name=p.name,
                       mime="application/json", key="rv_download")
