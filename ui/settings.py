"""One state pattern for every settings-backed widget.

A widget bound to a workspace setting has a fixed ``key``. Each run, before the widget is drawn,
``bind`` compares the setting (as ``workspace.json`` holds it now) with the value this session
last wrote or showed for that key: when they differ — the setting was changed elsewhere (another
page, another workspace, another tab, a restart) — the widget's state is set to the setting;
otherwise the widget keeps what the user typed. An edit is written by the widget's ``on_change``
callback (or, for the fields of a form, by the form's submit callback), which runs before the
page's script: the setting is saved exactly once, the marker is moved to the saved value, and the
page (sidebar included) draws from the saved settings.

The write rule: a save writes only what the person changed. ``bind``/``sync`` remember, with the
workspace, the widget value they showed (the marker); the save callback applies a field only when
the widget holds something else than that value, for the same workspace. A field whose state was
dropped (a workspace switch, a reload, another tab, a page that stopped early) shows the setting
anew and is never written back unchanged; the workspace's ``save`` then merges the changed fields
with what is on disk under its lock, so two tabs editing different settings both keep them.
Switching workspace forgets every bound widget's state (``forget_widgets``): each is seeded again
from the workspace now open.

``BOUND`` lists every bound widget (its page, its AppTest accessor, its settings path): the
parametrised test in ``tests/test_app_settings.py`` edits each of them three times in a row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from mminstruct.errors import MMInstructError
from mminstruct.app.workspace import EndpointSettings, Workspace
from mminstruct.partition import PARTITION_SETTINGS
from mminstruct.generate import DEFAULT_GENERATOR_MODEL
from ui.nav import DATA, EXPLORE, GENERATE, PARTITION, PROMPTS


def _same(v: Any) -> Any:
    return v


def _get(settings: Any, path: str) -> Any:
    obj = settings
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _set_path(ws: Workspace, path: str, value: Any) -> None:
    *head, last = path.split(".")
    obj = ws.settings
    for part in head:
        obj = getattr(obj, part)
    setattr(obj, last, value)


def _setter(path: str, convert: Callable[[Any], Any] = _same) -> Callable[[Workspace, Any], None]:
    def apply(ws: Workspace, value: Any) -> None:
        _set_path(ws, path, convert(value))
    return apply


def _keywords(ws: Workspace, text: Any) -> None:
    ws.set_keywords(str(text or "").splitlines())


def _use_min(ws: Workspace, on: Any) -> None:
    p = ws.settings.partition
    p.min_similarity = float(st.session_state.get("min_sim", MIN_SIM_START)) if on else None


#: the similarity slider's value while no minimum is set (the declaration's starting value)
MIN_SIM_START = PARTITION_SETTINGS["min_similarity"].start


def _min_sim(ws: Workspace, v: Any) -> None:
    ws.settings.partition.min_similarity = float(v)


def _model_spec(ws: Workspace, v: Any) -> None:
    from mminstruct.app.model_choice import set_clip_model

    set_clip_model(ws, str(v or ""))


def _task_file(ws: Workspace, name: Any) -> None:
    ws.settings.task_file = str(ws.tasks_dir / str(name)) if name else ""


def _prompt_file(ws: Workspace, name: Any) -> None:
    ws.settings.prompt_file = str(ws.prompts_dir / str(name)) if name else ""


def _name(v: Any) -> Any:
    return Path(v).name if v else None


def _opt_float(v: Any) -> float | None:
    return float(v) or None


def _opt_int(v: Any) -> int | None:
    return int(v) or None


#: the subgroups of the task file the Prompts page shows (set by the page before the field): a
#: budget may name only these
BUDGET_KEYWORDS = "_p_budget_keywords"


def _budgets(ws: Workspace, text: Any) -> None:
    from mminstruct.prompts.plan import check_budget_keywords, parse_budgets

    budgets = parse_budgets(str(text or ""))
    known = st.session_state.get(BUDGET_KEYWORDS)
    if known is not None:
        check_budget_keywords(budgets, known)
    ws.settings.prompts.budgets = {kw: str(b) for kw, b in budgets.items()}


def _budgets_text(v: Any) -> str:
    return ", ".join(f"{kw}={b}" for kw, b in (v or {}).items())


def _stripped(default: str) -> Callable[[Any], str]:
    return lambda v: str(v or "").strip() or default


def _file_prefix(v: Any) -> str:
    from mminstruct.data.formats import check_file_prefix

    # the rule every run and command line applies (a prefix saved here is one a run accepts)
    return check_file_prefix(_stripped("prompts")(v), "file prefix")


@dataclass(frozen=True)
class Bound:
    key: str  # the widget's key
    path: str  # the setting, dotted, in workspace.json (``partition.keywords``)
    page: str  # the page file, or "sidebar"
    widget: str  # AppTest's accessor (text_area, number_input, …)
    apply: Callable[[Workspace, Any], None]  # widget value → settings (may raise MMInstructError)
    to_widget: Callable[[Any], Any] = _same  # setting → widget value
    form: str = ""  # the form holding the widget ("" = saved on change)


EP_FORM = "endpoint_form"

BOUND: dict[str, Bound] = {b.key: b for b in (
    Bound("desc_text", "data.dataset_description", DATA, "text_area",
          _setter("data.dataset_description", lambda v: str(v or "").strip())),
    Bound("clip_model", "partition.clip_model", DATA, "text_input", _model_spec),
    Bound("ex_clip_model", "partition.clip_model", EXPLORE, "text_input", _model_spec),
    Bound("ex_ray", "partition.embed_ray_address", EXPLORE, "text_input",
          _setter("partition.embed_ray_address", lambda v: str(v or "").strip())),
    Bound("proj_method", "partition.projection", EXPLORE, "radio",
          _setter("partition.projection")),
    Bound("kw_text", "partition.keywords", PARTITION, "text_area", _keywords,
          lambda v: "\n".join(v)),
    Bound("use_min", "partition.min_similarity", PARTITION, "checkbox", _use_min,
          lambda v: v is not None),
    Bound("min_sim", "partition.min_similarity", PARTITION, "slider", _min_sim,
          lambda v: float(v) if v is not None else MIN_SIM_START),
    Bound("low_margin", "partition.low_margin", PARTITION, "slider",
          _setter("partition.low_margin", float), float),
    Bound("top_k", "partition.candidates_per_keyword", PARTITION, "number_input",
          _setter("partition.candidates_per_keyword", _opt_int), lambda v: int(v or 0)),
    Bound("task_pick", "task_file", PROMPTS, "selectbox", _task_file, _name),
    Bound("p_total", "prompts.total_gen", PROMPTS, "number_input",
          _setter("prompts.total_gen", int), int),
    Bound("p_min", "prompts.min_gen_per_candidate", PROMPTS, "number_input",
          _setter("prompts.min_gen_per_candidate", int), int),
    Bound("p_icl", "prompts.num_icl_samples", PROMPTS, "number_input",
          _setter("prompts.num_icl_samples", int), int),
    Bound("p_mode", "prompts.mode", PROMPTS, "selectbox", _setter("prompts.mode")),
    Bound("p_seed", "prompts.seed", PROMPTS, "number_input", _setter("prompts.seed", int), int),
    Bound("p_prefix", "prompts.file_prefix", PROMPTS, "text_input",
          _setter("prompts.file_prefix", _file_prefix)),
    Bound("p_budgets", "prompts.budgets", PROMPTS, "text_input", _budgets, _budgets_text),
    Bound("est_model", "endpoint.generator_model", PROMPTS, "text_input",
          _setter("endpoint.generator_model", _stripped(DEFAULT_GENERATOR_MODEL))),
    Bound("gen_prompt", "prompt_file", GENERATE, "selectbox", _prompt_file, _name),
    Bound("ep_base", "endpoint.base_url", GENERATE, "text_input",
          _setter("endpoint.base_url", lambda v: str(v or "").strip()), form=EP_FORM),
    Bound("ep_model", "endpoint.generator_model", GENERATE, "text_input",
          _setter("endpoint.generator_model", _stripped(DEFAULT_GENERATOR_MODEL)), form=EP_FORM),
    Bound("ep_keyenv", "endpoint.api_key_env", GENERATE, "text_input",
          _setter("endpoint.api_key_env", _stripped(EndpointSettings.api_key_env)), form=EP_FORM),
    Bound("ep_side", "endpoint.max_image_side", GENERATE, "number_input",
          _setter("endpoint.max_image_side", int), int, form=EP_FORM),
    Bound("ep_conc", "endpoint.concurrency", GENERATE, "number_input",
          _setter("endpoint.concurrency", int), int, form=EP_FORM),
    Bound("ep_rpm", "endpoint.rpm", GENERATE, "number_input",
          _setter("endpoint.rpm", _opt_float), lambda v: float(v or 0), form=EP_FORM),
    Bound("ep_tpm", "endpoint.tpm", GENERATE, "number_input",
          _setter("endpoint.tpm", _opt_float), lambda v: float(v or 0), form=EP_FORM),
    Bound("ep_maxtok", "endpoint.max_tokens", GENERATE, "number_input",
          _setter("endpoint.max_tokens", _opt_int), lambda v: int(v or 0), form=EP_FORM),
    Bound("ep_timeout", "endpoint.timeout", GENERATE, "number_input",
          _setter("endpoint.timeout", float), float, form=EP_FORM),
    Bound("ep_retries", "endpoint.max_retries", GENERATE, "number_input",
          _setter("endpoint.max_retries", int), int, form=EP_FORM),
)}


def _marker(key: str) -> str:
    return f"_bound:{key}"


def _error_slot(key: str) -> str:
    return f"_bound_err:{key}"


def _token(ws: Workspace, b: Bound) -> tuple[str, str]:
    return (str(ws.root), repr(_get(ws.settings, b.path)))


def _shown(key: str) -> Any:
    """The widget value ``bind``/``sync``/a save last put in ``key`` (the marker's last part)."""
    m = st.session_state.get(_marker(key))
    return m[-1] if isinstance(m, tuple) and len(m) > 2 else _NOTHING


_NOTHING = object()


def page_title(page: str) -> str:
    """A page's path → its title in the navigation (for the history's entries)."""
    from ui.nav import TITLES

    return "Sidebar" if page == "sidebar" else TITLES.get(page, Path(page).stem)


def forget_widgets() -> None:
    """Drop every bound widget's state and marker (a workspace switch): each is seeded again from
    the workspace now open, never written back from the one left."""
    ss = st.session_state
    for name in [k for k in list(ss.keys()) if isinstance(k, str) and k.startswith("_bound:")]:
        key = name[len("_bound:"):]
        ss.pop(name, None)
        ss.pop(_error_slot(key), None)
        try:
            del ss[key]
        except (KeyError, st.errors.StreamlitAPIException):
            pass


def sync(key: str, ws: Workspace, value: Any, widget_value: Any = None) -> None:
    """For a widget that is not saved on change (a draft applied by a button): show ``value``'s
    widget form when the workspace or the setting changed since this session last showed it."""
    ss = st.session_state
    token = (str(ws.root), repr(value))
    if key not in ss or tuple(ss.get(_marker(key), ())[:2]) != token:
        ss[key] = value if widget_value is None else widget_value
        ss[_marker(key)] = (*token, ss[key])


def mark_synced(key: str, ws: Workspace, value: Any) -> None:
    """After a callback saved ``value`` for a ``sync``-ed widget: the widget keeps its state."""
    st.session_state[_marker(key)] = (str(ws.root), repr(value), st.session_state.get(key))


def changed(key: str, ws: Workspace) -> bool:
    """Whether the person changed the ``sync``/``bind``-ed widget ``key`` since it was shown for
    this workspace (False for a widget whose state was dropped and shows a default)."""
    ss = st.session_state
    m = ss.get(_marker(key))
    if key not in ss or not isinstance(m, tuple) or m[0] != str(ws.root):
        return False
    return _shown(key) is _NOTHING or ss[key] != _shown(key)


def bind(ws: Workspace, key: str, *, fallback: Any = None) -> dict[str, Any]:
    """The keyword arguments of the widget bound as ``BOUND[key]``: its key and, outside a
    form, its ``on_change``. ``fallback`` is shown when the setting is None (a description the
    data file provides, say)."""
    b = BOUND[key]
    ss = st.session_state
    token = _token(ws, b)
    if fallback is not None and _get(ws.settings, b.path) is None:
        token = (*token, repr(fallback))  # another data file's own description is shown anew
    if key not in ss or tuple(ss.get(_marker(key), ())[:len(token)]) != token \
            or len(ss.get(_marker(key), ())) != len(token) + 1:
        value = _get(ws.settings, b.path)
        ss[key] = b.to_widget(value) if value is not None or fallback is None else fallback
        ss[_marker(key)] = (*token, ss[key])
        ss.pop(_error_slot(key), None)
    kwargs: dict[str, Any] = {"key": key}
    if not b.form:
        kwargs.update(on_change=_save, args=(str(ws.root), (key,)))
    return kwargs


def show_error(key: str) -> None:
    """The reason the last edit of ``key`` was not saved (the widget keeps the edit)."""
    msg = st.session_state.get(_error_slot(key))
    if msg:
        st.error(msg)


def form_submit(ws: Workspace, form: str) -> dict[str, Any]:
    """The keyword arguments of a form's submit button: saves every field bound to the form."""
    keys = tuple(k for k, b in BOUND.items() if b.form == form)
    return {"on_click": _save, "args": (str(ws.root), keys, form)}


def _save(root: str, keys: Sequence[str], form: str = "") -> None:
    """The callback: apply the widgets the person changed to the workspace on disk and save it
    once (merged per field with what another tab saved meanwhile: ``Workspace.save``)."""
    ss = st.session_state
    try:
        ws = Workspace.open(root)
    except MMInstructError as e:
        for key in keys:
            ss[_error_slot(key)] = f"Not saved: {e}"
        return
    ws.page = page_title(BOUND[keys[0]].page) if keys else ""
    failed = False
    applied = []
    for key in keys:
        ss.pop(_error_slot(key), None)
        if not changed(key, ws):
            continue  # not edited here (or its state was dropped): never written back
        try:
            BOUND[key].apply(ws, ss[key])
        except (MMInstructError, ValueError, TypeError) as e:
            ss[_error_slot(key)] = f"Not saved: {e}"
            failed = True
        applied.append(key)
    if failed:
        return
    if applied:
        try:
            ws.save()
        except MMInstructError as e:
            for key in keys:
                ss[_error_slot(key)] = f"Not saved: {e}"
            return
    for key in applied:
        if _error_slot(key) not in ss:
            ss[_marker(key)] = (*_token(ws, BOUND[key]), ss[key])
    if form:
        ss[f"_saved:{form}"] = True


def saved_note(form: str) -> bool:
    """True once after the form was saved (to show "Saved")."""
    return bool(st.session_state.pop(f"_saved:{form}", False))
