"""Generate: the endpoint, the key (environment, st.secrets, or typed for this session only), and
runs in background processes that survive reloads, closed tabs and app restarts — live progress,
pause, continue, cancel, resume after a crash; a dry run writes the Batch API JSONL instead."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from mminstruct.errors import MMInstructError
from mminstruct.generate import number_widget
from mminstruct.quality import judge_widget
from mminstruct.app.runs import (cancel_run, continue_run, cost_so_far, dry_run, eta_label,
                                 list_app_runs, new_run_name, pause_run, recent_records, resume_run,
                                 run_info, runs_table, start_run, workspace_config,
                                 judge_config)
from ui.gallery import thumbnail
from ui.safe import for_browser, md_escape, short
from ui.settings import BOUND, EP_FORM, bind, form_submit, saved_note, show_error
from ui.state import (RUN_PICK, RUN_SELECT, api_key, forget_typed_key, require_workspace,
                      set_typed_key, show_run, through_app)
from ui import nav

through_app(nav.GENERATE)
st.title("Generate")
ws = require_workspace()
e = ws.settings.endpoint

# ----------------------------------------------------------------------------------------------
# Endpoint and key

if st.session_state.get(f"_saved:{EP_FORM}"):
    st.session_state["_ep_open"] = True  # saved once: kept open for the next edit
with st.expander("Endpoint", expanded=not e.base_url or st.session_state.get("_ep_open", False)):
    with st.form(EP_FORM):
        c1, c2 = st.columns(2)
        with c1:
            st.text_input("Base URL (empty: OpenAI; e.g. http://127.0.0.1:8000/v1 for vLLM, "
                          "Ollama, LM Studio)", **bind(ws, "ep_base"))
            st.text_input("Model", **bind(ws, "ep_model"))
            st.text_input("Environment variable holding the key", **bind(ws, "ep_keyenv"))
            st.number_input("Downscale images to (longest side, px)",
                            **number_widget("max_image_side"), **bind(ws, "ep_side"))
        with c2:  # ranges and help: the settings' declarations (generate.config)
            st.number_input("Requests in flight", **number_widget("concurrency"),
                            **bind(ws, "ep_conc"))
            st.number_input("Requests per minute (0: from the server's headers)",
                            **number_widget("rpm"), **bind(ws, "ep_rpm"))
            st.number_input("Tokens per minute (0: from the server's headers)",
                            **number_widget("tpm"), **bind(ws, "ep_tpm"))
            st.number_input("Answer token limit (0: the model's)", **number_widget("max_tokens"),
                            **bind(ws, "ep_maxtok"))
            st.number_input("Timeout per request (s)", **number_widget("timeout"),
                            **bind(ws, "ep_timeout"))
            st.number_input("Retries per request", **number_widget("max_retries"),
                            **bind(ws, "ep_retries"))
        st.form_submit_button("Save endpoint settings", **form_submit(ws, EP_FORM))
    errors = [st.session_state.get(f"_bound_err:{k}") for k, b in BOUND.items() if b.form == EP_FORM]
    if any(errors):
        st.error(" · ".join(m for m in errors if m))
    elif saved_note(EP_FORM):
        st.success("Saved (the key is never saved; a key typed for another base URL is dropped).")

key, source = api_key(ws)
st.caption(f"API key: {md_escape(source, 120)}")
if source.startswith("typed") or key is None:
    with st.form("key_form", clear_on_submit=True):
        typed = st.text_input("API key for this session and this base URL (kept in memory, "
                              "never saved or shown)", type="password", key="key_input")
        if st.form_submit_button("Use this key") and typed.strip():
            set_typed_key(ws, typed.strip())
            st.rerun()
    if source.startswith("typed") and st.button("Forget the typed key", key="key_forget"):
        forget_typed_key()
        st.rerun()

# ----------------------------------------------------------------------------------------------
# Starting a run

st.subheader("New run")
prompt_dir = ws.prompts_dir
prompts = sorted(prompt_dir.glob("*.json"), key=lambda q: q.stat().st_mtime, reverse=True) \
    if prompt_dir.is_dir() else []
if not prompts:
    st.info("No prompt file yet: save one on the Prompts page.")
else:
    names = [p.name for p in prompts]
    pick_kwargs = bind(ws, "gen_prompt")
    if st.session_state.get("gen_prompt") not in names:
        st.session_state["gen_prompt"] = names[0]  # none saved, or the saved one is gone
    pick = st.selectbox("Prompt file", names, **pick_kwargs)
    show_error("gen_prompt")
    prompt_path = prompt_dir / pick
    with st.form("launch_form", clear_on_submit=True):
        typed_name = st.text_input("Run name (the output file's prefix; empty: gen, gen-2, …)",
                                   key="run_name")
        c1, c2 = st.columns(2)
        launch = c1.form_submit_button("Start the run", type="primary")
        dry = c2.form_submit_button("Dry run: write the Batch API file")
    name = typed_name.strip() or new_run_name("gen", ws.root)
    if launch:
        try:
            info = start_run(ws.root, workspace_config(ws, name.strip(), prompt_path), key)
        except MMInstructError as err:
            st.error(str(err))
        else:
            show_run(info.name)  # the run just started, not the one the list showed before
            st.toast(f"Run {info.name} started")
    if dry:
        with st.spinner("Building every request…"):
            try:
                res = dry_run(workspace_config(ws, f"{name.strip()}_dryrun", prompt_path,
                                               dry_run=True))
            except MMInstructError as err:
                st.error(str(err))
            else:
                st.session_state["dry_files"] = [str(f) for f in res.batch_files]
                st.session_state["dry_message"] = res.message
    for f in st.session_state.get("dry_files", []):
        path = Path(f)
        if path.is_file():
            st.caption(md_escape(st.session_state.get("dry_message", ""), 200))
            st.download_button(f"Download {path.name} ({path.stat().st_size / 1e6:.1f} MB)",
                               data=path.read_bytes(), file_name=path.name,
                               mime="application/jsonl", key=f"dl_{path.name}")

# ----------------------------------------------------------------------------------------------
# Judging a finished run (issue 24): a background run like generation's, listed under Runs

st.subheader("Judge a finished run")
finished = ws.output_files()
if not finished:
    st.caption("No generated file yet.")
else:
    with st.form("judge_form"):
        j_file = st.selectbox("Generated file", [f.name for f in finished], key="judge_file")
        c1, c2, c3 = st.columns(3)
        j_model = c1.text_input("Judge model (empty: the generation's)", key="judge_model")
        j_sample = c2.number_input("Sample per subgroup (fraction; 0: every sample)",
                                   value=0.0, **judge_widget("sample"), key="judge_sample")
        j_cap = c3.number_input("Cost cap in US dollars (0: none)", value=0.0,
                                **judge_widget("max_cost"), key="judge_cap")
        j_start = st.form_submit_button("Start the judge")
    st.caption("Scores go to generated_data/manifests/RUN.scores.jsonl; the Review page sorts, "
               "filters and rejects by them.")
    if j_start:
        try:
            cfg = judge_config(ws, ws.generated_dir / j_file, new_run_name("judge"),
                               generator_model=j_model, sample=j_sample or None,
                               max_cost=j_cap or None)
            info = start_run(ws.root, cfg, key)
        except MMInstructError as err:
            st.error(str(err))
        else:
            st.session_state["run_pick"] = info.name
            st.toast(f"Judge run {info.name} started")

# ----------------------------------------------------------------------------------------------
# Runs

st.subheader("Runs")
infos = list_app_runs(ws.root)
if not infos:
    st.caption("No run yet.")
    st.stop()
names = [i.name for i in infos]
current = st.session_state.get(RUN_PICK)
picked = st.selectbox("Run", names, index=names.index(current) if current in names else 0,
                      key=RUN_SELECT)
st.session_state[RUN_PICK] = picked


def _samples(info) -> None:
    recs = recent_records(info.run_dir, 4) if info.run_dir else []
    if not recs:
        return
    st.markdown("**Latest prompts**")
    for rec in recs:
        c_img, c_txt = st.columns([1, 4])
        img = rec.get("image")
        if img and ws.input_root is not None:
            jpeg = thumbnail(ws.input_root / img)
            if jpeg:
                c_img.image(jpeg, width="stretch")
        with c_txt:
            head = f"prompt {rec.get('prompt_idx')} · {rec.get('keyword', '')} · {rec.get('outcome')}"
            st.caption(md_escape(head, 120))
            if rec.get("outcome") == "ok":
                for item in rec.get("items", [])[:2]:
                    st.text("\n".join(f"{k}: {short(v, 400)}" for k, v in item.items()))
            else:
                st.text(f"{rec.get('error_class')}: {short(rec.get('message'), 300)}")


@st.fragment(run_every=1.0 if any(i.active for i in infos) else None)
def live(name: str, was_active: bool) -> None:
    every = list_app_runs(ws.root)
    st.dataframe(runs_table(every), hide_index=True, width="stretch")
    info = next((i for i in every if i.name == name), None) or run_info(ws.root, name)
    if was_active and not any(i.active for i in every):
        st.rerun()  # every run finished: redraw the page, which stops the timer
    s = info.status
    total, done = int(s.get("total") or 0), int(s.get("done") or 0)
    st.markdown(f"**{md_escape(info.name, 90)}** · state: **{info.state}**")
    if info.message:
        st.caption(md_escape(for_browser(info.message), 400))
    st.progress(done / total if total else 0.0, text=f"{done:,} / {total:,} prompts")
    m = st.columns(5)
    m[0].metric("Rate", f"{float(s.get('rate_per_s') or 0):.1f}/s")
    m[1].metric("ETA", eta_label(info))
    m[2].metric("OK / failed", f"{int(s.get('ok') or 0):,} / {int(s.get('failed') or 0):,}")
    tin, tout = int(s.get("input_tokens") or 0), int(s.get("output_tokens") or 0)
    m[3].metric("Tokens", f"{tin + tout:,}")
    cost = cost_so_far(info, e.generator_model)
    m[4].metric("Cost so far", f"${cost.usd:,.4f}" if cost.usd is not None else "unknown")
    fails, errs = s.get("failed_by_class") or {}, s.get("errors_by_class") or {}
    if fails or errs:
        st.dataframe([{"class": k, "failed prompts": int(fails.get(k, 0)),
                       "errors (incl. retried)": int(errs.get(k, 0))}
                      for k in sorted(set(fails) | set(errs))], hide_index=True)
    b = st.columns(4)
    try:
        if b[0].button("Pause", key="run_pause", disabled=not info.can_pause):
            pause_run(info)
            st.toast("Pausing: requests in flight finish first")
        if b[1].button("Continue", key="run_continue", disabled=not info.can_continue):
            continue_run(info)
        if b[2].button("Cancel", key="run_cancel", disabled=not info.can_cancel):
            cancel_run(info)
            st.toast("Cancelling: nothing finished is lost; resume later")
        if b[3].button("Resume", key="run_resume", disabled=not info.can_resume):
            resume_run(ws.root, info.name, api_key(ws, for_base_url=info.base_url)[0])
            st.rerun()
    except MMInstructError as err:
        st.error(str(err))
    if info.state == "finished" and info.output:
        st.success(f"Output: {md_escape(str(info.output.resolve()), None)}")
        st.page_link(nav.REVIEW, label="Review the samples →")
    _samples(info)


live(picked, any(i.active for i in infos))
