"""Units of mminstruct.llm: limiter, error rules and classification, secrets, prices, requests."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx2
import openai
import pytest
from PIL import Image

from mminstruct.errors import ConfigError
from mminstruct.data.formats import PromptEntry
from mminstruct.llm import errors as E
from mminstruct.llm.client import EndpointConfig, RedactingFilter, build_client
from mminstruct.llm.limiter import RateLimiter
from mminstruct.generate.manifest import estimate_cost
from mminstruct.llm.requests import (ImageEncoder, build_messages, generation_prompt,
                                     response_schema, system_prompt)
from mminstruct.data.modes import Mode
from tests.fixtures.llm import make_prompt_workspace


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    async def sleep(self, dt: float) -> None:
        self.t += dt


def _run(coro):
    return asyncio.run(coro)


def test_rpm_paces_requests() -> None:
    clock = FakeClock()

    async def go() -> list[float]:
        lim = RateLimiter(rpm=60, clock=clock, sleep=clock.sleep)
        times = []
        for _ in range(5):
            await lim.acquire()
            times.append(clock.t - 1000)
        return times

    assert _run(go()) == pytest.approx([0, 1, 2, 3, 4])


def test_tpm_lets_a_big_request_through_and_later_ones_wait_out_the_debt() -> None:
    clock = FakeClock()

    async def go() -> float:
        lim = RateLimiter(tpm=600, clock=clock, sleep=clock.sleep)  # 10 tokens/s, bucket 10
        await lim.acquire(30)  # bigger than the bucket: allowed, 20 in debt
        assert clock.t == 1000
        await lim.acquire(5)
        return clock.t - 1000

    assert _run(go()) == pytest.approx(2.5)


def test_settle_gives_back_overestimated_tokens() -> None:
    clock = FakeClock()

    async def go() -> float:
        lim = RateLimiter(tpm=600, clock=clock, sleep=clock.sleep)
        await lim.acquire(10)
        lim.settle(10, 2)  # only 2 used: 8 back
        await lim.acquire(8)
        return clock.t - 1000

    assert _run(go()) == 0


def test_limits_from_headers_unless_given(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "mminstruct.llm.limiter")
    headers = {"x-ratelimit-limit-requests": "500", "x-ratelimit-limit-tokens": "30000"}

    async def go() -> tuple[dict, dict]:
        auto = RateLimiter()
        auto.announce()
        auto.observe_headers(headers)
        given = RateLimiter(rpm=100)
        given.announce()
        given.observe_headers(headers)
        return auto.describe(), given.describe()

    auto, given = _run(go())
    assert (auto["rpm"], auto["rpm_source"], auto["tpm"], auto["tpm_source"]) == (
        500, "header", 30000, "header")
    assert (given["rpm"], given["rpm_source"], given["tpm"]) == (100, "flag", 30000)
    text = caplog.text
    assert "RPM limit 500 (from the x-ratelimit-limit-requests response header)" in text
    assert "RPM limit 100 (given)" in text
    assert "no TPM limit" in text


def test_cool_down_holds_every_request() -> None:
    clock = FakeClock()

    async def go() -> float:
        lim = RateLimiter(clock=clock, sleep=clock.sleep)
        lim.cool_down(2.5)
        await lim.acquire()
        return clock.t - 1000

    assert _run(go()) == pytest.approx(2.5)


def test_retry_after_headers() -> None:
    assert E.parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert E.parse_retry_after({"retry-after": "3"}) == 3.0
    when = datetime.now(timezone.utc) + timedelta(seconds=30)
    assert 25 < E.parse_retry_after({"retry-after": format_datetime(when, usegmt=True)}) <= 30
    assert E.parse_retry_after({"retry-after": "soon"}) is None
    assert E.parse_retry_after({}) is None


def _status_error(status: int, body: dict, headers: dict | None = None) -> openai.APIStatusError:
    req = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
    resp = httpx2.Response(status, json=body, headers=headers or {}, request=req)
    cls = {429: openai.RateLimitError, 401: openai.AuthenticationError,
           400: openai.BadRequestError, 403: openai.PermissionDeniedError, 404: openai.NotFoundError,
           500: openai.InternalServerError}.get(status, openai.APIStatusError)
    return cls(body["error"]["message"], response=resp, body=body)


@pytest.mark.parametrize("status,code,message,headers,kind", [
    (429, "rate_limit_exceeded", "Rate limit reached", {"retry-after": "2"}, "rate_limit"),
    (429, "insufficient_quota", "You exceeded your current quota", {}, "quota"),
    (401, "invalid_api_key", "Incorrect API key", {}, "auth"),
    (404, "model_not_found", "The model does not exist", {}, "not_found"),
    (500, None, "server error", {}, "server"),
    (400, "content_filter", "filtered by content management policy", {}, "content_filter"),
    (400, "context_length_exceeded", "maximum context length is 8k", {}, "context_length"),
    (400, "invalid_image", "Invalid image.", {}, "image_rejected"),
    (400, "invalid_value", "Invalid value for 'temperature'", {}, "bad_request"),
])
def test_classify_status_errors(status, code, message, headers, kind) -> None:
    err = E.classify(_status_error(status, {"error": {"message": message, "code": code,
                                                       "type": code}}, headers))
    assert err.kind == kind
    assert err.retryable == E.RULES[kind].retry
    if kind == "rate_limit":
        assert err.retry_after == 2.0


# The rule of each class written out here, not read back from E.RULES, so a changed rule fails.
@pytest.mark.parametrize("status,code,message,kind,retried,stops", [
    (401, "invalid_api_key", "Incorrect API key", "auth", False, True),
    (403, None, "Forbidden", "auth", False, True),
    (403, "unsupported_country_region_territory", "Country not supported", "auth", False, True),
    (429, "rate_limit_exceeded", "Rate limit reached", "rate_limit", True, False),
    (429, "insufficient_quota", "You exceeded your current quota", "quota", False, True),
    (404, "model_not_found", "The model does not exist", "not_found", False, True),
    (500, None, "server error", "server", True, False),
    (400, "invalid_value", "Invalid value for 'temperature'", "bad_request", False, False),
])
def test_each_status_gets_its_retry_class(status, code, message, kind, retried, stops) -> None:
    err = E.classify(_status_error(status, {"error": {"message": message, "code": code,
                                                       "type": code}}))
    assert (err.kind, err.retryable, err.stops_run) == (kind, retried, stops)
    assert (kind in E.RETRYABLE_ON_RESUME) == (kind != "bad_request")


def test_classify_transport_errors() -> None:
    req = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
    assert E.classify(openai.APITimeoutError(req)).kind == "timeout"
    assert E.classify(openai.APIConnectionError(request=req)).kind == "connection"
    assert E.classify(ValueError("odd")).kind == "bad_request"


def test_every_error_class_has_a_rule_and_a_class() -> None:
    assert set(E.BY_KIND) == set(E.RULES)
    stopping = {k for k, r in E.RULES.items() if r.stops_run}
    assert stopping == {"quota", "auth", "not_found", "budget"}  # budget: the judge's --max_cost
    assert {k for k, r in E.RULES.items() if r.retry} == {
        "rate_limit", "timeout", "server", "connection"}


def test_redact_removes_registered_secrets_and_key_shapes() -> None:
    E.register_secret("my-own-token-value-123")
    text = E.redact("key sk-proj-abcdefghijklmnop and my-own-token-value-123, Bearer eyJhbGciOiJI")
    assert "abcdefghijklmnop" not in text and "my-own-token-value-123" not in text
    assert "eyJhbGciOiJI" not in text
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "got %s", ("sk-test-ABCDEFGHIJ",),
                               None)
    RedactingFilter().filter(record)
    assert "ABCDEFGHIJ" not in record.getMessage()


def test_endpoint_config_errors_and_public_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match=r"\$OPENAI_API_KEY"):
        build_client(EndpointConfig())
    with pytest.raises(ConfigError, match="not an http"):
        EndpointConfig(base_url="127.0.0.1:8000")
    with pytest.raises(ConfigError, match="not both"):
        EndpointConfig(base_url="http://x/v1", azure_endpoint="https://y.openai.azure.com")
    with pytest.raises(ConfigError, match="AZURE_OPENAI_API_KEY"):
        build_client(EndpointConfig(azure_endpoint="https://y.openai.azure.com"))
    local = EndpointConfig(base_url="http://127.0.0.1:9/v1")
    assert local.kind == "local"
    assert build_client(local) is not None  # a local server needs no key
    cfg = EndpointConfig(api_key="sk-test-CALLERKEY1234567", base_url="http://127.0.0.1:9/v1")
    assert "CALLERKEY" not in repr(cfg) and "CALLERKEY" not in str(cfg.public_json())


def test_prices() -> None:
    c = estimate_cost("gpt-4o-2024-08-06", 1_000_000, 100_000)
    assert c.priced_as == "gpt-4o" and c.usd == pytest.approx(3.5) and c.batch_usd == 1.75
    assert estimate_cost("gpt-4o-mini", 1_000_000, 0).priced_as == "gpt-4o-mini"
    unknown = estimate_cost("llava-1.6-34b", 10, 10).to_json()
    assert unknown["usd"] is None and "cost unknown" in unknown["note"]


@pytest.mark.parametrize("mode", list(Mode))
def test_prompts_per_mode(mode: Mode) -> None:
    sys = system_prompt(mode, "reading bar charts")
    assert f"exactly these keys: {', '.join(mode.keys)}" in sys
    assert ("reading bar charts" in sys) == (mode is not Mode.GENERIC)
    assert "exactly 3" in generation_prompt(mode, 3)
    schema = response_schema(mode)["json_schema"]["schema"]
    assert schema["properties"]["items"]["items"]["required"] == list(mode.keys)


def _decode(url: str) -> Image.Image:
    assert url.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def test_messages_images_downscaled_rotated_and_encoded_once(tmp_path: Path) -> None:
    ws = make_prompt_workspace(tmp_path, "vqa", 2)

    async def go() -> tuple[list, list, ImageEncoder]:
        enc = ImageEncoder(ws.input_folder, max_side=512)
        sys, gen = system_prompt(Mode.VQA, "x"), generation_prompt(Mode.VQA, 2)
        entry = PromptEntry("k", ["Example 1", "images/ref_0.jpg", "Q: a\n A: b", "text",
                                  "pool/big.png"], [0])
        again = PromptEntry("k", ["Example 1", "images/ref_0.jpg", "Q: a\n A: b",
                                  "pool/rotated.jpg"], [0])
        built = await build_messages(entry, Mode.VQA, sys, gen, enc)
        built2 = await build_messages(again, Mode.VQA, sys, gen, enc)
        return built.messages, built2.messages, enc

    m1, m2, enc = _run(go())
    assert m1[0] == {"role": "system", "content": system_prompt(Mode.VQA, "x")}
    parts = m1[1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "text", "text", "image_url",
                                          "text"]
    assert parts[-1]["text"] == generation_prompt(Mode.VQA, 2)
    assert _decode(parts[4]["image_url"]["url"]).size == (512, 256)  # 2000x1000 → longest 512
    assert _decode(m2[1]["content"][3]["image_url"]["url"]).size == (48, 64)  # EXIF applied
    assert enc.misses == 3 and enc.hits == 1  # ref_0 encoded once for both prompts


def test_missing_or_escaping_images_are_image_errors(tmp_path: Path) -> None:
    ws = make_prompt_workspace(tmp_path, "vqa", 1)
    enc = ImageEncoder(ws.input_folder)
    for rel in ("pool/nope.jpg", "../outside.jpg", "/etc/passwd.jpg"):
        with pytest.raises(E.ImageFileError):
            _run(build_messages(PromptEntry("k", [rel], []), Mode.GENERIC, "s", "g", enc))
    (ws.input_folder / "pool/broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(E.ImageFileError, match="not a readable image"):
        _run(build_messages(PromptEntry("k", ["pool/broken.jpg"], []), Mode.GENERIC, "s", "g",
                            enc))
    with pytest.raises(E.BadPromptError, match="candidate image"):
        _run(build_messages(PromptEntry("k", ["just text"], []), Mode.VQA, "s", "g", enc))


def test_price_table_is_data_with_date_and_source(tmp_path):
    from mminstruct.errors import ConfigError
    from mminstruct.generate.manifest import price_table

    table = price_table()
    assert table.as_of and table.source and table.batch_discount == 0.5
    assert estimate_cost("gpt-4o-2024-08-06", 1_000_000, 0).usd == table.models["gpt-4o"][0]
    assert estimate_cost("gpt-4o-2024-08-06", 0, 0).to_json()["prices_as_of"] == table.as_of
    bad = tmp_path / "prices.json"
    bad.write_text('{"as_of": "x", "models": {}}')
    with pytest.raises(ConfigError, match="price table .*prices.json: cannot be read"):
        price_table(bad)


def test_a_prompt_file_with_no_prompts_opens_with_count_zero(tmp_path):
    import json as _json

    from mminstruct.errors import DataFileError
    from mminstruct.generate.jsonstream import PromptStream

    p = tmp_path / "p.json"
    p.write_text(_json.dumps({"mode": "vqa_nr", "dataset_description": "d",
                              "min_gen_per_candidate": 1, "prompts": []}))
    stream = PromptStream.open(p)
    assert stream.count == 0 and list(stream.entries()) == []
    p.write_text(_json.dumps({"mode": "vqa_nr", "dataset_description": "d"}))
    with pytest.raises(DataFileError, match="missing 'prompts'"):
        PromptStream.open(p)
