"""A run for some subgroups only: the chosen subgroups' prompts (the same ones the full plan holds,
with their budgets), launched as a background run; the other subgroups are not regenerated."""

from __future__ import annotations

from typing import Any

import streamlit as st

from mminstruct.app.subgroups import start_subgroup_run
from mminstruct.errors import MMInstructError

from .safe import md_escape
from .state import api_key, show_run
from ui import nav


def subgroup_run(ws: Any, planned: Any, keywords: list[str], key: str = "sgrun") -> None:
    """``planned``: ``preview.PlannedPrompts`` (counts now; the chosen subgroups' prompts built on
    the click only)."""
    st.subheader("Generate for some subgroups only")
    st.caption("Sends only the chosen subgroups' prompts of this plan (the same prompts the full "
               "prompt file holds, with their budgets) to the endpoint set on the Generate page; "
               "the other subgroups are not regenerated. The run appears on the Generate page.")
    chosen = st.multiselect("Subgroups to generate", keywords, key=f"{key}:pick")
    n = planned.count(chosen)
    if st.button(f"Generate {n:,} prompt(s) of {len(chosen)} subgroup(s)", key=f"{key}:go",
                 disabled=not chosen):
        secret, _ = api_key(ws)
        try:
            info = start_subgroup_run(ws, planned.prompt_file(chosen), chosen, api_key=secret)
        except MMInstructError as e:
            st.error(str(e))
        else:
            show_run(info.name)
            st.session_state[f"{key}:started"] = (str(ws.root), info.name)
    _show_started(ws, key)


def _show_started(ws: Any, key: str) -> None:
    """The run this control started in this workspace, as it stands now (not a stale "started"
    once it has ended), and where to watch it."""
    from mminstruct.app.runs import run_info

    started = st.session_state.get(f"{key}:started")
    if not started or started[0] != str(ws.root):
        return
    try:
        info = run_info(ws.root, started[1])
    except MMInstructError:
        st.session_state.pop(f"{key}:started", None)
        return
    text = f"Run {md_escape(info.name, 100)}: {info.state}"
    (st.success if info.active or info.state == "finished" else st.warning)(text)
    st.page_link(nav.GENERATE, label="Watch it on the Generate page →")


def subgroup_run_from_task(ws: Any, keyword: str, key: str = "sgrun_part") -> None:
    """Partition: generate one subgroup from the last saved task file, with the Prompts page's
    settings and budgets (the plan of the whole task file, then only that subgroup's prompts)."""
    from pathlib import Path

    from mminstruct.app.preview import plan_workspace
    from mminstruct.data.formats import load_task_file

    path = Path(ws.settings.task_file) if ws.settings.task_file else None
    if path is None or not path.is_file():
        return
    with st.expander(f"Generate only {keyword!r}, from the last saved task file"):
        st.caption(f"Plans {md_escape(path.name, 120)} with the Prompts page's settings and budgets "
                   "and sends only this subgroup's prompts (save the task file first if you changed "
                   "the partition). The run appears on the Generate page.")
        if st.button(f"Generate {keyword!r} only", key=f"{key}:go"):
            try:
                task = load_task_file(path)
                if keyword not in [s.keyword for s in task.subgroups]:
                    raise MMInstructError(f"subgroup {keyword!r} is not in {path.name}; save the "
                                          "task file first")
                _, _, pf = plan_workspace(ws, task, path)
                info = start_subgroup_run(ws, pf, [keyword], api_key=api_key(ws)[0])
            except (MMInstructError, ValueError) as e:
                st.error(str(e))
            else:
                show_run(info.name)
                st.session_state[f"{key}:started"] = (str(ws.root), info.name)
        _show_started(ws, key)
