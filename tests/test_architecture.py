"""Promises about the package as a whole: what importing it costs, what a run without Ray imports,
and how the app server is exposed."""

from __future__ import annotations

import json
import pkgutil
import socket
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest

import mminstruct
from tests.fixtures.llm import gen_args, make_prompt_workspace, subprocess_env

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("ray", "streamlit", "torch", "open_clip", "umap", "faiss", "torchvision")


def _modules() -> list[str]:
    """Every module of the core, except the optional Ray layer and ``__main__`` entry points."""
    return sorted(m.name for m in pkgutil.walk_packages(mminstruct.__path__, "mminstruct.")
                  if not m.name.startswith("mminstruct.distributed.")
                  and not m.name.endswith("__main__"))


def _run_python(code: str, *args: str, timeout: float = 300) -> dict:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_every_core_module_loads_nothing_heavy() -> None:
    mods = _modules()
    assert "mminstruct.generate.engine" in mods and "mminstruct.embed.clip" in mods
    found = _run_python("""
        import importlib, json, sys
        for name in sys.argv[1:]:
            importlib.import_module(name)
        heavy = %r
        print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(heavy))))
    """ % (HEAVY,), *mods)
    assert found == [], f"importing the core loaded {found}: import them inside the functions that use them"


@pytest.mark.slow
def test_a_generation_run_without_ray_address_never_imports_ray(stub, tmp_path: Path) -> None:
    ws = make_prompt_workspace(tmp_path, "vqa_nr", 4, min_gen=1)
    result = _run_python("""
        import json, sys
        from mminstruct.commands.generate import main
        rc = main(sys.argv[1:])
        print(json.dumps({"rc": rc, "ray": sorted(m for m in sys.modules if m.split('.')[0] == 'ray')}))
    """, *gen_args(ws, stub, concurrency=2))
    assert result == {"rc": 0, "ray": []}
    assert stub.stats()["successes"] == 4  # the run really went through the server


