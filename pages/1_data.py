"""Data: open the demo, upload a data file with its images, or point at files on this machine;
then the validation report, the records with thumbnails, and the dataset description."""

from __future__ import annotations

import io

import streamlit as st

from mminstruct.errors import MMInstructError
from mminstruct.data import DataFile
from mminstruct.app.uploads import (DATA_SUFFIXES, check_data, commit_upload, extract_zip,
                                    guess_image_folder, server_data_settings, stage_upload)
from mminstruct.app.demo import demo_pool_progress, demo_size_default, setup_demo
from mminstruct.app.workspace import SETTINGS_NAME, Workspace, default_workspace_root
from ui.gallery import thumbnail_url
from ui.model_picker import model_download_warning, model_picker
from ui.safe import for_browser, md_escape, short
from ui.settings import bind, show_error, sync
from ui.state import (current_workspace, forget_embeddings, long_lived, open_workspace,
                      through_app)
from ui import nav

PAGE_SIZE = 50

through_app(nav.DATA)
st.title("Data")
st.caption("The reference set (LLaVA format: JSON or JSONL) and the pool of candidate images.")

ws = current_workspace()


# ----------------------------------------------------------------------------------------------
# Loading


PENDING = "_data_confirm"  # the load waiting for the person's yes: "demo", "upload", "server"


def _ask(action: str, target: Workspace | None, replaced: str) -> bool:
    """True when ``action`` may go ahead: the workspace it replaces holds no curation, or the
    person said yes (``_confirm_box``). Otherwise the question is asked and False returned."""
    lost = target.curation() if target is not None else []
    if not lost or st.session_state.get(PENDING) == (action, "yes"):
        st.session_state.pop(PENDING, None)
        return True
    st.session_state[PENDING] = (action, f"{replaced} in {target.root.name} replaces its "
                                         f"curation: {', '.join(lost)}.")
    st.rerun()
    return False


def _confirm_box(action: str) -> bool:
    """The question for a pending ``action`` (what will be replaced); True once confirmed."""
    pending = st.session_state.get(PENDING)
    if not pending or pending[0] != action or pending[1] == "yes":
        return False
    st.warning(f"{pending[1]} Replace it? (Undo in the sidebar's history brings it back.)")
    c1, c2 = st.columns(2)
    if c1.button("Replace it", key=f"confirm_{action}", type="primary"):
        st.session_state[PENDING] = (action, "yes")
        return True
    if c2.button("Cancel", key=f"cancel_{action}"):
        st.session_state.pop(PENDING, None)
        st.info("Cancelled: nothing was changed.")
    return False


def _open_demo(n_ref: int, n_cand: int) -> None:
    target = ws if ws is not None and not ws.has_data else None
    try:
        if target is None:
            root = default_workspace_root() / "demo"
            existing = Workspace.open(root) if (root / SETTINGS_NAME).is_file() else None
            if not _ask("demo", existing, "Opening the demo"):
                return
            target = open_workspace(str(root), create=True)
        target.page = "Data"
        bar = st.progress(0.0, text="Drawing the demo's reference charts…")
        # the reference charts now (this page needs them); the candidate pool in the background
        # (Explore waits for it, usually finished by then)
        setup_demo(target, n_ref, n_cand, pool_in_background=True,
                   progress=lambda d, t: bar.progress(
                       d / t if t else 1.0, text=f"Drawing the demo's reference charts: {d}/{t}"))
        bar.empty()
    except MMInstructError as e:
        st.error(str(e))
        return
    open_workspace(str(target.root))
    forget_embeddings()
    st.session_state["data_loaded"] = "demo"
    st.rerun()


def _failed(e: Exception) -> None:
    """A load that failed: its error, what was kept, and not the previous data's report under it."""
    st.error(f"Not loaded: {for_browser(e)}")
    if ws is not None and ws.has_data:
        kept = ws.curation()
        st.caption(f"Nothing was changed: the workspace still uses "
                   f"{short(ws.settings.data.data_file, 200)} with its records, embeddings"
                   + (f" and curation ({', '.join(kept)})" if kept else "")
                   + "; its report is shown again on the next visit.")
    st.stop()


