"""The app's workspace: one folder holding a project's settings, uploads, caches, task and prompt
files, and generation runs. No streamlit here; the app's pages call these functions.

Layout of a workspace folder::

    workspace.json        the settings (``WorkspaceSettings``), written atomically
    history/              every change to the settings, restorable (``mminstruct.app.history``)
    data/                 uploaded data files and extracted image archives
    cache/                CLIP embeddings (cache/clip/*.sqlite) and 2-D projections
    tasks/                task files (MM-Gen's step 1 output)
    generated_prompts/    prompt files (step 2)
    generated_data/       generated data, manifests and run folders (step 3)
    launches/             one record per background run the app started (see ``mminstruct.runs``)

The settings never hold an API key: ``EndpointSettings`` has no field for one, and the app keeps
a typed key only in the browser session. Recent workspaces are remembered in ``recent.json``
under ``$MMINSTRUCT_HOME`` (default ``~/.config/mminstruct``).

Getting data in (uploads, safe zip extraction, files on this machine) is ``mminstruct.uploads``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from mminstruct.cache import atomic_write_json
from mminstruct.app import history
from mminstruct.app.history import SETTINGS_NAME
from mminstruct.embed.clip import DEFAULT_CLIP_MODEL
from mminstruct.errors import ConfigError, DamagedWorkspaceError, choices_message
from mminstruct.data.formats import generated_dir, prompts_dir
from mminstruct.generate.config import DEFAULTS as GEN_DEFAULTS
from mminstruct.generate.config import GenerationConfig, check_values
from mminstruct.data.modes import MODE_NAMES, parse_mode
from mminstruct.partition.assign import normalise_keywords
from mminstruct.partition.taskfile import PARTITION_SETTINGS
from mminstruct.prompts.plan import (PROMPT_DEFAULTS, PROMPT_MINIMUMS, PROMPT_SETTINGS,
                                     PromptConfig, check_prompt_values, parse_budgets)

HOME_ENV = "MMINSTRUCT_HOME"
RECENT_NAME = "recent.json"
SETTINGS_VERSION = 1
MAX_RECENT = 10


def app_home() -> Path:
    """``$MMINSTRUCT_HOME`` or ``~/.config/mminstruct``: where the recent-workspace list lives."""
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser() if env else Path.home() / ".config" / "mminstruct"


def default_workspace_root() -> Path:
    """Where new workspaces go by default: ``$MMINSTRUCT_HOME/workspaces`` when the variable is
    set, else ``./workspaces`` (git-ignored in the repository)."""
    env = os.environ.get(HOME_ENV)
    return (Path(env).expanduser() if env else Path.cwd()) / "workspaces"


# ----------------------------------------------------------------------------------------------
# Settings


@dataclass
class DataSettings:
    """Where the reference set and the candidate pool are. ``input_folder`` is the root every
    image path of the task and prompt files is relative to."""

    input_folder: str = ""
    data_file: str = ""
    image_folder: str | None = None  # None: the data file's own image_folder key
    candidate_folder: str = ""  # absolute, or relative to input_folder; "" = none
    candidate_file: str = ""
    allow_outside_paths: bool = False
    dataset_description: str | None = None  # None: the data file's own
    demo: bool = False


@dataclass
class PartitionSettings:
    #: the CLIP model's spec (``embed.clip.parse_model_spec``); written by ``set_clip_model``
    clip_model: str = DEFAULT_CLIP_MODEL  # the task-file builder's default too
    keywords: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    min_similarity: float | None = None
    candidates_per_keyword: int | None = None
    #: items whose margin to the runner-up is below this are flagged
    low_margin: float = PARTITION_SETTINGS["low_margin"].start
    projection: str = "umap"
    excluded_reference: list[int] = field(default_factory=list)  # sample indices
    excluded_candidates: list[str] = field(default_factory=list)  # paths as in the task file
    manual_reference: dict[str, str] = field(default_factory=dict)  # str(sample idx) → keyword
    manual_candidates: dict[str, str] = field(default_factory=dict)  # path → keyword
    #: subgroups made by hand from a selection: written to the task file like a keyword's (their
    #: name as the keyword) but with only the items the manual tables send them; kept across
    #: keyword edits (``Workspace.new_subgroup``)
    manual_subgroups: list[str] = field(default_factory=list)
    #: where the embedding job sends the candidate pool: a Ray cluster (``HOST:PORT``, ``auto``
    #: or ``local``); empty: this machine's cores (``app.embed.JobOptions.ray_address``)
    embed_ray_address: str = ""


@dataclass
class PromptSettings:
    """Step 2's settings; each starts from its declaration in ``prompts.PROMPT_SETTINGS`` (the
    config's default, or the app's own start where the command line leaves it open: a total to
    start from, a fixed seed, a file prefix)."""

    total_gen: int = PROMPT_SETTINGS["total_gen"].start
    min_gen_per_candidate: int = PROMPT_SETTINGS["min_gen_per_candidate"].start
    num_icl_samples: int = PROMPT_SETTINGS["num_icl_samples"].start
    mode: str = PROMPT_DEFAULTS["mode"].value
    seed: int = PROMPT_SETTINGS["seed"].start
    file_prefix: str = PROMPT_SETTINGS["file_prefix"].start
    #: subgroup → budget: a number of prompts ("4000") or a share of total_gen ("25%"); the
    #: subgroups without one share the rest by MM-Gen's rule (``prompts.allocate``)
    budgets: dict[str, str] = field(default_factory=dict)

    def to_config(self, task_desc: str, input_folder: str, output_folder: str,
                  allow_outside_paths: bool = False) -> PromptConfig:
        return PromptConfig(task_desc=task_desc, file_prefix=self.file_prefix,
                            total_gen=self.total_gen, input_folder=input_folder,
                            output_folder=output_folder,
                            min_gen_per_candidate=self.min_gen_per_candidate,
                            num_icl_samples=self.num_icl_samples, mode=parse_mode(self.mode),
                            seed=self.seed, allow_outside_paths=allow_outside_paths,
                            budgets=dict(self.budgets) or None)


@dataclass
class EndpointSettings:
    """Where generation requests go. No key: it comes from the environment or the session."""

    base_url: str = ""
    generator_model: str = GEN_DEFAULTS["generator_model"]
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = GEN_DEFAULTS["concurrency"]
    rpm: float | None = GEN_DEFAULTS["rpm"]
    tpm: float | None = GEN_DEFAULTS["tpm"]
    max_tokens: int | None = GEN_DEFAULTS["max_tokens"]
    temperature: float | None = GEN_DEFAULTS["temperature"]
    timeout: float = GEN_DEFAULTS["timeout"]
    max_retries: int = GEN_DEFAULTS["max_retries"]
    max_image_side: int = GEN_DEFAULTS["max_image_side"]

    def generation_values(self) -> dict[str, Any]:
        """The settings that are ``GenerationConfig`` fields, under their names there."""
        names = {f.name for f in fields(GenerationConfig)}
        return {k: v for k, v in asdict(self).items() if k in names}


@dataclass
class WorkspaceSettings:
    name: str = ""
    created: str = ""
    version: int = SETTINGS_VERSION
    data: DataSettings = field(default_factory=DataSettings)
    partition: PartitionSettings = field(default_factory=PartitionSettings)
    prompts: PromptSettings = field(default_factory=PromptSettings)
    endpoint: EndpointSettings = field(default_factory=EndpointSettings)
    task_file: str = ""  # the last task file saved
    prompt_file: str = ""  # the last prompt file saved
    rejected: dict[str, list[int]] = field(default_factory=dict)  # output file name → sample ids

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_SECTIONS = {"data": DataSettings, "partition": PartitionSettings, "prompts": PromptSettings,
             "endpoint": EndpointSettings}
_FORBIDDEN_KEYS = re.compile(r"api_?key$|secret|password|token$", re.IGNORECASE)


def _check_value(where: str, name: str, value: Any, default: Any, annotation: str) -> Any:
    """Loose type check driven by the field's annotation string (``int | None`` …)."""
    optional = "None" in annotation
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: {name!r} must not be null")
    base = annotation.replace(" | None", "").strip()
    ok = {
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "list[str]": isinstance(value, list) and all(isinstance(v, str) for v in value),
        "list[int]": isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                                     for v in value),
        "dict[str, str]": isinstance(value, dict) and all(isinstance(v, str) for v in value.values()),
        "dict[str, list[int]]": isinstance(value, dict) and all(
            isinstance(v, list) and all(isinstance(i, int) for i in v) for v in value.values()),
    }.get(base)
    if ok is None:
        return value
    if not ok:
        raise ConfigError(f"{where}: {name!r} is {value!r}; expected {base}")
    return float(value) if base == "float" else value