def test_streamlit_config_binds_loopback_with_xsrf_and_no_telemetry() -> None:
    cfg = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] == "127.0.0.1"
    assert cfg["server"]["enableXsrfProtection"] is True
    assert cfg["browser"]["gatherUsageStats"] is False


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of sockets listening on ``port`` (from /proc/net/tcp and tcp6)."""
    out = set()
    for name in ("tcp", "tcp6"):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, _remote, state = line.split()[1:4]
            addr, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                out.add(addr)
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net/tcp")
def test_the_app_server_listens_on_loopback_only(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**subprocess_env(), "MMINSTRUCT_HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        addrs: set[str] = set()
        while not addrs:
            assert proc.poll() is None, "streamlit exited"
            assert time.monotonic() < deadline, "streamlit did not listen within 90 s"
            time.sleep(0.2)
            addrs = _listening_addresses(port)
        # 0100007F is 127.0.0.1 (little-endian hex); 00000000 or :: would be every interface
        assert addrs == {"0100007F"}, addrs
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ---------------------------------------------------------------------------- the import graph

def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """Every import between the core's modules (also those inside functions), and every private
    name one module takes from another (``from x import _y``, ``x._y`` on an imported module)."""
    import ast

    files = {_module_name(p): p for p in (REPO / "mminstruct").rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    private: list[str] = []
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        aliases: dict[str, str] = {}  # local name -> imported core module
        for node in ast.walk(tree):
            targets: list[tuple[str, str | None, str]] = []  # (module, name, local name)
            if isinstance(node, ast.Import):
                targets = [(a.name, None, a.asname or a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [(base, a.name, a.asname or a.name) for a in node.names]
            for target, name, local in targets:
                if not target.startswith("mminstruct"):
                    continue
                sub = f"{target}.{name}" if name else target
                if sub in files:  # `from pkg import module`
                    graph[mod].add(sub)
                    aliases[local] = sub
                    continue
                if target in files:
                    graph[mod].add(target)
                if name and name.startswith("_") and not name.startswith("__") and target != mod:
                    private.append(f"{mod} imports {target}.{name}")
                if not name:
                    aliases[local] = target
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                private.append(f"{mod} uses {aliases[node.value.id]}.{node.attr}")
    return graph, sorted(set(private))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), package ``__init__``
    re-exports left out: a package importing its own submodules is not a cycle of logic."""
    edges = {m: {t for t in ts if not _package_edge(m, t)} for m, ts in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _package_edge(mod: str, target: str) -> bool:
    """A module importing its own package, or a package's ``__init__`` importing its modules."""
    return target == mod.rpartition(".")[0] or (
        (REPO / Path(*mod.split(".")) / "__init__.py").exists() and target.startswith(mod + "."))


def test_no_import_cycles_between_core_modules() -> None:
    graph, _ = _import_graph()
    assert "mminstruct.generate.job" in graph["mminstruct.generate.engine"]
    assert _cycles(graph) == []


def test_no_private_names_cross_module_boundaries() -> None:
    _, private = _import_graph()
    assert private == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The two checks above must be able to fail."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# ---------------------------------------------------------------------------- layers and the public surface

#: What MM-Gen's command lines (and the judge's) are called by: thin entry modules nothing imports.
ENTRY_MODULES = ("mminstruct.task_file_generator", "mminstruct.prompt_generator",
                 "mminstruct.data_generator", "mminstruct.batch_data_generator", "mminstruct.judge")
STAGES = ("data", "embed", "partition", "prompts", "generate", "llm", "quality", "export",
          "distributed")


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    cli = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(cli), "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**subprocess_env(), "PYTHONPATH": str(cwd)})


def test_the_layer_contract_holds() -> None:
    """pyproject.toml's import-linter contracts: each package imports only those below it (the
    data flow), and nothing in the core imports streamlit or ui."""
    proc = _lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "2 kept, 0 broken" in proc.stdout


@pytest.mark.slow
def test_the_layer_contract_catches_a_lower_layer_importing_a_higher_one(tmp_path: Path) -> None:
    """The contract must be able to fail: a copy of the package where data imports the app."""
    import shutil

    shutil.copytree(REPO / "mminstruct", tmp_path / "mminstruct")
    shutil.copytree(REPO / "ui", tmp_path / "ui")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    rec = tmp_path / "mminstruct" / "data" / "records.py"
    rec.write_text(rec.read_text() + "\n\ndef _planted():\n    from mminstruct.app import workspace\n")
    proc = _lint_imports(tmp_path)
    assert proc.returncode != 0
    assert "mminstruct.data.records -> mminstruct.app.workspace" in proc.stdout


def test_the_folders_are_the_pipeline_stages() -> None:
    for stage in STAGES:
        assert (REPO / "mminstruct" / stage / "__init__.py").is_file(), stage
    flat = sorted(p.stem for p in (REPO / "mminstruct").glob("*.py"))
    # what stays flat: the entry points, the common floor, the package's own files
    assert set(flat) <= {"__init__", "__main__", "cache", "cli", "errors", "lazy",
                         *(m.rpartition(".")[2] for m in ENTRY_MODULES)}, flat


def test_nothing_in_the_package_imports_the_entry_modules() -> None:
    graph, _ = _import_graph()
    users = {m: sorted(t for t in ts if t in ENTRY_MODULES) for m, ts in graph.items()}
    assert {m: ts for m, ts in users.items() if ts} == {}
    for entry in ENTRY_MODULES:  # thin: one import of the code that runs it
        body = (REPO / Path(*entry.split("."))).with_suffix(".py").read_text()
        assert len([ln for ln in body.splitlines() if ln.startswith("from ")]) == 1, entry


def test_each_stage_names_its_public_surface() -> None:
    import importlib

    for stage in ("data", "embed", "partition", "prompts", "quality", "export"):
        pkg = importlib.import_module(f"mminstruct.{stage}")
        assert pkg.__all__, stage
        for name in pkg.__all__:
            assert getattr(pkg, name) is not None, (stage, name)
        with pytest.raises(AttributeError, match="its public names"):
            getattr(pkg, "no_such_name")


def _page_imports() -> list[tuple[str, str, tuple[str, ...]]]:
    import ast

    out = []
    for path in [REPO / "app.py", *sorted((REPO / "pages").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                out.append((path.name, node.module, tuple(a.name for a in node.names)))
            elif isinstance(node, ast.Import):
                out += [(path.name, a.name, ()) for a in node.names]
    return out


def _page_import_allowed(module: str) -> bool:
    """Pages use ui, the app's services, the error classes, and a stage only through its package
    (its ``__all__``), never a stage's inner module."""
    if not module.startswith("mminstruct"):
        return True
    parts = module.split(".")
    return (parts[:2] in (["mminstruct", "app"], ["mminstruct", "errors"])
            or (len(parts) == 2 and parts[1] in STAGES) or module == "mminstruct")


def test_pages_import_ui_and_the_public_surface_only() -> None:
    bad = [(page, mod) for page, mod, _ in _page_imports() if not _page_import_allowed(mod)]
    assert bad == []
    assert not _page_import_allowed("mminstruct.data.records")  # the rule can fail


def _spelled_page_paths() -> list[tuple[str, str]]:
    """Every string constant naming a page file (``pages/N_name.py``) or the entry script outside
    ``ui/nav.py``, in the app's code."""
    import ast
    import re

    pat = re.compile(r"^(pages/\d+_\w+\.py|app\.py)$")
    out = []
    for path in [REPO / "app.py", *sorted((REPO / "pages").glob("*.py")),
                 *sorted((REPO / "ui").glob("*.py"))]:
        if path == REPO / "ui" / "nav.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and pat.match(node.value):
                out.append((path.name, node.value))
    return out


def test_every_page_path_is_spelled_once_in_ui_nav() -> None:
    from ui import nav

    assert _spelled_page_paths() == []
    assert [p for p, _ in nav.PAGES] == sorted(str(p.relative_to(REPO))
                                                for p in (REPO / "pages").glob("*.py"))


# ---------------------------------------------------------------------------- one default a setting

def test_the_command_lines_take_each_default_from_the_config() -> None:
    from mminstruct.commands import batch as batch_data_generator
    from mminstruct.commands import generate as data_generator
    from mminstruct.generate.config import DEFAULTS

    for parser in (data_generator.build_parser(), batch_data_generator.build_parser()):
        args = vars(parser.parse_args(["--prompt_file", "p.json", "--file_prefix", "x"]))
        shared = sorted(set(args) & set(DEFAULTS))
        assert len(shared) >= 15, shared
        for name in shared:
            assert args[name] == DEFAULTS[name], (parser.prog, name, args[name], DEFAULTS[name])
        assert args["batch_max_mb"] * 2**20 == DEFAULTS["batch_max_bytes"]


def test_the_app_settings_take_their_defaults_and_rules_from_the_core_configs() -> None:
    from mminstruct.errors import ConfigError
    from mminstruct.generate.config import DEFAULTS
    from mminstruct.prompts.plan import PROMPT_DEFAULTS
    from mminstruct.app.workspace import EndpointSettings, PromptSettings, WorkspaceSettings, validate_settings

    e, p = EndpointSettings(), PromptSettings()
    shared = e.generation_values()
    assert len(shared) >= 9 and all(v == DEFAULTS[k] for k, v in shared.items())
    assert (p.min_gen_per_candidate, p.num_icl_samples, p.mode) == (
        PROMPT_DEFAULTS["min_gen_per_candidate"], PROMPT_DEFAULTS["num_icl_samples"],
        PROMPT_DEFAULTS["mode"].value)
    from mminstruct.generate.config import BOUNDS, RULES, SETTINGS

    for name, (lo, hi) in BOUNDS.items():  # one range: the rule follows the bounds
        test, what = RULES[name]
        assert test(lo) and test(hi) and not test(lo - 1) and not test(hi + 1), name
        assert what == (SETTINGS[name].what or f"between {lo} and {hi}")
    s = WorkspaceSettings()
    s.endpoint.temperature = 3.0  # the generation config's rule: between 0 and 2
    with pytest.raises(ConfigError, match="temperature is 3.0; it must be between 0 and 2"):
        validate_settings(s)


def test_each_on_disk_name_is_spelled_once() -> None:
    """A folder or file name of the layout appears as a literal in one place only (its owner)."""
    names = ["generated_data", "generated_prompts", "manifests", "launches", "exports",
             "log.jsonl", "run.json", "status.json", "CANCEL", "PAUSE", "workspace.json"]
    sources = [p for d in ("mminstruct", "pages", "ui") for p in (REPO / d).rglob("*.py")]
    sources.append(REPO / "app.py")
    counts = {n: 0 for n in names}
    for p in sources:
        text = p.read_text()
        for n in names:
            counts[n] += text.count(f'"{n}"') + text.count(f"'{n}'")
    assert counts == {n: 1 for n in names}
