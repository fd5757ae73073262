"""Text signals for the quality report (``quality.py``): normalisation, word sets for similarity,
question types, multiple-choice options, refusals, and a sample's question/answer in each mode.

Pure functions on strings; no I/O. Thresholds live in ``quality.QualityConfig``.
"""

from __future__ import annotations

import re
from typing import Any

from mminstruct.generate.output import CONCISE_SUFFIX, REASONING_SUFFIX, describe_question
from mminstruct.data.modes import Mode

_WORD_RE = re.compile(r"\w+")
_IMAGE_TOKEN_RE = re.compile(r"<image>\s*", re.IGNORECASE)

#: Words that carry no content for "is this the same question": function words, and the phrases a
#: model adds or drops when it rewords a question ("in the image", "can you tell me", "shown").
STOPWORDS = frozenset("""
a an the this that these those there here it its it's is are was were be been being am do does
did doing done has have had having of in on at to for from by with about into onto over under as
and or but if than then so such very just also any some can could would should will shall may
might must please tell me you your i we us our my what which who whom whose where when why how
kind sort type image images picture pictures photo photos photograph photographs shown show shows
seen see visible depicted displayed display displays appear appears appearing scene frame
provided given based according
""".split())

_AUX = frozenset("""is are was were am do does did can could will would should shall has have had
may might must isn't aren't wasn't weren't don't doesn't didn't can't couldn't won't wouldn't
shouldn't hasn't haven't""".replace("'", "").split())
_IMPERATIVE = frozenset("""describe explain list identify name give provide count determine
estimate compare summarize summarise state tell write find select choose classify analyze
analyse""".split())
#: question types in display order
QUESTION_TYPES = ("what", "how many", "which", "who", "where", "when", "why", "how", "yes/no",
                  "imperative", "other")
_WH = {"what": "what", "which": "which", "who": "who", "whom": "who", "whose": "who",
       "where": "where", "when": "when", "why": "why", "how": "how"}


def words(text: str) -> list[str]:
    """Case-folded word tokens (letters, digits, underscore); punctuation and spacing dropped."""
    return _WORD_RE.findall(text.casefold())


def normalise(text: str) -> str:
    """Case, whitespace and punctuation ignored: the exact-duplicate key."""
    return " ".join(words(text))


def _stem(w: str) -> str:
    return w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w


_CONTENT: dict[str, str] = {}  # word → its content form ("" for a stop word), memoised


def _content_word(w: str) -> str:
    c = _CONTENT.get(w)
    if c is None:
        c = "" if w in STOPWORDS else _stem(w)
        if len(_CONTENT) < 1_000_000:
            _CONTENT[w] = c
    return c


def content_set(tokens: list[str]) -> frozenset[str]:
    """The content words of a token list (stop words out, plural 's' off); all the words when
    every one is a stop word, so "What is this?" still has a set."""
    out = frozenset(map(_content_word, tokens))
    out = out - {""} if "" in out else out
    return out if out else frozenset(tokens)


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


_LEAD_INS = (("can", "you", "please", "tell", "me"), ("can", "you", "tell", "me"),
             ("could", "you", "please", "tell", "me"), ("could", "you", "tell", "me"),
             ("would", "you", "tell", "me"), ("please", "tell", "me"), ("tell", "me"),
             ("do", "you", "know"), ("can", "you", "see"), ("please",),
             ("in", "the", "image"), ("in", "this", "image"), ("in", "the", "picture"),
             ("in", "this", "picture"), ("in", "the", "photo"), ("in", "this", "photo"),
             ("looking", "at", "the", "image"), ("based", "on", "the", "image"))


_LEAD_FIRST = frozenset(lead[0] for lead in _LEAD_INS)


def _lead_in(tokens: list[str]) -> int:
    """How many leading words are a lead-in ("can you tell me", "in the image") to skip."""
    n = 0
    if not tokens or tokens[0] not in _LEAD_FIRST:
        return 0
    again = True
    while again:
        again = False
        for lead in _LEAD_INS:
            if tuple(tokens[n:n + len(lead)]) == lead:
                n += len(lead)
                again = True
                break
    return n


def comparable_type(qtype: str | None) -> str | None:
    """Question types that may ask the same thing: "which colour" and "what colour" are one."""
    return "what" if qtype == "which" else qtype


def question_type(tokens: list[str]) -> str:
    """what / how many / which / who / where / when / why / how / yes/no / imperative / other,
    from the first words (a lead-in such as "In the image, what …" is skipped)."""
    lead = _lead_in(tokens)
    tokens = tokens[lead:] if lead < len(tokens) else tokens
    if not tokens:
        return "other"
    first = tokens[0]
    if first in _AUX:
        return "yes/no"
    if first in _IMPERATIVE:
        return "imperative"
    for i, w in enumerate(tokens[:10]):
        kind = _WH.get(w)
        if kind:
            if kind == "how" and i + 1 < len(tokens) and tokens[i + 1] in ("many", "much"):
                return "how many"
            return kind
    return "other"


