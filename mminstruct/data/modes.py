"""Generation modes: what a prompt carries and which keys the model's JSON items must have.

``conversation`` is the multi-turn mode (LLaVA-Instruct's largest subset): a prompt asks for one
conversation of N turns about its image (N = the prompt file's ``min_gen_per_candidate``), each
turn ``{"Q", "A"}`` building on the previous answers; the N items of one answer become ONE sample
of 2N turns (``one_sample_per_prompt``)."""

from __future__ import annotations

from enum import Enum

from mminstruct.errors import ConfigError, choices_message


class Mode(str, Enum):
    VQA = "vqa"
    VQA_NR = "vqa_nr"
    TQA = "tqa"
    DESCRIPT = "descript"
    GENERIC = "generic"
    VQA_TASK_DESC = "vqa_task_desc"
    DESCRIPT_TASK_DESC = "descript_task_desc"
    CONVERSATION = "conversation"

    def __str__(self) -> str:  # argparse and f-strings show the value
        return self.value

    @property
    def carries_icl(self) -> bool:
        """Only these modes show in-context examples from the reference set."""
        return self in (Mode.VQA, Mode.VQA_NR, Mode.TQA, Mode.DESCRIPT, Mode.CONVERSATION)

    @property
    def carries_candidate(self) -> bool:
        """tqa asks the model to imagine an image, so it is shown none."""
        return self is not Mode.TQA

    @property
    def keys(self) -> tuple[str, ...]:
        """Keys every generated JSON item must have, in output order."""
        return _KEYS[self]

    @property
    def is_description(self) -> bool:
        return self in (Mode.DESCRIPT, Mode.GENERIC, Mode.DESCRIPT_TASK_DESC)

    @property
    def one_sample_per_prompt(self) -> bool:
        """The items of one answer are the turns of one multi-turn sample (``conversation``)."""
        return self is Mode.CONVERSATION


_KEYS: dict[Mode, tuple[str, ...]] = {
    Mode.VQA: ("Q", "R", "A"),
    Mode.VQA_NR: ("Q", "A"),
    Mode.TQA: ("I", "Q", "R", "A"),
    Mode.DESCRIPT: ("A",),
    Mode.GENERIC: ("A",),
    Mode.VQA_TASK_DESC: ("Q", "R", "A"),
    Mode.DESCRIPT_TASK_DESC: ("A",),
    Mode.CONVERSATION: ("Q", "A"),
}

MODE_NAMES: tuple[str, ...] = tuple(m.value for m in Mode)


def parse_mode(value: str | Mode) -> Mode:
    """``'vqa'`` → ``Mode.VQA``; anything else raises with the list of valid modes."""
    if isinstance(value, Mode):
        return value
    try:
        return Mode(str(value).strip().lower())
    except ValueError as e:
        raise ConfigError(choices_message("mode", value, MODE_NAMES)) from e
