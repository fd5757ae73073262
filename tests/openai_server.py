"""A local OpenAI-compatible server for tests and benchmarks: real HTTP on 127.0.0.1, reached by the
real ``openai`` client (nothing is patched).

Start it in-process (``StubServer(StubConfig(...)).start()`` → ``.url``) or standalone::

    python -m tests.openai_server --port 8000 --latency 1.0

Routes: ``POST /v1/chat/completions`` (also Azure's ``/openai/deployments/{name}/chat/completions``),
``GET /v1/models``, and for tests ``GET /stub/stats``, ``GET /stub/requests`` (the last request
bodies), ``POST /stub/reset``, ``POST /stub/config`` (change ``StubConfig`` fields live). More
routes (the Batch API's /v1/files and /v1/batches) can be added from another module:
``build_app(state, extra_routes=[...])`` / ``StubServer(config, extra_routes=[...])``.

What it answers is scripted by markers in the request text:

* ``%%id:N%%`` — a prompt's id; the server counts requests per id (``stats["ids"]``);
* ``%%stub:B1,B2,…%%`` — behaviour per attempt: the k-th identical request gets ``B_k`` (the last
  one repeats). Identical retries are recognised by a hash of the request body.

Behaviours — answers: ``ok`` (a JSON list), ``fenced`` (in a ```json fence), ``prose`` (inside
sentences), ``object`` (one object, not a list), ``wrapped`` (``{"items": [...]}``), ``malformed``
(missing and trailing commas), ``count=K`` (K items instead of N), ``garbage`` (no JSON; a
format-fix call then succeeds), ``garbage!`` (the fix fails too), ``missing_key`` /
``missing_key!`` (items lack a key; the fix succeeds / fails), ``length`` (cut off,
finish_reason "length"), ``refusal`` (``message.refusal``), ``refusal_text`` ("I'm sorry …"),
``filtered`` (finish_reason "content_filter"). Errors: ``429`` (rate limit, with Retry-After and
retry-after-ms), ``quota`` (429 insufficient_quota), ``500``, ``503``, ``auth`` (401 echoing the
key it received, to test redaction), ``not_found`` (404), ``content_filter`` (Azure's 400),
``context_length``, ``image_rejected``, ``bad_request`` (400s), ``no_db`` (LiteLLM's HTTP 400
"No connected db." for a wrong key), ``auth400`` (LiteLLM's HTTP 400 "Authentication Error" for a
wrong proxy key), ``slow`` (answers after
``slow_seconds``, for timeouts), ``drop`` (closes the connection mid-response).

Answers follow the request: the keys from the system prompt's "exactly these keys: Q, R, A" (or
the JSON schema in ``response_format``), N from "exactly N" in the last text part. Every response
carries ``x-ratelimit-limit-requests`` / ``-tokens`` (and ``-remaining-``) headers; with
``enforce_rpm`` the server also answers 429 past its limit. ``latency`` delays every answer (the
benchmark's fixed-latency mode).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

MARKER = re.compile(r"%%stub:([^%]+)%%")
ID_MARKER = re.compile(r"%%id:([^%]+)%%")
KEYS_RE = re.compile(r"exactly these keys: ([A-Z](?:, [A-Z])*)")
COUNT_RE = re.compile(r"exactly (\d+)")


@dataclass
class StubConfig:
    latency: float = 0.0
    slow_seconds: float = 5.0
    retry_after: float = 0.05
    rpm_limit: int = 1_000_000
    tpm_limit: int = 1_000_000_000
    enforce_rpm: bool = False
    quota_after: int | None = None  # answer insufficient_quota after this many successes
    default_behaviour: str = "ok"
    keep_requests: int = 20
    # body parameters answered with OpenAI's 400 "Unsupported parameter" (an o-series model's
    # answer to ``temperature``), whatever the behaviour
    reject_params: list[str] = field(default_factory=list)
    #: The judge's rule (a request that asks for scores "on these aspects: …"), see ``_judge``:
    #: {"answers": {image id: [answers true of it]}, "absent": [words of objects in no image],
    #:  "off_task": [question fragments of another task]}
    judge: dict | None = None


@dataclass
class StubState:
    config: StubConfig = field(default_factory=StubConfig)
    requests: int = 0
    successes: int = 0
    by_behaviour: Counter = field(default_factory=Counter)
    ids: Counter = field(default_factory=Counter)
    attempts: Counter = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    key_hashes: set = field(default_factory=set)
    paths: Counter = field(default_factory=Counter)
    recent: deque = field(default_factory=lambda: deque(maxlen=20))
    window: deque = field(default_factory=deque)

    def reset(self) -> None:
        config = self.config
        self.__init__(config=config)  # type: ignore[misc]

    def stats(self) -> dict[str, Any]:
        return {"requests": self.requests, "successes": self.successes,
                "by_behaviour": dict(self.by_behaviour), "ids": dict(self.ids),
                "max_in_flight": self.max_in_flight, "in_flight": self.in_flight,
                "key_sha256": sorted(self.key_hashes), "paths": dict(self.paths),
                "config": asdict(self.config)}


# ----------------------------------------------------------------------------------------------
# Reading a request


def _texts(body: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for m in body.get("messages", []):
        c = m.get("content")
        if isinstance(c, str):
            out.append(c)
        elif isinstance(c, list):
            out += [p.get("text", "") for p in c if isinstance(p, dict) and p.get("type") == "text"]
    return out


def _images(body: dict[str, Any]) -> int:
    n = 0
    for m in body.get("messages", []):
        c = m.get("content")
        if isinstance(c, list):
            n += sum(1 for p in c if isinstance(p, dict) and p.get("type") == "image_url")
    return n


def _keys_and_count(body: dict[str, Any], texts: list[str]) -> tuple[list[str], int]:
    keys = ["Q", "A"]
    rf = body.get("response_format") or {}
    schema = (rf.get("json_schema") or {}).get("schema") if isinstance(rf, dict) else None
    if schema:
        keys = list(schema["properties"]["items"]["items"]["required"])
    else:
        for t in texts:
            m = KEYS_RE.search(t)
            if m:
                keys = m.group(1).split(", ")
                break
    n = 1
    user_texts = texts[1:] if len(texts) > 1 else texts
    for t in reversed(user_texts):
        m = COUNT_RE.search(t)
        if m:
            n = int(m.group(1))
            break
    return keys, n


def _items(keys: list[str], n: int, tag: str) -> list[dict[str, str]]:
    words = {"Q": "Question", "R": "Reasoning", "A": "Answer", "I": "Imagined image"}
    return [{k: f"{words.get(k, k)} {i + 1} for {tag}." for k in keys} for i in range(n)]


# ----------------------------------------------------------------------------------------------
# Answers


def _completion(body: dict[str, Any], content: str | None, *, finish: str = "stop",
                refusal: str | None = None, prompt_tokens: int = 0) -> dict[str, Any]:
    out_tokens = len(content or refusal or "") // 4 + 1
    return {
        "id": f"chatcmpl-stub{time.time_ns()}", "object": "chat.completion",
        "created": int(time.time()), "model": body.get("model", "stub"),
        "choices": [{"index": 0, "finish_reason": finish, "logprobs": None,
                     "message": {"role": "assistant", "content": content, "refusal": refusal}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": out_tokens,
                  "total_tokens": prompt_tokens + out_tokens},
    }


def _error(status: int, message: str, code: str | None, etype: str | None,
           headers: dict[str, str] | None = None, **extra: Any) -> Response:
    body = {"error": {"message": message, "type": etype, "param": None, "code": code, **extra}}
    return JSONResponse(body, status_code=status, headers=headers)


JUDGE_ASPECTS = re.compile(r"aspects:? ([a-z][a-z0-9_]*(?:, [a-z][a-z0-9_]*)*)")
JUDGE_SCALE = re.compile(r"from (\d+) to (\d+)")
JUDGE_SAMPLE = re.compile(r"QUESTION: (.*?)\nANSWER: (.*?)(?:\n\n\(independent|\Z)", re.DOTALL)


def image_id(body: dict[str, Any]) -> str | None:
    """The id a test image carries in its colour (``tests.make_quality_fixture.id_colour``):
    the first image of the request, decoded."""
    import base64
    import io

    from PIL import Image

    for m in body.get("messages", []):
        c = m.get("content")
        for p in c if isinstance(c, list) else ():
            if isinstance(p, dict) and p.get("type") == "image_url":
                data = p["image_url"]["url"].split(",", 1)[1]
                with Image.open(io.BytesIO(base64.b64decode(data))) as im:
                    r, g, _ = im.convert("RGB").resize((1, 1), Image.BOX).getpixel((0, 0))
                return str(round((r - 8) / 16) + 16 * round((g - 8) / 16))
    return None


def _judge(body: dict[str, Any], texts: list[str], rule: dict[str, Any]) -> str:
    """A judge's answer by the test's rule: visual_faithfulness 1 when the answer is not one
    known to be true of the image (by the image's colour id) or names an absent object;
    correctness 2 then; task_fit 1 for an off-task question; 5 otherwise. Unknown aspects: the
    scale's top."""
    joined = "\n".join(texts)
    aspects = JUDGE_ASPECTS.search(joined).group(1).split(", ")
    m = JUDGE_SCALE.search(joined)
    low, high = (int(m.group(1)), int(m.group(2))) if m else (1, 5)
    sample = JUDGE_SAMPLE.search(joined)
    q, a = (sample.group(1).strip(), sample.group(2).strip()) if sample else ("", "")
    known = (rule.get("answers") or {}).get(image_id(body) or "", None)
    unfaithful = bool(sample) and ((known is not None and a not in known)
                                   or any(w in a.lower() for w in rule.get("absent", ())))
    off_task = bool(sample) and any(f in q for f in rule.get("off_task", ()))
    scores = {k: high for k in aspects}
    why = {k: "fine" for k in aspects}
    if unfaithful:
        for k, v in (("visual_faithfulness", low), ("correctness", min(high, low + 1))):
            if k in scores:
                scores[k], why[k] = v, "the answer is not supported by the image"
    if off_task and "task_fit" in scores:
        scores["task_fit"], why["task_fit"] = low, "not this subgroup's task"
    return json.dumps({"scores": scores, "rationale": why})


def _answer(behaviour: str, body: dict[str, Any], texts: list[str], tag: str,
            prompt_tokens: int, state: StubState, api_key: str) -> Response | dict[str, Any]:
    b0 = behaviour.partition("=")[0]
    if state.config.judge is not None and b0 in ("ok", "malformed", "fenced") \
            and JUDGE_ASPECTS.search(texts[0] if texts else ""):
        verdict = _judge(body, texts, state.config.judge)
        if b0 == "malformed":  # a trailing comma and a missing one: json_repair's work
            verdict = verdict.replace('}, "rationale"', '} "rationale"', 1)[:-1] + ",}"
        elif b0 == "fenced":
            verdict = f"Here is my verdict:\n```json\n{verdict}\n```"
        return _completion(body, verdict, prompt_tokens=prompt_tokens)
    keys, n = _keys_and_count(body, texts)
    structured = bool(body.get("response_format"))
    b, _, arg = behaviour.partition("=")
    items = _items(keys, int(arg) if b == "count" else n, tag)
    as_json = json.dumps({"items": items} if structured else items)
    cfg = state.config
    if b in ("ok", "count"):
        return _completion(body, as_json, prompt_tokens=prompt_tokens)
    if b == "fenced":
        return _completion(body, f"Here you are:\n```json\n{json.dumps(items, indent=2)}\n```\n",
                           prompt_tokens=prompt_tokens)
    if b == "prose":
        return _completion(body, f"Sure! Here are the pairs you asked for:\n{json.dumps(items)}"
                                 "\nLet me know if you need more.", prompt_tokens=prompt_tokens)
    if b == "object":
        return _completion(body, json.dumps(items[0]), prompt_tokens=prompt_tokens)
    if b == "wrapped":
        return _completion(body, json.dumps({"items": items}), prompt_tokens=prompt_tokens)
    if b == "malformed":
        broken = json.dumps(items, indent=1).replace('",\n', '"\n', 1).rstrip("]") + ",]"
        return _completion(body, broken, prompt_tokens=prompt_tokens)
    # Answers that a format-fix call will send back carry the prompt's id and the behaviour
    # the fix call should get, so the fixed answer is the same whenever it is produced.
    ids = "".join(f"%%id:{i}%%" for i in ID_MARKER.findall("\n".join(texts)))
    if b in ("garbage", "garbage!"):
        nxt = "garbage!" if b.endswith("!") else "ok"
        return _completion(body, f"I looked at the picture; the answer is probably blue. "
                                 f"{ids}%%stub:{nxt}%%", prompt_tokens=prompt_tokens)
    if b in ("missing_key", "missing_key!"):
        nxt = "missing_key!" if b.endswith("!") else "ok"
        short = [{k: v for k, v in it.items() if k != keys[-1]} for it in items]
        short[0][keys[0]] += f" {ids}%%stub:{nxt}%%"
        return _completion(body, json.dumps(short), prompt_tokens=prompt_tokens)
    if b == "length":
        return _completion(body, as_json[: max(10, len(as_json) // 2)], finish="length",
                           prompt_tokens=prompt_tokens)
    if b == "refusal":
        return _completion(body, None, refusal="I can't help with that request.",
                           prompt_tokens=prompt_tokens)
    if b == "refusal_text":
        return _completion(body, "I'm sorry, but I can't help with that.",
                           prompt_tokens=prompt_tokens)
    if b == "filtered":
        return _completion(body, "", finish="content_filter", prompt_tokens=prompt_tokens)
    if b == "429":
        ra = cfg.retry_after
        return _error(429, "Rate limit reached for requests. Please try again later.",
                      "rate_limit_exceeded", "requests",
                      {"retry-after": f"{ra:g}", "retry-after-ms": f"{ra * 1000:g}"})
    if b == "quota":
        return _error(429, "You exceeded your current quota, please check your plan and "
                           "billing details.", "insufficient_quota", "insufficient_quota")
    if b in ("500", "503"):
        return _error(int(b), "The server had an error while processing your request.", None,
                      "server_error")
    if b == "auth":
        return _error(401, f"Incorrect API key provided: {api_key}.", "invalid_api_key",
                      "invalid_request_error")
    if b == "not_found":
        return _error(404, f"The model `{body.get('model')}` does not exist.", "model_not_found",
                      "invalid_request_error")
    if b == "content_filter":
        return _error(400, "The response was filtered due to the prompt triggering Azure "
                           "OpenAI's content management policy.", "content_filter", None,
                      innererror={"code": "ResponsibleAIPolicyViolation"})
    if b == "context_length":
        return _error(400, "This model's maximum context length is 128000 tokens. However, your "
                           "messages resulted in 130000 tokens.", "context_length_exceeded",
                      "invalid_request_error")
    if b == "image_rejected":
        return _error(400, "You uploaded an unsupported image. Please make sure your image is "
                           "valid.", "invalid_image", "invalid_request_error")
    if b == "bad_request":
        return _error(400, "Invalid value for 'temperature'.", "invalid_value",
                      "invalid_request_error")
    if b == "auth400":  # what a LiteLLM proxy answers a wrong virtual key
        return _error(400, "Authentication Error, Invalid proxy server token passed. Received "
                           f"API Key = {api_key[:3]}...{api_key[-4:]}", "400", "auth_error")
    if b == "no_db":  # what a LiteLLM proxy without its database answers a wrong key
        return _error(400, "No connected db.", "400", "no_db_connection")
    return _error(400, f"stub: unknown behaviour {behaviour!r}", "stub_error", "stub")


class _Drop(Exception):
    """Internal: abort the connection mid-response."""


def _rate_headers(state: StubState) -> dict[str, str]:
    cfg = state.config
    now = time.monotonic()
    while state.window and state.window[0] < now - 60:
        state.window.popleft()
    return {"x-ratelimit-limit-requests": str(cfg.rpm_limit),
            "x-ratelimit-remaining-requests": str(max(0, cfg.rpm_limit - len(state.window))),
            "x-ratelimit-limit-tokens": str(cfg.tpm_limit),
            "x-ratelimit-remaining-tokens": str(cfg.tpm_limit),
            "x-request-id": f"req_{state.requests}"}


async def chat_completions(request: Request) -> Response:
    state: StubState = request.app.state.stub
    cfg = state.config
    raw = await request.body()
    body = json.loads(raw)
    state.requests += 1
    state.paths[request.url.path] += 1
    api_key = request.headers.get("authorization", "").removeprefix("Bearer ").strip() \
        or request.headers.get("api-key", "")
    if api_key:
        state.key_hashes.add(hashlib.sha256(api_key.encode()).hexdigest())
    state.recent.append(body)
    texts = _texts(body)
    joined = "\n".join(texts)
    for pid in ID_MARKER.findall(joined):
        state.ids[pid] += 1
    tag = ",".join(ID_MARKER.findall(joined)) or f"request {state.requests}"
    markers = MARKER.findall(joined)
    plan = markers[-1].split(",") if markers else [cfg.default_behaviour]
    attempt_key = hashlib.sha256(raw).hexdigest()
    attempt = state.attempts[attempt_key]
    state.attempts[attempt_key] += 1
    behaviour = plan[min(attempt, len(plan) - 1)].strip()
    if cfg.quota_after is not None and state.successes >= cfg.quota_after:
        behaviour = "quota"
    state.window.append(time.monotonic())
    if cfg.enforce_rpm and len(state.window) > cfg.rpm_limit:
        behaviour = "429"
    refused = [p for p in cfg.reject_params if p in body]
    if refused:
        behaviour = "unsupported"
    state.by_behaviour[behaviour] += 1
    state.in_flight += 1
    state.max_in_flight = max(state.max_in_flight, state.in_flight)
    try:
        if cfg.latency:
            await asyncio.sleep(cfg.latency)
        if behaviour == "slow":
            await asyncio.sleep(cfg.slow_seconds)
            behaviour = "ok"
        if behaviour == "drop":
            raise _Drop
        prompt_tokens = len(joined) // 4 + 85 * _images(body)
        if refused:
            return _error(400, f"Unsupported parameter: '{refused[0]}' is not supported with "
                               "this model.", "unsupported_parameter", "invalid_request_error",
                          param=refused[0])
        out = _answer(behaviour, body, texts, tag, prompt_tokens, state, api_key)
    finally:
        state.in_flight -= 1
    headers = _rate_headers(state)
    if isinstance(out, Response):
        out.headers.update(headers)
        return out
    state.successes += 1
    return JSONResponse(out, headers=headers)


class DropMiddleware:
    """Turns ``_Drop`` into a connection closed halfway through the response body."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        except _Drop:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", b"1000")]})
            await send({"type": "http.response.body", "body": b'{"id": "chatcmpl-', "more_body": True})
            raise ConnectionAbortedError("stub: dropping the connection") from None


async def models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [
        {"id": "gpt-4o", "object": "model", "created": 0, "owned_by": "stub"}]})


async def stats(request: Request) -> Response:
    return JSONResponse(request.app.state.stub.stats())


async def recent(request: Request) -> Response:
    return JSONResponse(list(request.app.state.stub.recent))


async def reset(request: Request) -> Response:
    request.app.state.stub.reset()
    return JSONResponse({"ok": True})


async def configure(request: Request) -> Response:
    state: StubState = request.app.state.stub
    changes = await request.json()
    known = {f.name for f in fields(StubConfig)}
    for k, v in changes.items():
        if k not in known:
            return JSONResponse({"error": f"unknown setting {k!r}"}, status_code=400)
        setattr(state.config, k, v)
    state.recent = deque(state.recent, maxlen=state.config.keep_requests)
    return JSONResponse(asdict(state.config))


def build_app(state: StubState, extra_routes: list[BaseRoute] | tuple = ()) -> Starlette:
    routes: list[BaseRoute] = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/openai/deployments/{deployment}/chat/completions", chat_completions,
              methods=["POST"]),
        Route("/v1/models", models),
        Route("/stub/stats", stats),
        Route("/stub/requests", recent),
        Route("/stub/reset", reset, methods=["POST"]),
        Route("/stub/config", configure, methods=["POST"]),
        *extra_routes,
    ]
    app = Starlette(routes=routes)
    app.state.stub = state
    app.add_middleware(DropMiddleware)
    return app


class StubServer:
    """Runs the app with uvicorn in a background thread on 127.0.0.1 (port 0: a free one)."""

    def __init__(self, config: StubConfig | None = None, port: int = 0,
                 extra_routes: list[BaseRoute] | tuple = ()):
        import uvicorn

        self.state = StubState(config or StubConfig())
        self.app = build_app(self.state, extra_routes)
        self._server = uvicorn.Server(uvicorn.Config(
            self.app, host="127.0.0.1", port=port, log_level="critical", access_log=False,
            lifespan="off", timeout_keep_alive=30, backlog=4096, loop="asyncio", http="h11"))
        self._thread = threading.Thread(target=self._server.run, daemon=True,
                                        name="openai-stub")
        self.port = port

    def start(self) -> StubServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("stub server did not start")
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/v1"

    def stats(self) -> dict[str, Any]:
        return self.state.stats()

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> StubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.openai_server",
                                description="A scriptable OpenAI-compatible server for tests.")
    p.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (0: any free one)")
    for f in fields(StubConfig):
        if f.type in ("float", "int", "str"):
            p.add_argument(f"--{f.name}", type={"float": float, "int": int, "str": str}[f.type],
                           default=f.default)
    p.add_argument("--enforce_rpm", action="store_true")
    args = p.parse_args(argv)
    cfg = StubConfig(**{f.name: getattr(args, f.name) for f in fields(StubConfig)
                        if hasattr(args, f.name)})
    server = StubServer(cfg, port=args.port).start()
    print(f"listening on {server.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
