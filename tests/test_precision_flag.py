"""``--precision`` through the task-file builder: validated on the config, handed to the embedder."""

from __future__ import annotations

from pathlib import Path

import pytest

from mminstruct.commands import task as task_file_generator
from mminstruct.partition import taskfile
from mminstruct.errors import ConfigError
from mminstruct.partition.taskfile import TaskFileConfig
from tests.fixtures.images import make_shapes_dataset

KEYWORDS = ["red circle", "blue square"]


def test_config_takes_the_four_values_and_refuses_others(tiny_clip) -> None:
    kw = dict(data_file="d.json", keywords=["a"], clip_model=tiny_clip.spec)
    assert TaskFileConfig(**kw).precision == "auto"
    for value in ("fp32", "bf16", "int8", " AUTO "):
        assert TaskFileConfig(**kw, precision=value).precision == value.strip().lower()
    with pytest.raises(ConfigError, match="unknown precision 'fp8'; choose one of: fp32, bf16, int8, auto"):
        TaskFileConfig(**kw, precision="fp8")
    with pytest.raises(ConfigError, match="precision must be a string"):
        TaskFileConfig(**kw, precision=16)


def test_cli_flag_reaches_embed_images(tiny_clip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("MMINSTRUCT_CACHE_DIR", str(tmp_path / "cache"))
    shapes = make_shapes_dataset(tmp_path / "shapes", n_ref=4, n_pool=6)
    seen: list[str] = []
    real = taskfile.embed_images

    def spy(*a, **k):
        seen.append(k["precision"])
        return real(*a, **k)

    monkeypatch.setattr(taskfile, "embed_images", spy)
    rc = task_file_generator.main([
        "--data_file", "data.json", "--input_folder", str(shapes.root), "--output_folder",
        str(tmp_path / "out"), "--keywords", *KEYWORDS, "--model_name", tiny_clip.spec,
        "--gpu", "-1", "--candidate_folder", "pool", "--num_workers", "0", "--precision", "INT8"])
    assert rc == 0 and seen == ["int8", "int8"]  # reference images, then candidates
    rc = task_file_generator.main(["--data_file", "data.json", "--input_folder", str(shapes.root),
                                   "--keywords", "a", "--model_name", tiny_clip.spec,
                                   "--precision", "fp8"])
    assert rc == 2 and "unknown precision 'fp8'" in capsys.readouterr().err