#: a setting's earlier name in ``workspace.json`` (section → new name → old name): read when the new
#: one is absent; a save writes the new name only
OLD_KEYS: dict[str, dict[str, str]] = {"partition": {"clip_model": "model_name"},
                                       "endpoint": {"generator_model": "model_name"}}


def _section_from(cls: type, raw: Any, where: str, section: str = "") -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be an object, got {type(raw).__name__}")
    old = {new: o for new, o in OLD_KEYS.get(section, {}).items() if new not in raw and o in raw}
    if old:
        raw = {**raw, **{new: raw[o] for new, o in old.items()}}
    kwargs = {}
    for f in fields(cls):
        if f.name in raw:
            kwargs[f.name] = _check_value(where, f.name, raw[f.name], None, str(f.type))
    return cls(**kwargs)


def settings_from_json(obj: Any, where: str = SETTINGS_NAME) -> WorkspaceSettings:
    """Validated settings; unknown keys are ignored, a wrong type names the key."""
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    kwargs: dict[str, Any] = {}
    for f in fields(WorkspaceSettings):
        if f.name not in obj:
            continue
        if f.name in _SECTIONS:
            kwargs[f.name] = _section_from(_SECTIONS[f.name], obj[f.name], f"{where}: {f.name}",
                                           f.name)
        else:
            kwargs[f.name] = _check_value(where, f.name, obj[f.name], None, str(f.type))
    s = WorkspaceSettings(**kwargs)
    validate_settings(s)
    return s


