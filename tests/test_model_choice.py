"""The CLIP model as a setting: a spec checked before any work (whole messages), the checkpoints on
this machine offered, a download that cannot happen refused at once, and the Explore page
re-embedding from the chosen model's cache."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from mminstruct.errors import ModelSpecError
from mminstruct.app.model_choice import (check_spec, found_checkpoints, ready_to_load, recent_models,
                                     remember_model)
from mminstruct.app.workspace import Workspace
from tests.fixtures.app import app_test, no_errors
from tests.fixtures.clip import make_tiny_clip

TAG = "ViT-B-32:laion2b_s34b_b79k"


@pytest.fixture
def empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No open_clip or Hugging Face cache on "this machine"."""
    from huggingface_hub import constants

    home = tmp_path / "userhome"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hf"))
    monkeypatch.setenv("MMINSTRUCT_HOME", str(tmp_path / "mmi_home"))
    return home


def test_a_checkpoint_spec_is_local(tiny_clip) -> None:
    for spec in (tiny_clip.spec, tiny_clip.registered_spec, f"  {tiny_clip.spec} "):
        mc = check_spec(spec)
        assert mc.local and mc.kind == "checkpoint" and mc.spec == spec.strip()
        assert Path(mc.where) == tiny_clip.checkpoint


def test_bad_specs_say_why_in_full(tmp_path: Path, tiny_clip) -> None:
    with pytest.raises(ModelSpecError, match="not found"):
        check_spec(f"{tiny_clip.arch}:{tmp_path / 'missing.pt'}")
    with pytest.raises(ModelSpecError, match="model config file"):
        check_spec(f"{tmp_path / 'nope.json'}:{tiny_clip.checkpoint}")
    bad_cfg = tmp_path / "bad-arch.json"
    bad_cfg.write_text("{}")
    with pytest.raises(ModelSpecError, match="not an open_clip model config"):
        check_spec(f"{bad_cfg}:{tiny_clip.checkpoint}")
    with pytest.raises(ModelSpecError) as e:
        check_spec("ViT-B-32:no-such-tag")
    assert "laion2b_s34b_b79k" in str(e.value)  # the valid tags are listed, not cut
    with pytest.raises(ModelSpecError, match="expected hf-hub:ORG/NAME"):
        check_spec("hf-hub:nothing")


