"""Every error class the core raises, in one place.

Hierarchy::

    MMInstructError                 base of everything the core raises on purpose
    ├── InputError                  the user's input is wrong; the CLI prints one line and exits 2
    │   ├── ConfigError             a bad option value (unknown mode, negative count, …)
    │   ├── DataFileError           a file cannot be loaded at all (not JSON, wrong top-level shape)
    │   ├── UnsafePathError         an image path is absolute or escapes its root
    │   ├── ImageError              an image is missing, unreadable, or too large to decode safely
    │   ├── ModelSpecError          an unknown CLIP architecture or pretrained tag
    │   ├── RayUnavailableError     (a ConfigError) Ray is asked for but not installed
    │   └── DamagedWorkspaceError   (a ConfigError) workspace.json exists but cannot be read
    ├── ClusterError                the Ray cluster cannot be reached, or a job failed inside it
    └── GenerationError             step 3
        ├── MergeError              shard outputs that cannot be merged
        └── LLMError …              one request's failure: its classes live in mminstruct.llm.errors,
                                    beside the retry rules they carry

Messages name the bad value and, where there is a closed set, list the valid options.
Per-record problems in a data file are *not* raised: they go into a LoadReport and the record is
skipped, so one bad record never stops a load.
"""

from __future__ import annotations

from collections.abc import Iterable


class MMInstructError(Exception):
    """Base class of every error the core raises on purpose."""


class InputError(MMInstructError):
    """The user's input (a flag, a file, a record) is wrong."""


class ConfigError(InputError):
    """A configuration value is invalid."""


class DamagedWorkspaceError(ConfigError):
    """A workspace's settings file exists but cannot be read; ``last_good`` is the id of the
    newest history entry that can be restored (None: none)."""

    def __init__(self, message: str, root: str = "", last_good: int | None = None):
        super().__init__(message)
        self.root = root
        self.last_good = last_good


class DataFileError(InputError):
    """A data, task or prompt file cannot be loaded at all."""


class UnsafePathError(InputError):
    """An image path is absolute or escapes the folder it must stay under."""


class ImageError(InputError):
    """An image is missing, cannot be decoded, or is too large to decode safely."""


class ModelSpecError(InputError):
    """An unknown CLIP architecture, pretrained tag or checkpoint."""


class RayUnavailableError(ConfigError):
    """Ray is not installed (it is optional: ``pip install -r requirements-ray.txt``)."""


class ClusterError(MMInstructError):
    """The Ray cluster cannot be reached, or a distributed job failed inside it."""


class GenerationError(MMInstructError):
    """Base of step 3's errors."""


class MergeError(GenerationError):
    """Shard outputs that cannot be merged (different modes or input folders)."""


def choices_message(kind: str, value: object, valid: Iterable[object], limit: int = 40) -> str:
    """``unknown mode 'vqq'; choose one of: vqa, vqa_nr, …`` — the shape of every closed-set error."""
    names = [str(v) for v in valid]
    shown = ", ".join(names[:limit])
    if len(names) > limit:
        shown += f", … ({len(names) - limit} more)"
    return f"unknown {kind} {value!r}; choose one of: {shown}"
