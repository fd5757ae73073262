"""A CLIP model spec parsed once is not parsed again in a new process (no open_clip, so no torch,
in the app's server for a spec it already checked), and a changed or removed checkpoint is
parsed again (its error said in full)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mminstruct.embed import clip
from mminstruct.errors import ModelSpecError
from tests.fixtures.app import REPO

PROBE = """
import json, sys
from mminstruct.embed.clip import parse_model_spec
try:
    ms = parse_model_spec(sys.argv[1])
    out = {"kind": ms.kind, "arch": ms.arch, "pretrained": ms.pretrained}
except Exception as e:  # the probe reports any failure
    out = {"error": f"{type(e).__name__}: {e}"}
out["torch"] = "torch" in sys.modules
out["open_clip"] = "open_clip" in sys.modules
print(json.dumps(out))
"""


def probe(spec: str, cache: Path) -> dict:
    env = dict(os.environ, MMINSTRUCT_CACHE_DIR=str(cache), PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", PROBE, spec], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_spec_parsed_before_needs_no_open_clip_in_a_new_process(tiny_clip, tmp_path: Path) -> None:
    ckpt = tmp_path / "model.pt"
    shutil.copy(tiny_clip.checkpoint, ckpt)
    spec = f"{tiny_clip.config_path}:{ckpt}"
    cache = tmp_path / "cache"
    first = probe(spec, cache)
    assert first["kind"] == "checkpoint" and first["open_clip"], first
    again = probe(spec, cache)
    assert again == dict(first, torch=False, open_clip=False), again
    # a changed checkpoint: parsed again (and still good)
    ckpt.write_bytes(ckpt.read_bytes() + b"\0")
    assert probe(spec, cache)["open_clip"]
    # a removed one: the full error, not the memo
    ckpt.unlink()
    gone = probe(spec, cache)
    assert "not found" in gone.get("error", ""), gone


def test_the_memo_holds_what_was_parsed_and_is_checked_against_the_files(
        tiny_clip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMINSTRUCT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(clip, "_SPEC_MEMO", {})
    ckpt = tmp_path / "model.pt"
    shutil.copy(tiny_clip.checkpoint, ckpt)
    spec = f"{tiny_clip.config_path}:{ckpt}"
    ms = clip.parse_model_spec(spec)
    memo = json.loads((tmp_path / "cache" / clip.SPEC_MEMO_FILE).read_text())
    (entry,) = memo.values()
    assert entry["spec"]["pretrained"] == str(ckpt.resolve())
    monkeypatch.setattr(clip, "_SPEC_MEMO", {})  # as a new process: only the file
    assert clip._memoised_spec(spec) == ms
    ckpt.unlink()
    monkeypatch.setattr(clip, "_SPEC_MEMO", {})
    assert clip._memoised_spec(spec) is None
    with pytest.raises(ModelSpecError, match="not found"):
        clip.parse_model_spec(spec)
    # in the same process too: a memo hit whose file is gone is parsed again
    shutil.copy(tiny_clip.checkpoint, ckpt)
    clip.parse_model_spec(spec)
    ckpt.unlink()
    with pytest.raises(ModelSpecError, match="not found"):
        clip.parse_model_spec(spec)