def validate_settings(s: WorkspaceSettings) -> None:
    """Range checks the type checks cannot make; ConfigError names the bad value."""
    p, e = s.prompts, s.endpoint
    if p.mode not in MODE_NAMES:
        raise ConfigError(choices_message("mode", p.mode, MODE_NAMES))
    check_prompt_values({k: v for k, v in asdict(p).items() if k in PROMPT_MINIMUMS})
    check_values(e.generation_values())  # the generation config's own rules
    ms = s.partition.min_similarity
    test, what = PARTITION_SETTINGS["min_similarity"].rule()  # type: ignore[misc]
    if not test(ms):
        raise ConfigError(f"min_similarity is {ms!r}; it must be {what}")
    if s.partition.projection not in ("umap", "pca"):
        raise ConfigError(choices_message("projection", s.partition.projection, ("umap", "pca")))
    if p.budgets:
        parse_budgets(p.budgets)


class Workspace:
    """A workspace folder and its settings (``save`` writes them atomically)."""

    def __init__(self, root: Path, settings: WorkspaceSettings):
        self.root = root
        self.settings = settings
        #: the settings as read from disk (``save`` writes only the fields changed since)
        self._loaded: dict[str, Any] | None = None
        #: who is changing it, for the history ("Partition", "command line"): set by the caller
        self.page = ""

    # -- opening

    @classmethod
    def open(cls, path: str | os.PathLike, *, create: bool = False) -> Workspace:
        root = Path(path).expanduser().resolve()
        settings_path = root / SETTINGS_NAME
        if settings_path.is_file():
            try:
                raw = json.loads(settings_path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise _damaged(root, f"cannot be read as JSON: {e}") from e
            try:
                ws = cls(root, settings_from_json(raw, str(settings_path)))
            except ConfigError as e:
                raise _damaged(root, str(e)) from e
            ws._loaded = ws.settings.to_json()
            return ws
        if not create:
            what = "is not a workspace (no workspace.json)" if root.is_dir() else "does not exist"
            raise ConfigError(f"workspace {root} {what}")
        if root.exists() and not root.is_dir():
            raise ConfigError(f"workspace {root} exists and is not a folder")
        root.mkdir(parents=True, exist_ok=True)
        ws = cls(root, WorkspaceSettings(name=root.name,
                                         created=datetime.now().isoformat(timespec="seconds")))
        ws.save(changes=["workspace created"])
        return ws

    def save(self, *, page: str | None = None, changes: list[str] | None = None) -> Path:
        """Write the settings atomically, merged per field with the file on disk under the
        workspace's lock: the fields this object changed since it was opened (or last saved)
        are written over what is on disk now; the others keep what another tab or process
        saved meanwhile. The change is recorded in the history (``mminstruct.app.history``)."""
        validate_settings(self.settings)
        mine = self.settings.to_json()
        _refuse_secrets(mine)
        with history.locked(self.root):
            disk = history.read_state(self.root)
            merged = mine
            if disk is not None and self._loaded is not None:
                merged = merge_states(self._loaded, mine, disk)
                if merged != mine:
                    try:
                        settings = settings_from_json(merged, str(self.root / SETTINGS_NAME))
                    except ConfigError:
                        merged = mine  # another writer's values clash with these: these win
                    else:
                        self.settings = settings
                        merged = settings.to_json()
            path = history.write_state(self.root, merged)
            history.record(self.root, disk, merged, page=page if page is not None else self.page,
                           changes=changes)
        self._loaded = merged
        return path

    def reload(self) -> Workspace:
        return Workspace.open(self.root)

    # -- folders

    @property
    def uploads_dir(self) -> Path:
        return self.root / "data"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def tasks_dir(self) -> Path:
        return self.root / "tasks"

    @property
    def output_folder(self) -> Path:
        return self.root

    @property
    def generated_dir(self) -> Path:
        return generated_dir(self.output_folder)

    @property
    def prompts_dir(self) -> Path:
        return prompts_dir(self.output_folder)

    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"

    @property
    def input_root(self) -> Path | None:
        d = self.settings.data
        if d.input_folder:
            return Path(d.input_folder).expanduser().resolve()
        if d.data_file:
            return Path(d.data_file).expanduser().resolve().parent
        return None

    @property
    def has_data(self) -> bool:
        return bool(self.settings.data.data_file)

    def output_files(self) -> list[Path]:
        """Generated data files (newest first), not manifests, quality reports or batch files."""
        if not self.generated_dir.is_dir():
            return []
        out = [p for p in self.generated_dir.glob("*.json")
               if not p.name.endswith((".manifest.json", ".batch.manifest.json", ".quality.json"))
               and not p.name.startswith(".")]
        return sorted(out, key=lambda p: p.stat().st_mtime, reverse=True)

    def curation(self) -> list[str]:
        """The person's curation in words ("3 excluded reference samples", "2 budgets"): what a
        new data file or the demo would replace (empty: nothing to lose)."""
        p, s = self.settings.partition, self.settings
        counts = [
            (len(p.excluded_reference), "excluded reference sample"),
            (len(p.excluded_candidates), "excluded candidate"),
            (len(p.manual_reference) + len(p.manual_candidates), "manual assignment"),
            (len(p.manual_subgroups), "subgroup from a selection"),
            (len(s.prompts.budgets), "budget"),
            (sum(len(v) for v in s.rejected.values()), "rejected sample"),
        ]
        out = [f"{n:,} {what}{'s' if n != 1 else ''}" for n, what in counts if n]
        if p.keywords and not s.data.demo:
            out.insert(0, f"{len(p.keywords)} keyword{'s' if len(p.keywords) != 1 else ''}")
        return out

    # -- curation edits (persisted by the caller's save())

    def set_excluded(self, kind: str, keys: Iterable[Any], excluded: bool = True) -> None:
        """Exclude (or restore) reference samples (by sample index) or candidates (by path)."""
        p = self.settings.partition
        if kind == "reference":
            current, new = set(p.excluded_reference), {int(k) for k in keys}
            p.excluded_reference = sorted(current | new if excluded else current - new)
        elif kind == "candidate":
            cur_c, new_c = set(p.excluded_candidates), {str(k) for k in keys}
            p.excluded_candidates = sorted(cur_c | new_c if excluded else cur_c - new_c)
        else:
            raise ConfigError(choices_message("image kind", kind, ("reference", "candidate")))

    def subgroup_names(self) -> list[str]:
        """Every subgroup of the task file, in its order: the keywords, then the manual subgroups."""
        p = self.settings.partition
        return list(p.keywords) + [m for m in p.manual_subgroups if m not in p.keywords]

    def assign(self, kind: str, keys: Iterable[Any], keyword: str | None) -> None:
        """Send items to a keyword's subgroup by hand (``None`` removes the manual assignment)."""
        p = self.settings.partition
        if keyword is not None and keyword not in self.subgroup_names():
            raise ConfigError(choices_message("keyword", keyword, self.subgroup_names()))
        if kind == "reference":
            table, norm = p.manual_reference, (lambda k: str(int(k)))
        elif kind == "candidate":
            table, norm = p.manual_candidates, str
        else:
            raise ConfigError(choices_message("image kind", kind, ("reference", "candidate")))
        for k in keys:
            if keyword is None:
                table.pop(norm(k), None)
            else:
                table[norm(k)] = keyword

    def set_keywords(self, new: Sequence[str]) -> list[str]:
        """Replace the keyword list (blank lines dropped). When the list keeps its length, a
        changed line is a rename and manual assignments follow it; assignments to removed keywords
        are dropped."""
        clean = normalise_keywords([k for k in new if not isinstance(k, str) or k.strip()])
        p = self.settings.partition
        taken = {m.casefold(): m for m in p.manual_subgroups}
        clash = [k for k in clean if k.casefold() in taken]
        if clash:
            raise ConfigError(f"keyword {clash[0]!r} is the name of a manual subgroup "
                              f"({taken[clash[0].casefold()]!r}); rename or remove that subgroup "
                              "first")
        old = list(p.keywords)
        renames = {o: n for o, n in zip(old, clean) if o != n} if len(old) == len(clean) else {}
        keep = set(clean) | set(p.manual_subgroups)  # manual subgroups survive keyword edits
        for table in (p.manual_reference, p.manual_candidates):
            for k, kw in list(table.items()):
                kw = kw if kw in p.manual_subgroups else renames.get(kw, kw)
                if kw in keep:
                    table[k] = kw
                else:
                    del table[k]
        budgets = self.settings.prompts.budgets
        for kw in list(budgets):
            if kw in p.manual_subgroups:
                continue
            new_kw = renames.get(kw, kw)
            value = budgets.pop(kw)
            if new_kw in clean:
                budgets[new_kw] = value
        p.keywords = clean
        return clean

    def new_subgroup(self, name: str, reference: Iterable[Any] = (),
                     candidates: Iterable[Any] = ()) -> str:
        """A subgroup of its own from a selection: ``reference`` sample indices and ``candidates``
        paths become its members by hand (taken from whatever subgroup they were in). The name is
        its keyword in the task file; it must not be a keyword or another subgroup's name."""
        clean = " ".join(str(name).split()) if isinstance(name, str) else ""
        if not clean:
            raise ConfigError(f"a subgroup needs a name, got {name!r}")
        taken = {n.casefold(): n for n in self.subgroup_names()}
        if clean.casefold() in taken:
            raise ConfigError(f"subgroup name {clean!r} is taken (by {taken[clean.casefold()]!r}); "
                              "choose another name or add the items to that subgroup")
        reference, candidates = list(reference), list(candidates)
        if not reference and not candidates:
            raise ConfigError(f"subgroup {clean!r}: the selection is empty; select images first")
        p = self.settings.partition
        p.manual_subgroups = [*p.manual_subgroups, clean]
        self.assign("reference", reference, clean)
        self.assign("candidate", candidates, clean)
        return clean

    def remove_subgroup(self, name: str) -> None:
        """Drop a manual subgroup; its items go back to the keyword partition."""
        p = self.settings.partition
        if name not in p.manual_subgroups:
            raise ConfigError(choices_message("manual subgroup", name, p.manual_subgroups))
        p.manual_subgroups = [m for m in p.manual_subgroups if m != name]
        for table in (p.manual_reference, p.manual_candidates):
            for k, kw in list(table.items()):
                if kw == name:
                    del table[k]
        self.settings.prompts.budgets.pop(name, None)

    def set_rejected(self, output_name: str, ids: Iterable[int], rejected: bool = True) -> None:
        cur = set(self.settings.rejected.get(output_name, []))
        ids = {int(i) for i in ids}
        cur = cur | ids if rejected else cur - ids
        if cur:
            self.settings.rejected[output_name] = sorted(cur)
        else:
            self.settings.rejected.pop(output_name, None)


def _damaged(root: Path, problem: str) -> DamagedWorkspaceError:
    """The error for a ``workspace.json`` that cannot be read, naming the last good history
    entry (the app offers to restore it)."""
    good = history.last_good(root)
    offer = (f"; the last good state is history entry {good.id} ({good.time}): restore it with "
             f"the app's Restore button or `python -m mminstruct.app.history {root} --restore "
             f"{good.id}`" if good else "; the workspace has no history entry to restore")
    return DamagedWorkspaceError(f"{root / SETTINGS_NAME} is damaged ({problem}){offer}",
                                 str(root), good.id if good else None)


def merge_states(loaded: dict[str, Any], mine: dict[str, Any],
                 disk: dict[str, Any]) -> dict[str, Any]:
    """Per-field merge: ``disk`` with the fields ``mine`` changed from ``loaded`` (a section's
    fields one by one; a dict field key by key, so two tabs rejecting samples of different
    outputs or setting budgets of different subgroups both keep their edits)."""
    out = json.loads(json.dumps(disk))
    for k, v in mine.items():
        if k in _SECTIONS and isinstance(v, dict):
            base, into = loaded.get(k) or {}, out.setdefault(k, {})
            if not isinstance(into, dict):
                out[k] = into = {}
            for f, fv in v.items():
                if base.get(f) != fv:
                    into[f] = _merge_value(base.get(f), fv, into.get(f))
        elif loaded.get(k) != v:
            out[k] = _merge_value(loaded.get(k), v, out.get(k))
    return out


def _merge_value(base: Any, mine: Any, disk: Any) -> Any:
    if isinstance(base, dict) and isinstance(mine, dict) and isinstance(disk, dict):
        out = {}
        for key, value in mine.items():  # in this writer's order
            if key in base and base[key] == value:  # not changed here: as on disk now
                if key in disk:
                    out[key] = disk[key]
            else:
                out[key] = value
        for key, value in disk.items():  # added by another writer
            if key not in base and key not in out:
                out[key] = value
        return out
    return mine


def _refuse_secrets(obj: Any, path: str = "") -> None:
    """A guard: settings must never carry a key (no field exists; this catches a future one)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(k, str) and _FORBIDDEN_KEYS.search(k) and v:
                raise ConfigError(f"refusing to write a secret-looking setting {path}{k!r} to disk")
            _refuse_secrets(v, f"{path}{k}.")


# ----------------------------------------------------------------------------------------------
# Recent workspaces


def recent_path() -> Path:
    return app_home() / RECENT_NAME


def read_recent(path: Path) -> list[str]:
    """A recent list (``{"recent": [...]}``, most recent first): its non-empty strings."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    items = raw.get("recent", []) if isinstance(raw, dict) else []
    return [s for s in items if isinstance(s, str) and s.strip()]


def write_recent(path: Path, first: str | None, rest: list[str], limit: int) -> list[str]:
    """``first`` (if any) then ``rest`` without it, at most ``limit``, written atomically (an
    unwritable home only costs the list)."""
    items = ([first] if first is not None else []) + [r for r in rest if r != first]
    items = items[:limit]
    try:
        atomic_write_json(path, {"recent": items})
    except OSError:
        pass
    return items


def recent_workspaces() -> list[Path]:
    """Remembered workspaces that still exist, most recent first."""
    return [Path(s) for s in read_recent(recent_path()) if (Path(s) / SETTINGS_NAME).is_file()]


def remember_workspace(path: str | os.PathLike) -> list[Path]:
    """Put ``path`` first in the recent list (at most ``MAX_RECENT``), written atomically."""
    p = str(Path(path).expanduser().resolve())
    items = write_recent(recent_path(), p, [str(r) for r in recent_workspaces()], MAX_RECENT)
    return [Path(s) for s in items]


def forget_workspace(path: str | os.PathLike) -> None:
    p = str(Path(path).expanduser().resolve())
    write_recent(recent_path(), None, [str(r) for r in recent_workspaces() if str(r) != p],
                 MAX_RECENT)