def _upload(ws: Workspace) -> None:
    data_up = st.file_uploader("Data file (JSON or JSONL)", type=[s.lstrip(".") for s in DATA_SUFFIXES],
                               key="up_data")
    images_up = st.file_uploader("Reference images (a .zip)", type=["zip"], key="up_images")
    pool_up = st.file_uploader("Candidate images (a .zip, optional)", type=["zip"], key="up_pool")
    go = st.button("Load the upload", key="up_go", disabled=data_up is None)
    if not (_confirm_box("upload") or go) or data_up is None:
        return
    if not _ask("upload", ws if ws.has_data else None, f"Loading {data_up.name}"):
        return
    staged = None
    notes: list[str] = []  # the zips' summaries, shown after the page redraws
    try:
        folder = ws.uploads_dir
        staged = stage_upload(folder, data_up.name, data_up.getvalue())
        from mminstruct.data import load_data_file

        load_data_file(staged, check_images=False)  # unparsable: refused before anything else
        if images_up is not None:
            rep = extract_zip(io.BytesIO(images_up.getvalue()), folder)
            notes.append(f"Reference images: {rep.summary()}")
        cand = ""
        if pool_up is not None:
            rep = extract_zip(io.BytesIO(pool_up.getvalue()), folder / "candidates")
            notes.append(f"Candidate images: {rep.summary()}")
            cand = "candidates"
        guess = guess_image_folder(folder, staged)
        d = ws.settings.data
        new = type(d)(input_folder=str(folder), data_file=str(staged), candidate_folder=cand,
                      image_folder=guess)
        check_data(new)  # no usable record, no image: nothing changes
        new.data_file = str(commit_upload(staged))
        staged = None
        ws.settings.data = new
        ws.save()
    except MMInstructError as e:
        _failed(e)
    finally:
        if staged is not None:
            staged.unlink(missing_ok=True)
    forget_embeddings()
    st.session_state["data_loaded"] = "upload"
    st.session_state["data_load_notes"] = notes
    st.rerun()


def _server(ws: Workspace) -> None:
    d = ws.settings.data
    own = not d.demo  # a demo's paths are its own: a new workspace starts empty
    sync("srv_data", ws, d.data_file if own else "")
    sync("srv_images", ws, (d.image_folder or "") if own else "")
    sync("srv_cand", ws, d.candidate_folder if own else "")
    sync("srv_allow", ws, d.allow_outside_paths)
    data_file = st.text_input("Data file (path on this machine)", key="srv_data")
    image_folder = st.text_input("Image folder (absolute, or relative to the data file; empty: "
                                 "the file's own image_folder)", key="srv_images")
    cand = st.text_input("Candidate image folder (optional)", key="srv_cand")
    allow = st.checkbox("Allow image paths outside the input folder", key="srv_allow",
                        help="Image paths in the data file that leave its folder (../, absolute "
                             "paths) are refused unless this is ticked.")
    go = st.button("Load these files", key="srv_go", disabled=not data_file.strip())
    if not (_confirm_box("server") or go):
        return
    if not _ask("server", ws if ws.has_data else None, f"Loading {short(data_file, 80)}"):
        return
    try:
        new = server_data_settings(data_file, image_folder, cand, allow)
        check_data(new)  # unparsable, no usable record, no image folder: nothing changes
        ws.settings.data = new
        ws.save()
    except MMInstructError as e:
        _failed(e)
    forget_embeddings()
    st.session_state["data_loaded"] = "server"
    st.rerun()


with st.container(border=True):
    st.subheader("Start")
    c1, c2 = st.columns([1, 2])
    default_ref, default_cand = demo_size_default()
    with c2:
        with st.expander("Demo size"):
            n_ref = st.number_input("Reference charts", 4, 100_000, default_ref, key="demo_ref")
            n_cand = st.number_input("Candidate charts", 0, 100_000, default_cand, key="demo_cand")
    with c1:
        st.write("Synthetic charts with correct answers and a tiny CLIP trained on them: the "
                 "whole pipeline, offline.")
        if st.button("Open the demo", type="primary", key="open_demo") | _confirm_box("demo"):
            _open_demo(int(n_ref), int(n_cand))
    if ws is not None:
        tab_up, tab_srv = st.tabs(["Upload files", "Files on this machine"])
        with tab_up:
            _upload(ws)
        with tab_srv:
            _server(ws)
    else:
        st.info("Open the demo, or open or create a workspace in the sidebar to load your data.")

