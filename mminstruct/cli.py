"""What every command line shares: a one-line argument parser, logging setup, and turning core
errors into one clear line with a distinct exit code."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, NoReturn

from mminstruct.errors import InputError, MMInstructError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (``prog: error: … (see --help)``), not usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time, so a main() run in-process (tests,
    notebooks) never logs into a stream that was swapped out and closed since."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self):  # noqa: D401
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(debug: bool = False) -> None:
    """Our INFO lines on stderr; other libraries' (open_clip logs on the root logger, the HTTP
    stack can echo headers) only with ``--debug``. Idempotent: main() may run many times."""
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
    ours, root = logging.getLogger("mminstruct"), logging.getLogger()
    for lg in (ours, root):
        for h in [h for h in lg.handlers if isinstance(h, _CurrentStderr)]:
            lg.removeHandler(h)
    ours.setLevel(logging.DEBUG if debug else logging.INFO)
    ours.addHandler(handler)
    ours.propagate = False
    if debug:
        root.setLevel(logging.DEBUG)
        root.addHandler(handler)
    for name in ("httpx", "httpcore", "openai", "urllib3", "PIL"):
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def run_cli(
    build_parser: Callable[[], argparse.ArgumentParser],
    run: Callable[[argparse.Namespace], int | None],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse, set up logging, run; an InputError becomes ``error: …`` on stderr and exit 2, any
    other MMInstructError ``failed: …`` and exit 1, Ctrl-C exit 130 — never a traceback for the
    user's mistakes (``--debug`` logs the details)."""
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    setup_logging(debug)
    try:
        return int(run(args) or 0)
    except InputError as e:
        logging.getLogger("mminstruct").debug("details", exc_info=debug)
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except MMInstructError as e:
        logging.getLogger("mminstruct").debug("details", exc_info=debug)
        print(f"failed: {one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# ----------------------------------------------------------------------------------------------
# Settings declared once: a typed config's field carries its help, range and flag (``setting``);
# the range rules, the command-line flags and the app's number widgets are derived from it.


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: "no value": a field without a default, a flag whose default is the field's
UNSET: Any = _Unset()


@dataclass(frozen=True)
class Setting:
    """One setting's declaration, kept in its config field's metadata (``setting()``).

    ``min``/``max`` (inclusive) or ``above`` (exclusive) are the rule, said as ``what`` (derived
    when empty), or ``test`` for a rule that is not a range; None passes when the field is
    optional (``int | None``). ``flag``: the command-line flag without ``--`` ("" = the field's
    name, None = no flag); ``flag_default``/``from_flag``/``to_flag`` where the flag's value is
    not the field's (``--batch_max_mb`` for ``batch_max_bytes``). ``ui_max``: a widget's upper end
    where the rule has none (``ui_min``: a widget's lower end where it is not the rule's;
    ``ui_step``: its step). ``ui_default``: what the app starts from where the config has no
    default or another (``start``). ``name``, ``default``, ``kind`` and ``optional`` are filled from the
    field by ``settings_of``."""

    help: str = ""
    section: str = ""
    min: float | None = None
    max: float | None = None
    above: float | None = None
    what: str = ""
    test: Callable[[Any], bool] | None = None
    flag: str | None = ""
    metavar: str | None = None
    choices: tuple[Any, ...] | None = None
    flag_default: Any = UNSET
    from_flag: Callable[[Any], Any] | None = None
    to_flag: Callable[[Any], Any] | None = None
    flag_type: Callable[[Any], Any] | None = None
    ui_min: float | None = None
    ui_max: float | None = None
    ui_step: float | None = None
    ui_default: Any = UNSET
    name: str = ""
    default: Any = UNSET
    kind: str = ""
    optional: bool = False

    @property
    def dest(self) -> str:
        """The argparse destination (the flag's name)."""
        return self.flag or self.name

    def rule(self) -> tuple[Callable[[Any], bool], str] | None:
        """(test, what it must be), or None when the setting has no rule."""
        lo, hi, above, opt = self.min, self.max, self.above, self.optional
        if self.test is not None:
            custom = self.test
            return (lambda v: (opt and v is None) or custom(v)), self.what
        if lo is None and hi is None and above is None:
            return None
        if lo is not None and hi is not None:
            what = f"between {_num(lo)} and {_num(hi)}"
        elif above is not None:
            what = f"> {_num(above)}"
        elif lo is not None:
            what = f"≥ {_num(lo)}"
        else:
            what = f"≤ {_num(hi)}"

        def test(v: Any) -> bool:
            if v is None:
                return opt
            return ((lo is None or v >= lo) and (hi is None or v <= hi)
                    and (above is None or v > above))
        return test, self.what or what

    @property
    def start(self) -> Any:
        """The app's starting value: ``ui_default``, else the default."""
        return self.default if self.ui_default is UNSET else self.ui_default

    def widget(self, with_help: bool = False) -> dict[str, Any]:
        """A number widget's ``min_value``, ``max_value`` and ``step`` (Streamlit's names): the
        rule's range, with ``ui_max`` where the rule has no upper end; an optional setting
        shows None as 0. ``with_help``: also the help text as ``help`` (the pages label their
        fields themselves and show no tooltip: a tooltip's button carries the field's label
        too)."""
        lo = self.min if self.min is not None else (self.above if self.above is not None else 0)
        if self.optional:
            lo = 0
        if self.ui_min is not None:
            lo = self.ui_min
        hi = self.max if self.max is not None else self.ui_max
        cast = float if self.kind == "float" else int
        out: dict[str, Any] = {"min_value": cast(lo), "max_value": None if hi is None else cast(hi)}
        if with_help:
            out["help"] = self.help.replace("%(default)s", str(self.default))
        if self.ui_step is not None:
            out["step"] = cast(self.ui_step)
        return out


def _num(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def setting(default: Any = MISSING, *, default_factory: Any = MISSING, **kw: Any) -> Any:
    """A dataclass field declared with its ``Setting`` (help, section, range, flag)."""
    meta = {"setting": Setting(**kw)}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


_KINDS = {"int": int, "float": float, "str": str, "bool": bool, "Path": str}


def settings_of(cls: type) -> dict[str, Setting]:
    """Every field of the dataclass ``cls`` declared with ``setting()``, by field name, in order,
    with its name, default, kind and optionality filled in."""
    out: dict[str, Setting] = {}
    for f in fields(cls):
        s = f.metadata.get("setting")
        if s is None:
            continue
        annotation = str(f.type)
        kind = annotation.replace(" | None", "").strip()
        out[f.name] = replace(s, name=f.name, kind=kind,
                              default=UNSET if f.default is MISSING else f.default,
                              optional="None" in annotation)
    return out


def add_setting_arguments(parser: argparse.ArgumentParser, specs: Sequence[Setting], *,
                          groups: Mapping[str, str] | None = None,
                          required: Sequence[str] = ()) -> dict[str, Any]:
    """Add one flag per setting in ``specs`` (those with a flag), in argument groups titled by
    ``groups[section]`` (no title: the parser itself). The flag's default is the field's (or
    ``flag_default``); ``required`` names settings whose flag must be given. Returns the groups
    by section, for flags that are not settings."""
    made: dict[str, Any] = {}
    for s in specs:
        if s.flag is None:
            continue
        title = (groups or {}).get(s.section)
        if s.section not in made:
            made[s.section] = parser.add_argument_group(title) if title else parser
        kwargs: dict[str, Any] = {"help": s.help or None}
        if s.kind == "bool" and s.flag_default is UNSET:
            if s.default is not False:
                raise ValueError(f"{s.name}: a bool flag is store_true; its default must be False")
            kwargs["action"] = "store_true"
        else:
            if s.name in required:
                kwargs["required"] = True
            default = s.flag_default if s.flag_default is not UNSET else s.default
            if default is not UNSET:
                kwargs["default"] = s.to_flag(default) if s.to_flag else default
            elif s.name not in required:
                kwargs["default"] = None
            t = s.flag_type or _KINDS.get(s.kind)
            if t not in (None, str):
                kwargs["type"] = t
            if s.choices is not None:
                kwargs["choices"] = s.choices
            if s.metavar is not None:
                kwargs["metavar"] = s.metavar
        made[s.section].add_argument(f"--{s.dest}", **kwargs)
    return made


def values_from_args(args: argparse.Namespace, specs: Sequence[Setting]) -> dict[str, Any]:
    """The settings' values from parsed flags, under their field names (a setting whose flag the
    parser did not add is left out: the field's default holds)."""
    out: dict[str, Any] = {}
    for s in specs:
        if s.flag is None or not hasattr(args, s.dest):
            continue
        v = getattr(args, s.dest)
        out[s.name] = s.from_flag(v) if s.from_flag else v
    return out
