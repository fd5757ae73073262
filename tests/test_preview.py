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


def test_image_tokens_follow_openais_high_detail_rule_computed_by_hand() -> None:
    from mminstruct.app.preview import image_tokens
    from mminstruct.llm.requests import EncodedImage
    # OpenAI's worked examples: 1024² → 768² → 4 tiles; 2048×4096 → 768×1536 → 6 tiles
    assert EncodedImage("", 1024, 1024).token_estimate() == 85 + 170 * 4
    assert EncodedImage("", 2048, 4096).token_estimate() == 85 + 170 * 6
    # fit in 2048² by the LONGER side: 8000×1000 → 2048×256 (short side under 768: kept) → 4×1
    assert EncodedImage("", 8000, 1000).token_estimate() == 85 + 170 * 4
    # sent downscaled so the longer side is max_side: 2000×1000 at 1024 → 1024×512 → 2×1 tiles
    assert image_tokens(2000, 1000, 1024) == 85 + 170 * 2
    assert image_tokens(1000, 2000, 1024) == 85 + 170 * 2
    assert image_tokens(300, 200, 1024) == 85 + 170  # never upscaled


def test_the_estimate_of_a_run_counts_image_tokens_of_the_images_real_sizes(tmp_path: Path) -> None:
    import json

    from PIL import Image

    from mminstruct.data.formats import is_prompt_image
    ws = make_prompt_workspace(tmp_path, "vqa", 3, min_gen=1)
    for img in [p for p in ws.input_folder.rglob("*") if p.suffix in (".jpg", ".png")]:
        Image.new("RGB", (2000, 1000), (200, 30, 30)).save(img)
    parts = [p for e in json.loads(ws.prompt_file.read_text())["prompts"] for p in e["prompt"]]
    n_images = sum(map(is_prompt_image, parts))
    assert n_images >= 3
    est = estimate_run(load_prompt_file(ws.prompt_file), ws.input_folder, "gpt-4o",
                       max_image_side=1024)
    assert est.exact and est.missing_images == 0
    assert est.image_tokens == n_images * (85 + 170 * 2)  # 1024×512 each, computed by hand
