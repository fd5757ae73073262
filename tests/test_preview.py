"""The app's token and cost estimate counts a run as the engine will send it."""

from __future__ import annotations

from pathlib import Path

from mminstruct.data.formats import load_prompt_file
from mminstruct.app.preview import estimate_run, render_request
from tests.fixtures.llm import make_prompt_workspace


def test_the_estimate_counts_every_request_as_the_engine_builds_it(tmp_path: Path) -> None:
    ws = make_prompt_workspace(tmp_path, "vqa", 6, min_gen=2)
    pf = load_prompt_file(ws.prompt_file)
    est = estimate_run(pf, ws.input_folder, "gpt-4o", max_image_side=512)
    built = [render_request(pf, i, ws.input_folder, max_image_side=512) for i in range(len(pf.prompts))]
    assert est.exact and est.missing_images == 0
    assert est.input_tokens == sum(b.token_estimate for b in built)
    # images are most of a vision request: each costs at least OpenAI's 85 base tokens + one tile
    n_images = sum(1 for b in built for part in b.messages[1]["content"] if part["type"] == "image_url")
    assert est.image_tokens >= n_images * (85 + 170)
    assert est.cost.usd is not None and est.cost.usd > 0
