"""``mminstruct``: one command for every step, in pipeline order (the console script of
``pyproject.toml``; also ``python -m mminstruct``)::

    mminstruct task      …   = python -m mminstruct.task_file_generator …
    mminstruct prompts   …   = python -m mminstruct.prompt_generator …
    mminstruct generate  …   = python -m mminstruct.data_generator …
    mminstruct batch     …   = python -m mminstruct.batch_data_generator …
    mminstruct judge     …   = python -m mminstruct.judge …
    mminstruct quality   …   = python -m mminstruct.quality …
    mminstruct export    …   = python -m mminstruct.export …
    mminstruct merge     …   = python -m mminstruct.batch_data_generator merge …
    mminstruct app       …   = streamlit run app.py …

Each subcommand takes exactly its module's arguments (``mminstruct STEP --help``) and returns its
exit status. Modules are imported only when their step runs, so a step that is not part of this
version (``judge`` before it lands) is listed as unavailable and says so when called.
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PROG = "mminstruct"


@dataclass(frozen=True)
class Step:
    name: str
    module: str  # the module whose main(argv) runs it ("" for app)
    summary: str
    prefix: tuple[str, ...] = ()  # arguments put before the user's (merge → "merge")

    @property
    def available(self) -> bool:
        if not self.module:
            return app_path() is not None
        try:
            return importlib.util.find_spec(self.module) is not None
        except ModuleNotFoundError:
            return False


#: The steps, in pipeline order (what ``--help`` lists).
STEPS: tuple[Step, ...] = (
    Step("task", "mminstruct.commands.task",
         "reference set + keywords (+ candidate pool) → task file (MM-Gen step 1)"),
    Step("prompts", "mminstruct.commands.prompts", "task file → prompt file (MM-Gen step 2)"),
    Step("generate", "mminstruct.commands.generate",
         "prompt file → generated data through an OpenAI-compatible API (MM-Gen step 3)"),
    Step("batch", "mminstruct.commands.batch",
         "step 3 in concurrent shards, merged into one file"),
    Step("judge", "mminstruct.commands.judge", "score every generated sample with a vision model"),
    Step("quality", "mminstruct.quality.report",
         "quality report: duplicates, ICL copies, refusals, invalid samples, grounding"),
    Step("export", "mminstruct.export.formats",
         "generated data → MM-Gen, LLaVA, ShareGPT JSON or a Hugging Face dataset folder"),
    Step("merge", "mminstruct.commands.batch",
         "merge generated-data files (shards; MM-Gen merge.py's --run_id)", ("merge",)),
    Step("app", "", "start the Streamlit app (arguments go to `streamlit run`)"),
)
BY_NAME: dict[str, Step] = {s.name: s for s in STEPS}


def app_path() -> Path | None:
    """The Streamlit entry ``app.py`` beside the package (a checkout or editable install)."""
    p = Path(__file__).resolve().parents[2] / "app.py"
    return p if p.is_file() else None


def usage() -> str:
    width = max(len(s.name) for s in STEPS)
    lines = [f"usage: {PROG} STEP [ARGUMENTS …]   ({PROG} STEP --help for a step's arguments)",
             "", "One command for the pipeline. Steps, in pipeline order:", ""]
    for s in STEPS:
        note = "" if s.available else "  (not in this installation)"
        lines.append(f"  {s.name:<{width}}  {s.summary}{note}")
    lines += ["", "Each step takes the same arguments as its module: "
              "`mminstruct generate …` = `python -m mminstruct.data_generator …`."]
    return "\n".join(lines)


def run_app(args: Sequence[str]) -> int:
    app = app_path()
    if app is None:
        print(f"{PROG} app: error: app.py is not beside the package (run from a checkout of the "
              "repository)", file=sys.stderr)
        return 2
    cmd = [sys.executable, "-m", "streamlit", "run", str(app), *args]
    try:
        return subprocess.call(cmd, cwd=app.parent)
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "--version":
        from mminstruct import __version__

        print(f"{PROG} {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    step = BY_NAME.get(name)
    if step is None:
        print(f"{PROG}: error: unknown step {name!r}; choose one of: "
              f"{', '.join(s.name for s in STEPS)} (see --help)", file=sys.stderr)
        return 2
    if not step.module:
        return run_app(rest)
    if not step.available:
        print(f"{PROG} {name}: error: {step.module} is not in this installation", file=sys.stderr)
        return 2
    module = importlib.import_module(step.module)
    try:
        return int(module.main([*step.prefix, *rest]) or 0)
    except SystemExit as e:  # argparse's --help / bad arguments
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)


if __name__ == "__main__":
    sys.exit(main())