def test_offline_download_fails_at_once_with_what_to_do(empty_caches, tiny_clip,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    remember_model(tiny_clip.spec)
    mc = check_spec(TAG)
    assert not mc.local
    t0 = time.perf_counter()
    with pytest.raises(ModelSpecError) as e:
        ready_to_load(TAG)
    assert time.perf_counter() - t0 < 5
    msg = str(e.value)
    assert "HF_HUB_OFFLINE is set" in msg and "ARCH:/path/to/checkpoint.pt" in msg
    assert tiny_clip.spec in msg  # the checkpoint found here is offered
    assert ready_to_load(tiny_clip.spec).local  # a local one is fine offline


def test_found_checkpoints_lists_caches_and_recent_paths(empty_caches, tiny_clip) -> None:
    assert all(not s.startswith("ViT") for s, _ in found_checkpoints())
    # a tag whose weights are in Hugging Face's cache (layout: models--ORG--NAME/snapshots/REV/)
    import open_clip
    from huggingface_hub import constants

    hub = open_clip.get_pretrained_cfg("ViT-B-32", "laion2b_s34b_b79k")["hf_hub"]
    model_id, filename = hub.rstrip("/").rsplit("/", 1) if not hub.endswith("/") else (hub[:-1], "")
    repo = Path(constants.HF_HUB_CACHE) / f"models--{model_id.replace('/', '--')}"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (snap / (filename or "open_clip_pytorch_model.bin")).write_bytes(b"weights")
    remember_model(tiny_clip.spec)
    remember_model("ViT-B-32:/gone/away.pt")  # a recent path that no longer exists: not offered
    specs = [s for s, _ in found_checkpoints()]
    assert TAG in specs and tiny_clip.spec in specs
    assert "ViT-B-32:/gone/away.pt" not in specs
    assert recent_models()[:2] == ["ViT-B-32:/gone/away.pt", tiny_clip.spec]
    assert check_spec(TAG).local


def _metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_explore_refuses_a_download_offline_at_once(demo_ws: Workspace,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    empty_caches) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    demo_ws.settings.partition.clip_model = TAG
    demo_ws.settings.partition.projection = "pca"
    demo_ws.save()
    at = app_test(demo_ws).run()
    t0 = time.perf_counter()
    at.switch_page("pages/2_explore.py").run()
    assert time.perf_counter() - t0 < 20
    errors = [e.value.replace("\\", "") for e in at.error]
    assert len(errors) == 1 and "HF_HUB_OFFLINE is set" in errors[0]
    assert errors[0].rstrip().endswith("copy the Hugging Face cache here.")  # whole, not cut
    assert not at.metric  # nothing embedded


def test_changing_the_model_reembeds_from_its_cache(demo_ws: Workspace, tiny_clip,
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    other = make_tiny_clip(tmp_path / "other_clip", seed=1)
    demo_ws.settings.partition.projection = "pca"
    demo_ws.save()
    at = app_test(demo_ws).run()
    at.switch_page("pages/2_explore.py").run()
    no_errors(at)
    assert _metrics(at)["Embedded now / from cache"] == "72 / 0"
    other_spec = f"{other.config_path}:{other.checkpoint}"
    at.text_input(key="ex_clip_model").set_value(other_spec).run()
    no_errors(at)
    assert Workspace.open(demo_ws.root).settings.partition.clip_model == other_spec
    assert _metrics(at)["Embedded now / from cache"] == "72 / 0"  # another model: embedded anew
    at.text_input(key="ex_clip_model").set_value(tiny_clip.spec).run()
    no_errors(at)
    m = _metrics(at)["Embedded now / from cache"]
    assert m == "0 / 72", m  # the first model's vectors again (memory, else its disk cache)
    # a bad spec is refused with the whole reason; the setting and the map stay
    at.text_input(key="ex_clip_model").set_value(f"{tiny_clip.arch}:/no/such.pt").run()
    assert any("not found" in e.value for e in at.error)
    assert Workspace.open(demo_ws.root).settings.partition.clip_model == tiny_clip.spec
    assert at.text_input(key="ex_clip_model").value == f"{tiny_clip.arch}:/no/such.pt"


def test_choosing_a_model_found_on_this_machine(demo_ws: Workspace, tiny_clip, tmp_path: Path,
                                                empty_caches,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    other = make_tiny_clip(tmp_path / "found_clip", seed=2)
    spec = f"{other.config_path}:{other.checkpoint}"
    remember_model(spec)
    demo_ws.settings.partition.projection = "pca"
    demo_ws.save()
    at = app_test(demo_ws).run()
    at.switch_page("pages/2_explore.py").run()
    from ui.model_picker import _found

    _found.clear()
    at.run()
    assert not [s for s in at.selectbox if s.key == "ex_clip_model:found"]
    at.button(key="ex_clip_model:find").click().run()  # finding them imports open_clip: asked
    pick = at.selectbox(key="ex_clip_model:found")
    assert spec in pick.options or any(spec in o for o in pick.options)
    pick.set_value(spec).run()
    no_errors(at)
    assert Workspace.open(demo_ws.root).settings.partition.clip_model == spec
    assert at.text_input(key="ex_clip_model").value == spec
    shutil.rmtree(tmp_path / "found_clip")


def test_a_checkpoint_that_fails_to_load_shows_the_whole_error(demo_ws: Workspace, tmp_path: Path,
                                                               tiny_clip,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint " * 40)
    demo_ws.settings.partition.clip_model = f"{tiny_clip.config_path}:{bad}"
    demo_ws.settings.partition.projection = "pca"
    demo_ws.save()
    at = app_test(demo_ws).run()
    at.switch_page("pages/2_explore.py").run()
    assert any("Cannot embed this workspace's images" in e.value for e in at.error)
    whole = [c.value for c in at.code]
    assert whole and all(not v.endswith("…") for v in whole)
