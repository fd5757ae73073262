"""``--dry_run``: write the exact requests as OpenAI Batch API input files and call nothing.

Each line is ``{"custom_id": "<prompt index>", "method": "POST", "url": "/v1/chat/completions",
"body": {…}}`` with the same body the engine would send (system prompt, prompt list with images as
data URLs, generation prompt, model and options). The Batch API takes at most 50,000 requests and
200 MB per file, so larger runs are split into numbered parts. A prompt whose image is missing is
left out and listed in the sidecar ``manifests/….batch.manifest.json``. Files are written atomically.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mminstruct.cache import atomic_write_json, atomic_writer
from mminstruct.data.formats import generated_dir
from mminstruct.llm.errors import BadPromptError, ImageFileError
from mminstruct.llm.requests import batch_line, generation_prompt, response_schema, system_prompt
from mminstruct.generate.batch_files import line_fits
from mminstruct.generate.config import GenerationConfig
from mminstruct.generate.control import RunStatus
from mminstruct.generate.job import RunResult, Shared, build_request
from mminstruct.generate.jsonstream import PromptStream
from mminstruct.generate.manifest import MANIFESTS_DIR
from mminstruct.generate.runlog import unique_output_path

log = logging.getLogger(__name__)

WINDOW = 64


async def dry_run(cfg: GenerationConfig, stream: PromptStream, start: int, n: int,
                  shared: Shared | None,
                  body_of: Callable[[Any, Any], Awaitable[dict[str, Any]]] | None = None
                  ) -> RunResult:
    """``body_of(entry, encoder)`` → body replaces ``build_request`` for another kind of run (the
    judge's); the files, their parts and the sidecar are the same."""
    own = shared is None
    shared = shared or Shared.build(cfg, with_client=False)
    pf = stream.header
    mode = pf.mode
    system = system_prompt(mode, pf.dataset_description)
    generate = generation_prompt(mode, pf.min_gen_per_candidate)
    fmt = response_schema(mode) if cfg.structured_outputs else None
    data_dir = generated_dir(cfg.output_folder)
    # the sidecar goes with the manifests, out of MM-Gen merge.py's *.json glob
    manifest = unique_output_path(data_dir / MANIFESTS_DIR, cfg.file_prefix, ".batch.manifest.json")
    base = data_dir / manifest.name.removesuffix(".batch.manifest.json")
    skipped: list[dict[str, Any]] = []
    written = 0
    try:
        async def build(idx: int, entry: Any) -> tuple[int, str | None, dict | None]:
            try:  # a malformed entry arrives as its BadPromptError, which build_request raises
                if body_of is not None:
                    body = await body_of(entry, shared.encoder)
                else:
                    body, _ = await build_request(cfg, mode, system, generate, entry,
                                                  shared.encoder, fmt)
            except (ImageFileError, BadPromptError) as e:
                return idx, None, {"prompt_idx": idx, "error_class": e.kind, "message": str(e)}
            return idx, json.dumps(batch_line(idx, body), ensure_ascii=False), None

        parts = _PartWriter(base, cfg.batch_max_requests, cfg.batch_max_bytes)
        try:
            window: list[tuple[int, Any]] = []

            async def flush() -> None:
                nonlocal written
                for idx, line, problem in await asyncio.gather(*(build(i, e) for i, e in window)):
                    if problem is not None:
                        skipped.append(problem)
                        log.warning("prompt %d left out: %s", idx, problem["message"])
                    else:
                        parts.write(line)
                        written += 1
                window.clear()

            for idx, entry in stream.entries(start, start + n):
                window.append((idx, entry))
                if len(window) >= WINDOW:
                    await flush()
            await flush()
        except BaseException as e:
            parts.abort(e)
            raise
        files = parts.close()
    finally:
        if own:
            await shared.aclose()
    if len(files) == 1:
        final = base.with_name(base.name + ".batch.jsonl")
        files[0].replace(final)
        files = [final]
    atomic_write_json(manifest, {
        "batch_files": [str(f) for f in files], "requests": written, "prompts": n,
        "start_idx": start, "model": cfg.generator_model, "mode": mode.value,
        "parameters": cfg.public_json(), "skipped": len(skipped),
        "skipped_prompts": skipped[:1000]})
    status = RunStatus(state="dry_run", model=cfg.generator_model, mode=mode.value, total=n,
                       done=written, failed=len(skipped),
                       message=f"{written} requests written to {len(files)} file(s); "
                               f"{len(skipped)} prompt(s) left out")
    return RunResult("dry_run", None, None, manifest, status, status.message, files)


class _PartWriter:
    """Numbered Batch API files ``{base}.batch_001.jsonl``…, each written atomically."""

    def __init__(self, base: Path, max_requests: int, max_bytes: int):
        self.base = base
        self.max_requests, self.max_bytes = max_requests, max_bytes
        self.files: list[Path] = []
        self._cm: Any = None
        self._f: Any = None
        self._lines = 0
        self._bytes = 0

    def _open(self) -> None:
        path = self.base.with_name(f"{self.base.name}.batch_{len(self.files) + 1:03d}.jsonl")
        self._cm = atomic_writer(path, "w")
        self._f = self._cm.__enter__()
        self.files.append(path)
        self._lines = self._bytes = 0

    def write(self, line: str) -> None:
        if self._f is None or not line_fits(self._lines, self._bytes, line, self.max_requests,
                                            self.max_bytes):
            self._close_part()
            self._open()
        self._f.write(line + "\n")
        self._lines += 1
        self._bytes += len(line.encode()) + 1

    def _close_part(self) -> None:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
            self._cm = self._f = None

    def abort(self, e: BaseException) -> None:
        if self._cm is not None:
            self._cm.__exit__(type(e), e, e.__traceback__)  # removes the temporary file
            self._cm = self._f = None
        for f in self.files[:-1]:
            f.unlink(missing_ok=True)

    def close(self) -> list[Path]:
        if self._f is None:
            self._open()  # an empty file rather than none
        self._close_part()
        return self.files