if ws is None or not ws.has_data:
    st.stop()


# ----------------------------------------------------------------------------------------------
# What is loaded


def _load(ws) -> DataFile:
    from mminstruct.app.curation import load_workspace_data

    # every image decoded fully, as Explore's embedding does: a record whose image cannot be
    # embedded is reported here, once, and the counts agree on every page. Parsed once per
    # content hash and shared (no per-rerun copy, as st.cache_data's pickle made of 150k records);
    # images that passed before (unchanged) are not decoded again (the workspace's ImageChecks)
    with st.spinner("Reading the data file…"):
        return long_lived(load_workspace_data(ws))


d = ws.settings.data
try:
    data = _load(ws)
except MMInstructError as e:
    st.error(f"The data file cannot be loaded: {for_browser(e)}")
    st.stop()

st.subheader("Validation report")
m1, m2, m3 = st.columns(3)
m1.metric("Records loaded", f"{data.report.loaded:,}")
m2.metric("Skipped", f"{data.report.skipped:,}")
m3.metric("Total in the file", f"{data.report.total:,}")
st.code(for_browser(data.report.summary()), language=None, wrap_lines=True)
no_image = sum(1 for r in data.records if not r.images)
if no_image:  # Explore's "Reference images" counts only the records with an image
    st.caption(f"{no_image:,} of the {data.report.loaded:,} records loaded have no image: they are "
               f"kept, but the Explore map and the partition show the "
               f"{data.report.loaded - no_image:,} with an image.")
st.caption(f"Images resolve under {short(str(data.image_root), 200)}")

st.subheader("Dataset description")
st.text_area("What the dataset teaches (goes into every system prompt; saved as you leave the "
             "field)", height=100, **bind(ws, "desc_text", fallback=data.dataset_description))
show_error("desc_text")
if st.button("Save the description", key="desc_save"):  # the field saves on change; this too
    st.success("Saved.")

st.subheader("CLIP model")
model_picker(ws, "clip_model", find_now=False)
model_download_warning(ws)
st.caption("Checked as you change it (syntax, checkpoint file, config); the images are embedded "
           "with it on the Explore page.")

st.subheader("Records")
n = len(data.records)
pages = max(1, -(-n // PAGE_SIZE))
page = st.number_input(f"Page (of {pages})", 1, pages, 1, key="rec_page") if pages > 1 else 1
start = (int(page) - 1) * PAGE_SIZE
rows = []
for rec in data.records[start:start + PAGE_SIZE]:
    pairs = rec.qa_pairs()
    thumb = thumbnail_url(data.image_path(rec)) if rec.images else None
    rows.append({"image": thumb, "id": short(rec.id, 40), "index": rec.index,
                 "question": short(pairs[0][0] if pairs else "", 300),
                 "answer": short(pairs[0][1] if pairs else "", 300),
                 "conversation": short(" | ".join(f"{t.role}: {t.value}" for t in rec.turns), 1200),
                 "turns": len(rec.turns), "images": len(rec.images)})
st.dataframe(rows, hide_index=True, width="stretch", row_height=64, column_config={
    "image": st.column_config.ImageColumn("image", width="small"),
    "question": st.column_config.TextColumn("question", width="large"),
    "answer": st.column_config.TextColumn("answer", width="medium"),
    "conversation": st.column_config.TextColumn("conversation (every turn)", width="large"),
})
pool_drawing = demo_pool_progress(ws)
if pool_drawing:
    st.caption(f"Candidate pool: the demo's candidate charts are being drawn in the background "
               f"({pool_drawing[0]:,}/{pool_drawing[1]:,}); Explore starts once they are done")
elif d.candidate_folder or d.candidate_file:
    st.caption(f"Candidate pool: {short(d.candidate_folder or d.candidate_file, 200)} "
               "(embedded on the Explore page)")
else:
    st.warning("No candidate pool: prompts need candidate images. Upload a zip or give a folder.")
if st.session_state.pop("data_loaded", None):
    st.success("Data loaded. Next: the Explore page maps it with CLIP.")
    for note in st.session_state.pop("data_load_notes", []):
        st.info(md_escape(note, 600))
st.page_link(nav.EXPLORE, label="Explore the embedding map →")
