"""Rendering user text (data files, generated samples) as text, never as markup.

Streamlit's markdown (``st.markdown``, ``st.caption``, image captions, widget labels) renders
Markdown, Streamlit's directives (``:red[…]``, ``:material/…:``, ``$…$`` LaTeX) and links; raw HTML
is escaped unless ``unsafe_allow_html``, which this app never passes. Text from a data file goes
through ``md_escape`` before it reaches any markdown-rendering element, or is shown with
``st.text`` / ``st.code`` (plain text).
"""

from __future__ import annotations

import re

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&=\"'])")


def md_escape(text: object, limit: int | None = 300) -> str:
    """``text`` as literal markdown: every markdown / directive character backslash-escaped,
    newlines folded to spaces, cut to ``limit`` characters."""
    s = "" if text is None else str(text)
    s = " ".join(s.split())
    if limit is not None and len(s) > limit:
        s = s[: limit - 1] + "…"
    return _MD_SPECIAL.sub(r"\\\1", s)


def short(text: object, limit: int = 120) -> str:
    """Plain text, one line, cut to ``limit`` (for ``st.text`` and table cells)."""
    s = " ".join(("" if text is None else str(text)).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


_CLI_ADVICE = (
    ("pass --allow_outside_paths to allow it",
     ('tick "Allow image paths outside the input folder" under "Files on this machine" on the '
      "Data page to allow it")),
    ("pass that folder as the image folder",
     'give that folder as the "Image folder" under "Files on this machine" on the Data page'),
)


#: a stopped or cancelled run's advice to the command line (``generate.job``'s "continue with
#: --resume (run NAME)", a batch run's "--resume continues polling them")
_RESUME_ADVICE = (
    (re.compile(r"continue with --resume(?: \(run [^)]*\))?"),
     "press Resume on the Generate page to continue"),
    (re.compile(r"--resume continues"), "Resume (on the Generate page) continues"),
)


def for_browser(message: object) -> str:
    """An error or status message from the core with its command-line advice ("pass --flag",
    "continue with --resume") replaced by what a browser user does instead."""
    s = str(message)
    for cli, ui in _CLI_ADVICE:
        s = s.replace(cli, ui)
    for pattern, ui in _RESUME_ADVICE:
        s = pattern.sub(ui, s)
    return s