# ----------------------------------------------------------------------------------------------
# Multiple choice

_OPTION_RE = re.compile(r"(?:^|(?<=\s)|(?<=\())\(?([A-H])[\.\):]\s+(.+?)\s*(?=\s\(?[A-H][\.\):]\s|$)",
                        re.MULTILINE)
_JSON_OPTION_RE = re.compile(r'"([A-H])"\s*:\s*"([^"]*)"')
_LETTER_ANSWER_RE = re.compile(
    r"^\W*((?i:(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)\s*(?:is|:)?\s*))?(\()?([A-H])"
    r"(?=[\.\):,]|\s|$)")
_LETTER_ANYWHERE_RE = re.compile(r"(?i:\b(?:answer|option|choice)\s*(?:is|:)?\s*)\(?([A-H])\b")


def options(question: str) -> dict[str, str]:
    """The options a question offers, ``{"A": "text", …}``: lines or runs like ``A. …``,
    ``(B) …``, ``C) …``, ``D: …`` or a JSON object ``{"A": "…"}``. Fewer than two options, or
    letters that do not start at A and run on, mean it is not multiple choice (empty dict)."""
    if "A" not in question:  # options start at A
        return {}
    found: dict[str, str] = {}
    for letter, text in _JSON_OPTION_RE.findall(question):
        found.setdefault(letter, text.strip())
    if not found:
        for m in _OPTION_RE.finditer(question):
            found.setdefault(m.group(1), m.group(2).strip())
    letters = sorted(found)
    if len(letters) < 2 or letters != [chr(ord("A") + i) for i in range(len(letters))]:
        return {}
    return found


def answer_matches_options(answer: str, opts: dict[str, str]) -> bool:
    """Whether ``answer`` picks one of ``opts``: by letter (``B``, ``(B)``, ``B. cat``,
    ``The answer is B``) or by an option's text (case and punctuation ignored)."""
    text = answer.strip()
    m = _LETTER_ANSWER_RE.match(text)
    if m and m.group(3) in opts:
        rest = text[m.end():]
        # "A dog is …" is prose, not option A: a bare "A" must stand alone or be marked ("A.")
        if not (m.group(3) == "A" and not m.group(1) and not m.group(2)
                and rest[:1].isspace() and rest.strip()):
            return True
    m = _LETTER_ANYWHERE_RE.search(text)
    if m and m.group(1).upper() in opts:
        return True
    norm = normalise(text)
    for value in opts.values():
        v = normalise(value)
        if v and (norm == v or norm.startswith(v + " ") or norm.endswith(" " + v)
                  or f" {v} " in f" {norm} " and len(v.split()) >= 2):
            return True
    return False


# ----------------------------------------------------------------------------------------------
# Refusals

_REFUSAL_RE = re.compile(
    r"\b(?:i\s*(?:'|’)?\s*m|i\s+am)\s+(?:so\s+|very\s+|really\s+)?sorry\b"
    r"|\bi\s+apologi[sz]e\b|\bmy\s+apologies\b|\bapologies,"
    r"|\bas\s+an?\s+(?:ai|language\s+model|text[- ]based)\b"
    r"|\bi(?:\s*(?:'|’)\s*m|\s+am)?\s+(?:can\s*not|can't|can’t|cannot|unable\s+to|not\s+able\s+to"
    r"|do\s+not|don't|don’t|won't|won’t|will\s+not)\s+(?:see|view|access|open|perceive|look\s+at"
    r"|identify|determine|tell|answer|provide|help|assist|analy[sz]e|describe|process|comply"
    r"|make\s+out|read|display|have\s+access|have\s+the\s+ability)\b"
    r"|\bunable\s+to\s+(?:see|view|access|open|process|analy[sz]e|display)\s+(?:the\s+|this\s+|any\s+)?"
    r"(?:image|picture|photo|attachment|visual)"
    r"|\b(?:no|without\s+an?|there\s+is\s+no)\s+(?:image|picture|photo)\s+(?:was\s+|is\s+|has\s+been\s+)?"
    r"(?:provided|attached|shown|uploaded|included|available|given)"
    r"|\b(?:the\s+)?(?:image|picture|photo)\s+(?:is|was)\s+not\s+(?:provided|attached|visible|"
    r"available|included|loaded|shown)"
    r"|\bplease\s+(?:provide|upload|share|attach)\s+(?:the|an|a)\s+(?:image|picture|photo)",
    re.IGNORECASE)


