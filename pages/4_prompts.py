"""Prompts: how many samples, how many in-context examples, which mode; the allocation per
subgroup before anything is generated; any prompt shown exactly as the model will receive it;
the token and cost estimate of the whole run; save the prompt file."""

from __future__ import annotations

import os

import streamlit as st

from mminstruct.errors import MMInstructError
from mminstruct.data import MODE_NAMES, load_task_file, parse_once
from mminstruct.generate import DEFAULT_GENERATOR_MODEL
from mminstruct.prompts import prompt_widget
from mminstruct.app.preview import (PlannedPrompts, allocation_rows, estimate_plan, plan_size,
                                prepare_workspace_plan,
                                prompt_at, prompt_head, render_entry, samples_note, save_status,
                                start_save, wait_inline)
from ui.prompt_view import render_messages
from ui.subgroup_run import subgroup_run
from ui.safe import for_browser, md_escape
from ui.settings import BUDGET_KEYWORDS, bind, show_error
from ui.state import require_workspace, session_memo, through_app
from ui import nav

through_app(nav.PROMPTS)
st.title("Prompts")
ws = require_workspace()
ps = ws.settings.prompts

tasks = sorted(ws.tasks_dir.glob("*.json"), key=lambda q: q.stat().st_mtime, reverse=True) \
    if ws.tasks_dir.is_dir() else []
if not tasks:
    st.info("No task file yet: save one on the Partition page first.")
    st.page_link(nav.PARTITION, label="Go to the Partition page")
    st.stop()
names = [t.name for t in tasks]
task_kwargs = bind(ws, "task_pick")
if st.session_state.get("task_pick") not in names:
    st.session_state["task_pick"] = names[0]  # none saved, or the saved one is gone: the newest
task_name = st.selectbox("Task file", names, **task_kwargs)
task_path = ws.tasks_dir / task_name


try:  # parsed once per content (every session and rerun share it), never pickled per rerun
    task = parse_once(str(task_path), load_task_file)
except (MMInstructError, OSError) as e:
    st.error(f"Cannot read the task file: {e}")
    st.stop()

st.session_state[BUDGET_KEYWORDS] = [s.keyword for s in task.subgroups]  # a budget names one
st.subheader("Settings")
c1, c2, c3 = st.columns(3)
with c1:
    # ranges and help: the settings' declarations (prompts.PROMPT_SETTINGS)
    st.number_input("Items to generate (total_gen)", **prompt_widget("total_gen"),
                    **bind(ws, "p_total"))
    st.number_input("Items per prompt (min_gen_per_candidate)",
                    **prompt_widget("min_gen_per_candidate"), **bind(ws, "p_min"))
with c2:
    st.number_input("In-context examples per prompt", **prompt_widget("num_icl_samples"),
                    **bind(ws, "p_icl"))
    st.selectbox("Mode", MODE_NAMES, **bind(ws, "p_mode"))
with c3:
    st.number_input("Seed", **prompt_widget("seed"), **bind(ws, "p_seed"))
    st.text_input("File prefix", **bind(ws, "p_prefix"))
for key in ("p_total", "p_min", "p_icl", "p_mode", "p_seed", "p_prefix"):
    show_error(key)
st.text_input("Budgets per subgroup (empty: MM-Gen's proportional rule for all)",
              placeholder="e.g. bar chart=400, pie chart=25%", **bind(ws, "p_budgets"),
              help="SUBGROUP=PROMPTS (a number of prompts) or SUBGROUP=SHARE% (a share of the "
                   "items to generate), separated by commas; the subgroups not named share "
                   "what is left in proportion to their reference samples")
show_error("p_budgets")
mode = ps.mode
new = (ps.total_gen, ps.min_gen_per_candidate, ps.num_icl_samples, ps.mode, ps.seed, ps.file_prefix,
       tuple(ps.budgets.items()))
st.caption(samples_note(ps.mode, ps.total_gen, ps.min_gen_per_candidate))

plan_key = (str(task_path), task_path.stat().st_mtime_ns, new, str(ws.input_root),
            ws.settings.data.allow_outside_paths, ws.settings.data.dataset_description)
# which images exist, checked once per task file, input folder and path rule (not per settings edit)
file_checks = session_memo("plan_files", (plan_key[:2], plan_key[3:5]), dict)
try:  # the allocation only: no prompt is built on a rerun (150,000 prompts are streamed on Save)
    config, plan = session_memo("plan", plan_key, lambda: prepare_workspace_plan(
        ws, task, task_path, file_checks))
except (MMInstructError, ValueError) as e:
    st.error(f"Cannot plan prompts: {for_browser(e)}")
    st.stop()
n_prompts = plan_size(plan)
head = prompt_head(task, config)

st.subheader("Allocation per subgroup")
rows = allocation_rows(plan, config)
st.dataframe(rows, hide_index=True, width="stretch")
for sp in plan.subgroups:
    if sp.reuse_note():
        st.caption(f"{md_escape(sp.keyword, 80)}: {md_escape(sp.reuse_note(), 200)}")
