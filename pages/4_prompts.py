"""Prompts: how many samples, how many in-context examples, which mode; the allocation per
subgroup before anything is generated; any prompt shown exactly as the model will receive it;
the token and cost estimate of the whole run; save the prompt file."""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from mminstruct.errors import MMInstructError
from mminstruct.formats import TaskFile, load_task_file
from mminstruct.modes import MODE_NAMES
from mminstruct.preview import (allocation_rows, estimate_run, plan_workspace, render_request,
                                save_prompts)
from ui.prompt_view import render_messages
from ui.safe import md_escape
from ui.state import require_workspace, seed, session_memo, through_app

through_app("pages/4_prompts.py")
st.title("Prompts")
ws = require_workspace()
ps = ws.settings.prompts

tasks = sorted(ws.tasks_dir.glob("*.json"), key=lambda q: q.stat().st_mtime, reverse=True) \
    if ws.tasks_dir.is_dir() else []
if not tasks:
    st.info("No task file yet: save one on the Partition page first.")
    st.page_link("pages/3_partition.py", label="Go to the Partition page")
    st.stop()
names = [t.name for t in tasks]
default = Path(ws.settings.task_file).name if ws.settings.task_file else names[0]
task_name = st.selectbox("Task file", names, index=names.index(default) if default in names else 0,
                         key="task_pick")
task_path = ws.tasks_dir / task_name


@st.cache_data(max_entries=4, show_spinner="Reading the task file…")
def _task(path: str, mtime: int) -> TaskFile:
    return load_task_file(path)


try:
    task = _task(str(task_path), task_path.stat().st_mtime_ns)
except (MMInstructError, OSError) as e:
    st.error(f"Cannot read the task file: {e}")
    st.stop()

st.subheader("Settings")
c1, c2, c3 = st.columns(3)
for key, value in (("p_total", ps.total_gen), ("p_min", ps.min_gen_per_candidate),
                   ("p_icl", ps.num_icl_samples), ("p_mode", ps.mode), ("p_seed", ps.seed),
                   ("p_prefix", ps.file_prefix)):
    seed(key, value)
with c1:
    total = st.number_input("Samples to generate (total_gen)", 1, 10_000_000, ps.total_gen, key="p_total")
    min_gen = st.number_input("Items per prompt (min_gen_per_candidate)", 1, 100,
                              ps.min_gen_per_candidate, key="p_min")
with c2:
    icl = st.number_input("In-context examples per prompt", 0, 16, ps.num_icl_samples, key="p_icl")
    mode = st.selectbox("Mode", MODE_NAMES, index=MODE_NAMES.index(ps.mode), key="p_mode")
with c3:
    seed_v = st.number_input("Seed", 0, 2**31 - 1, ps.seed, key="p_seed")
    prefix = st.text_input("File prefix", ps.file_prefix, key="p_prefix")
new = (int(total), int(min_gen), int(icl), mode, int(seed_v), prefix.strip() or "prompts")
if new != (ps.total_gen, ps.min_gen_per_candidate, ps.num_icl_samples, ps.mode, ps.seed,
           ps.file_prefix):
    old = ws.settings.prompts
    (old.total_gen, old.min_gen_per_candidate, old.num_icl_samples, old.mode, old.seed,
     old.file_prefix) = new
    try:
        ws.save()
    except MMInstructError as e:
        st.error(str(e))
        st.stop()

plan_key = (str(task_path), task_path.stat().st_mtime_ns, new, str(ws.input_root),
            ws.settings.data.allow_outside_paths, ws.settings.data.dataset_description)
try:
    config, plan, pf = session_memo("plan", plan_key, lambda: plan_workspace(ws, task, task_path))
except (MMInstructError, ValueError) as e:
    st.error(f"Cannot plan prompts: {e}")
    st.stop()

st.subheader("Allocation per subgroup")
rows = allocation_rows(plan, config)
st.dataframe(rows, hide_index=True, width="stretch")
n_samples = sum(r["expected samples"] for r in rows)
st.caption(f"{len(pf.prompts):,} prompts → about {n_samples:,} samples "
           f"({md_escape(mode)}: {config.min_gen_per_candidate} item(s) per prompt)")