#: every alternative of _REFUSAL_RE contains one of these (lower case)
_REFUSAL_TRIGGERS = re.compile("sorry|apolog|as a|not|n't|n’t|unable|no |without|please")


def refusal_match(answer: str) -> str | None:
    """The phrase that makes ``answer`` a refusal (declines, apologises, or says it cannot see
    the image), else None. Only the answer's first 300 characters are read: a refusal says so at
    once, while a long answer may quote a sign that reads "sorry"."""
    head = answer[:300]
    if not _REFUSAL_TRIGGERS.search(head.lower()):  # the full regex is slow; most answers stop here
        return None
    m = _REFUSAL_RE.search(head)
    return m.group(0) if m else None


# ----------------------------------------------------------------------------------------------
# A sample's question and answer


def strip_question(text: str, mode: Mode | None, variant: str | None) -> str:
    """The human turn without its image token and without the suffix this project adds per
    variant (so the reasoning and concise samples of one item share a question)."""
    q = _IMAGE_TOKEN_RE.sub("", text).strip()
    if mode is not None and variant in ("reasoning", "concise"):
        suffix = REASONING_SUFFIX if variant == "reasoning" else CONCISE_SUFFIX
        if q.endswith(suffix):
            q = q[: -len(suffix)].rstrip()
    return q


def final_answer(answer: str, variant: str | None) -> str:
    """The answer proper: a reasoning sample's answer is "reasoning\\nanswer", so its last line."""
    if variant == "reasoning":
        lines = [ln for ln in answer.strip().splitlines() if ln.strip()]
        return lines[-1] if lines else ""
    return answer


def conversation_problem(sample: dict[str, Any], conv: list[dict[str, Any]]) -> str | None:
    """The multi-turn (``conversation``) rules: an image; an even number of turns alternating
    human/gpt; ``<image>`` in the first question only; no empty turn; no question asked twice (the
    turns must build on each other, not repeat)."""
    if not (sample.get("image_1") or sample.get("image")):
        return "no image on a conversation sample"
    if len(conv) % 2:
        return f"{len(conv)} turns: a conversation ends with the assistant's answer"
    roles = [t.get("from") for t in conv]
    if roles != ["human", "gpt"] * (len(conv) // 2):
        return "turns do not alternate human/gpt"
    if any(_IMAGE_TOKEN_RE.search(t["value"]) for t in conv[1:]):
        return "an <image> token after the first question"
    seen: dict[str, int] = {}
    for k in range(0, len(conv), 2):
        q = " ".join(words(_IMAGE_TOKEN_RE.sub("", conv[k]["value"])))
        if not q or not conv[k + 1]["value"].strip():
            return f"turn {k // 2 + 1} has an empty {'question' if not q else 'answer'}"
        if q in seen:
            return f"turn {k // 2 + 1} repeats the question of turn {seen[q]}"
        seen[q] = k // 2 + 1
    return None


def shape_problem(sample: dict[str, Any], mode: Mode | None, description: str) -> str | None:
    """Why the sample breaks its mode's shape (None when it does not): two turns, human then gpt,
    string values; an image for every mode but tqa and none for tqa; vqa-style samples marked
    reasoning/concise with the matching question suffix; description modes asking to describe."""
    conv = sample.get("conversations")
    if not isinstance(conv, list) or len(conv) < 2:
        return "no question/answer conversation"
    if not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in conv):
        return "a turn without a text 'value'"
    if conv[0].get("from") != "human" or conv[1].get("from") != "gpt":
        return "turns are not human then gpt"
    if mode is None:
        return None
    if mode.one_sample_per_prompt:
        return conversation_problem(sample, conv)
    if len(conv) != 2:
        return f"{len(conv)} turns; mode {mode.value} writes exactly 2"
    image = sample.get("image_1") or sample.get("image")
    if mode is Mode.TQA and image:
        return "an image on a tqa sample (tqa samples are text only)"
    if mode is not Mode.TQA and not image:
        return f"no image on a {mode.value} sample"
    variant = sample.get("variant")
    q = _IMAGE_TOKEN_RE.sub("", conv[0]["value"]).strip()
    if mode in (Mode.VQA, Mode.VQA_TASK_DESC, Mode.TQA):
        if variant not in ("reasoning", "concise"):
            return f"variant {variant!r}; mode {mode.value} writes 'reasoning' or 'concise'"
        suffix = REASONING_SUFFIX if variant == "reasoning" else CONCISE_SUFFIX
        if not q.endswith(suffix):
            return f"a {variant} question without its suffix {suffix!r}"
    elif mode.is_description:
        if q != describe_question(mode, description) and not q.startswith("Describe this image"):
            return "a description sample that does not ask for a description"
    return None