st.caption(samples_note(config.mode, config.total_gen, config.min_gen_per_candidate, n_prompts))
if plan.excluded_samples:
    with st.expander(f"{len(plan.excluded_samples)} reference sample(s) not usable as examples"):
        st.code("\n".join(str(x) for x in plan.excluded_samples[:200]), language=None,
                wrap_lines=True)
if plan.missing_candidates:
    st.warning(f"{len(plan.missing_candidates)} candidate image(s) are missing and were left out.")
if not n_prompts:
    st.info("This plan has no prompts (no subgroup has reference samples).")
    st.stop()

st.subheader("Preview: what the model sees")
sizes = {sp.keyword: sp.n_prompts for sp in plan.subgroups if sp.n_prompts}
kw = st.selectbox("Subgroup", ["(all)"] + list(sizes), key="pv_kw")
count = n_prompts if kw == "(all)" else sizes[kw]
pos = st.number_input(f"Prompt (1–{count})", 1, count, 1, key="pv_pos")
e_side = ws.settings.endpoint.max_image_side
try:  # one prompt, drawn from its subgroup's own stream: the one the saved file holds
    idx, entry = session_memo("preview", (plan_key, kw, int(pos)), lambda: prompt_at(
        task, config, plan, None if kw == "(all)" else kw, int(pos) - 1))
    built = render_entry(head, entry, ws.input_root, max_image_side=e_side,
                         allow_outside=ws.settings.data.allow_outside_paths,
                         model=ws.settings.endpoint.generator_model)
except MMInstructError as e:
    st.error(f"Prompt {int(pos)} cannot be built: {for_browser(e)}")
else:
    where = "" if kw == "(all)" else f" of this subgroup (number {idx + 1} in the prompt file)"
    st.caption(f"Prompt {int(pos)}{where} · subgroup {md_escape(entry.keyword, 80)} · in-context "
               f"samples {entry.icl_indices} · about {built.token_estimate:,} input tokens")
    render_messages(built.messages, candidate_last=config.mode.carries_candidate)

st.subheader("Estimate for the whole run")
st.text_input("Model (prices from the table in mminstruct.generate.manifest)",
              **bind(ws, "est_model"))
show_error("est_model")
model = ws.settings.endpoint.generator_model
est = session_memo("estimate", (plan_key, model.strip(), e_side), lambda: estimate_plan(
    task, config, plan, ws.input_root, model.strip() or DEFAULT_GENERATOR_MODEL, max_image_side=e_side,
    allow_outside=ws.settings.data.allow_outside_paths))
m1, m2, m3, m4 = st.columns(4)
m1.metric("Input tokens", f"{est.input_tokens:,}")
m2.metric("Output tokens (allowance)", f"{est.output_tokens:,}")
cost = est.cost
m3.metric("Cost (USD)", f"${cost.usd:,.2f}" if cost.usd is not None else "unknown")
m4.metric("With the Batch API", f"${cost.batch_usd:,.2f}" if cost.batch_usd is not None else "—")
st.caption(
    f"{'Measured on every prompt' if est.exact else f'Measured on {est.measured:,} sampled prompts'}"
    f"; images ≈ {est.image_tokens:,} tokens ({md_escape(est.image_rule, 160)}, after "
    f"downscaling to {e_side}px); output is an allowance per item for this mode"
    + (f"; priced as {md_escape(cost.priced_as)}" if cost.priced_as else
       f"; no price known for {md_escape(cost.model, 60)}")
    + (f"; {est.missing_images:,} image(s) missing" if est.missing_images else ""))

st.subheader("Prompt file")
job = save_status(ws.root)
if st.button("Save the prompt file", type="primary", key="save_prompts",
             disabled=job is not None and not job.done):
    # streamed by the command line's writer in a background thread: no rerun waits for it (a small
    # plan is done before this run ends)
    job = start_save(ws.root, task, config, plan)
    wait_inline(job)
    st.session_state["_save_seen"] = job.started


@st.fragment(run_every=0.5 if job is not None and not job.done else None)
def save_progress() -> None:
    now = save_status(ws.root)
    if now is None or st.session_state.get("_save_seen") != now.started:
        return
    if not now.done:
        st.info(f"Writing the prompt file: {now.prompts:,} prompts…")
        st.session_state["_save_polling"] = True
        return
    if st.session_state.pop("_save_polling", False):
        st.rerun()  # the whole page: "Last saved" and the Generate link follow
    if now.error:
        st.error(f"Cannot save: {for_browser(now.error)}")
    elif now.path is not None:
        st.success(f"Saved {md_escape(now.path.name, 120)} ({now.written:,} prompts, "
                   f"{now.seconds:.1f} s)")


save_progress()
if job is not None and job.done and job.path is not None:
    ws = ws.reload()  # the background save recorded the new prompt file
if ws.settings.prompt_file and os.path.exists(ws.settings.prompt_file):
    st.caption(f"Last saved: {md_escape(ws.settings.prompt_file, 200)}")
    st.page_link(nav.GENERATE, label="Generate →")

subgroup_run(ws, PlannedPrompts(task, config, plan), [s.keyword for s in plan.subgroups if s.n_prompts])