if plan.excluded_samples:
    with st.expander(f"{len(plan.excluded_samples)} reference sample(s) not usable as examples"):
        st.code("\n".join(str(x) for x in plan.excluded_samples[:200]), language=None,
                wrap_lines=True)
if plan.missing_candidates:
    st.warning(f"{len(plan.missing_candidates)} candidate image(s) are missing and were left out.")
if not pf.prompts:
    st.info("This plan has no prompts (no subgroup has reference samples).")
    st.stop()

st.subheader("Preview: what the model sees")
kws = sorted({e.keyword for e in pf.prompts}, key=[s.keyword for s in plan.subgroups].index)
kw = st.selectbox("Subgroup", ["(all)"] + kws, key="pv_kw")
indices = [i for i, e in enumerate(pf.prompts) if kw == "(all)" or e.keyword == kw]
pos = st.number_input(f"Prompt (1–{len(indices)})", 1, len(indices), 1, key="pv_pos")
idx = indices[int(pos) - 1]
e_side = ws.settings.endpoint.max_image_side
try:
    built = render_request(pf, idx, ws.input_root, max_image_side=e_side,
                           allow_outside=ws.settings.data.allow_outside_paths)
except MMInstructError as e:
    st.error(f"Prompt {idx} cannot be built: {e}")
else:
    entry = pf.prompts[idx]
    st.caption(f"Prompt {idx} · subgroup {md_escape(entry.keyword, 80)} · in-context samples "
               f"{entry.icl_indices} · about {built.token_estimate:,} input tokens")
    render_messages(built.messages, candidate_last=pf.mode.carries_candidate)

st.subheader("Estimate for the whole run")
seed("est_model", ws.settings.endpoint.model_name)
model = st.text_input("Model (prices from the table in mminstruct.generate.manifest)",
                      ws.settings.endpoint.model_name, key="est_model")
if model.strip() and model.strip() != ws.settings.endpoint.model_name:
    ws.settings.endpoint.model_name = model.strip()
    ws.save()
est = session_memo("estimate", (plan_key, model.strip(), e_side), lambda: estimate_run(
    pf, ws.input_root, model.strip() or "gpt-4o", max_image_side=e_side,
    allow_outside=ws.settings.data.allow_outside_paths))
m1, m2, m3, m4 = st.columns(4)
m1.metric("Input tokens", f"{est.input_tokens:,}")
m2.metric("Output tokens (allowance)", f"{est.output_tokens:,}")
cost = est.cost
m3.metric("Cost (USD)", f"${cost.usd:,.2f}" if cost.usd is not None else "unknown")
m4.metric("With the Batch API", f"${cost.batch_usd:,.2f}" if cost.batch_usd is not None else "—")
st.caption(
    f"{'Measured on every prompt' if est.exact else f'Measured on {est.measured:,} sampled prompts'}"
    f"; images ≈ {est.image_tokens:,} tokens (OpenAI's high-detail tile rule after downscaling to "
    f"{e_side}px); output is an allowance per item for this mode"
    + (f"; priced as {md_escape(cost.priced_as)}" if cost.priced_as else
       f"; no price known for {md_escape(cost.model, 60)}")
    + (f"; {est.missing_images:,} image(s) missing" if est.missing_images else ""))

st.subheader("Prompt file")
if st.button("Save the prompt file", type="primary", key="save_prompts"):
    try:
        path = save_prompts(ws, pf)
    except (MMInstructError, OSError) as e:
        st.error(f"Cannot save: {e}")
    else:
        st.success(f"Saved {md_escape(path.name, 120)} ({len(pf.prompts):,} prompts)")
if ws.settings.prompt_file and os.path.exists(ws.settings.prompt_file):
    st.caption(f"Last saved: {md_escape(ws.settings.prompt_file, 200)}")
    st.page_link("pages/5_generate.py", label="Generate →")
