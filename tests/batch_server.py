"""The OpenAI Batch API on the test server: ``/v1/files`` and ``/v1/batches`` (and Azure's
``/openai/files``, ``/openai/batches``), reached by the real ``openai`` client over HTTP.

    server = BatchStubServer(batch_config=BatchConfig(expire_after={1: 2})).start()
    server.batches.stats()  # files, batches, retrieves, statuses, lines per input file

Routes: ``POST /v1/files`` (multipart upload, ``purpose=batch``), ``GET /v1/files/{id}``,
``GET /v1/files/{id}/content``; ``POST /v1/batches`` (create), ``GET /v1/batches`` (list, newest
first, ``limit``/``after``), ``GET /v1/batches/{id}`` (retrieve), ``POST /v1/batches/{id}/cancel``;
``GET /stub/batches`` (the store's counters).

Every line of a batch is answered by the stub's own ``/v1/chat/completions`` route, called in
process, so the markers a prompt carries (``%%stub:500,ok%%`` …, see ``tests.openai_server``)
behave in a batch as they do online — and a resubmitted identical line is the next attempt. A
200 answer goes to the batch's output file, any other status to its error file, as OpenAI does.

State moves only when the client retrieves a batch, so tests run as fast as they poll:
``validating`` (+ ``validating_polls`` more retrieves) → ``in_progress`` (each retrieve runs
``lines_per_poll`` lines, 0 = all; nothing while ``hold``) → ``finalizing`` (+ ``finalizing_polls``)
→ ``completed``. ``expire_after={k: K}``: the k-th batch created expires after running K lines (the
rest go to its error file as ``batch_expired``, as OpenAI writes them). ``fail={k: code}``: the k-th
batch fails validation with that error code. Input files are validated as the API does: JSON lines
with unique ``custom_id``, ``method`` POST, ``url`` equal to the batch's endpoint, at most
``max_requests`` lines and ``max_bytes`` bytes — a violation fails the batch with its line number.
``faults={"upload": [500]}``: the next upload is answered HTTP 500 (see ``BatchConfig.faults``);
``store.calls`` counts every call per kind.
A cancelled batch keeps the lines it ran; the others appear in neither file.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tests.openai_server import StubConfig, StubServer

TERMINAL = ("completed", "expired", "failed", "cancelled")
ENDPOINTS = ("/v1/chat/completions", "/chat/completions")


@dataclass
class BatchConfig:
    validating_polls: int = 0
    finalizing_polls: int = 0
    lines_per_poll: int = 0
    hold: bool = False
    expire_after: dict[int, int] = field(default_factory=dict)
    fail: dict[int, str] = field(default_factory=dict)
    max_requests: int = 50_000
    max_bytes: int = 200 * 1024 * 1024
    line_concurrency: int = 32
    #: Scripted failures of the API calls themselves: {"upload" | "create" | "list" | "retrieve" |
    #: "content": [status, ...]}: the next calls of that kind are answered with these HTTP
    #: statuses (429 with Retry-After, 401, 500, ...), one each, before the route works again.
    faults: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": len(self.data),
                "created_at": self.created_at, "filename": self.filename,
                "purpose": self.purpose, "status": "processed", "expires_at": None,
                "status_details": None}


@dataclass
class StoredBatch:
    id: str
    ordinal: int
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    auth: dict[str, str]
    created_at: int
    status: str = "validating"
    polls: int = 0
    lines: list[dict[str, Any]] = field(default_factory=list)
    ran: int = 0
    outputs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    batch_errors: list[dict[str, Any]] = field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None
    times: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        t = self.times
        model = self.lines[0].get("body", {}).get("model") if self.lines else None
        return {
            "id": self.id, "object": "batch", "endpoint": self.endpoint,
            "errors": {"object": "list", "data": self.batch_errors} if self.batch_errors else None,
            "input_file_id": self.input_file_id, "completion_window": self.completion_window,
            "status": self.status, "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id, "created_at": self.created_at,
            "in_progress_at": t.get("in_progress"), "expires_at": self.created_at + 86400,
            "finalizing_at": t.get("finalizing"), "completed_at": t.get("completed"),
            "failed_at": t.get("failed"), "expired_at": t.get("expired"),
            "cancelling_at": t.get("cancelling"), "cancelled_at": t.get("cancelled"),
            "request_counts": {"total": len(self.lines), "completed": len(self.outputs),
                               "failed": len(self.errors)},
            "metadata": self.metadata, "model": model,
        }


class BatchStore:
    """Files and batches of the test server, and what happened to them."""

    def __init__(self, config: BatchConfig | None = None):
        self.config = config or BatchConfig()
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, StoredBatch] = {}
        self.retrieves = 0
        self.lists = 0
        self.uploads: list[dict[str, Any]] = []  # {"filename", "lines", "bytes", "purpose"}
        self.prefixes: Counter = Counter()  # "v1" / "openai": which API routes were used
        self.calls: Counter = Counter()  # upload, create, list, retrieve, content
        self._ids = itertools.count(1)

    def reset(self, config: BatchConfig | None = None) -> None:
        self.__init__(config or BatchConfig())  # type: ignore[misc]

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-stub{next(self._ids):05d}"

    def stats(self) -> dict[str, Any]:
        return {"files": len(self.files), "batches": len(self.batches),
                "retrieves": self.retrieves, "lists": self.lists,
                "statuses": {b.id: b.status for b in self.batches.values()},
                "prefixes": dict(self.prefixes), "calls": dict(self.calls),
                "uploads": list(self.uploads)}

    def add_file(self, data: bytes, filename: str, purpose: str) -> StoredFile:
        f = StoredFile(self.new_id("file"), filename, purpose, data, int(time.time()))
        self.files[f.id] = f
        return f

    # ------------------------------------------------------------------ state machine

    async def advance(self, app: Any, b: StoredBatch) -> None:
        cfg = self.config
        now = int(time.time())
        if b.status in TERMINAL:
            return
        if b.status == "cancelling":
            self._finish(b, "cancelled")
            return
        b.polls += 1
        if b.status == "validating":
            if b.polls <= cfg.validating_polls:
                return
            problems = self._validate(b)
            if b.ordinal in cfg.fail:
                code = cfg.fail[b.ordinal]
                problems = [{"code": code, "message": f"stub: batch {b.ordinal} fails with "
                                                      f"{code}", "param": None, "line": None}]
            if problems:
                b.batch_errors = problems
                b.lines = []
                b.status, b.times["failed"] = "failed", now
                return
            b.status, b.polls, b.times["in_progress"] = "in_progress", 0, now
            return
        if b.status == "in_progress":
            if cfg.hold:
                return
            left = len(b.lines) - b.ran
            take = left if cfg.lines_per_poll <= 0 else min(left, cfg.lines_per_poll)
            limit = cfg.expire_after.get(b.ordinal)
            if limit is not None:
                take = max(0, min(take, limit - b.ran))
            await self._run(app, b, b.lines[b.ran:b.ran + take])
            if limit is not None and b.ran >= limit and b.ran < len(b.lines):
                for line in b.lines[b.ran:]:
                    b.errors.append(json.dumps({
                        "id": self.new_id("batch_req"), "custom_id": line.get("custom_id"),
                        "response": None,
                        "error": {"code": "batch_expired", "message": "This request could not "
                                  "be executed before the completion window expired."}}))
                self._finish(b, "expired")
            elif b.ran >= len(b.lines):
                b.status, b.polls, b.times["finalizing"] = "finalizing", 0, now
            return
        if b.status == "finalizing" and b.polls > cfg.finalizing_polls:
            self._finish(b, "completed")

    def _finish(self, b: StoredBatch, status: str) -> None:
        if b.outputs:
            b.output_file_id = self.add_file(("\n".join(b.outputs) + "\n").encode(),
                                             f"{b.id}_output.jsonl", "batch_output").id
        if b.errors:
            b.error_file_id = self.add_file(("\n".join(b.errors) + "\n").encode(),
                                            f"{b.id}_error.jsonl", "batch_output").id
        b.status, b.times[status] = status, int(time.time())

    def _validate(self, b: StoredBatch) -> list[dict[str, Any]]:
        cfg = self.config
        data = self.files[b.input_file_id].data

        def problem(code: str, message: str, line: int | None = None) -> list[dict[str, Any]]:
            return [{"code": code, "message": message, "param": None, "line": line}]

        if len(data) > cfg.max_bytes:
            return problem("file_too_large", f"{len(data)} bytes > {cfg.max_bytes}")
        raw_lines = [x for x in data.decode().split("\n") if x.strip()]
        if not raw_lines:
            return problem("empty_file", "the input file has no requests")
        if len(raw_lines) > cfg.max_requests:
            return problem("too_many_requests", f"{len(raw_lines)} > {cfg.max_requests}")
        seen: set[str] = set()
        for n, raw in enumerate(raw_lines, 1):
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                return problem("invalid_json_line", "not JSON", n)
            cid = line.get("custom_id")
            if not isinstance(cid, str) or cid in seen:
                return problem("duplicate_custom_id" if cid in seen else "missing_custom_id",
                               f"custom_id {cid!r}", n)
            seen.add(cid)
            if line.get("method") != "POST" or line.get("url") != b.endpoint:
                return problem("invalid_url", f"{line.get('method')} {line.get('url')} is not "
                                              f"POST {b.endpoint}", n)
            if not isinstance(line.get("body"), dict) or "model" not in line["body"]:
                return problem("invalid_body", "body without a model", n)
            b.lines.append(line)
        return []

    async def _run(self, app: Any, b: StoredBatch, lines: list[dict[str, Any]]) -> None:
        sem = asyncio.Semaphore(self.config.line_concurrency)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://stub",
                                     timeout=60) as client:
            async def one(line: dict[str, Any]) -> tuple[bool, str]:
                async with sem:
                    return await self._answer(client, b, line)

            results = await asyncio.gather(*(one(x) for x in lines))
        for ok, out in results:
            (b.outputs if ok else b.errors).append(out)
        b.ran += len(lines)

    async def _answer(self, client: httpx.AsyncClient, b: StoredBatch,
                      line: dict[str, Any]) -> tuple[bool, str]:
        rid = self.new_id("batch_req")
        try:
            r = await client.post("/v1/chat/completions", content=json.dumps(line["body"]),
                                  headers={**b.auth, "content-type": "application/json"})
            body = r.json()
        except Exception as e:  # a dropped connection or unreadable answer: an error object
            return False, json.dumps({"id": rid, "custom_id": line["custom_id"], "response": None,
                                      "error": {"code": "server_error",
                                                "message": f"stub: {type(e).__name__}"}})
        out = {"id": rid, "custom_id": line["custom_id"],
               "response": {"status_code": r.status_code,
                            "request_id": r.headers.get("x-request-id"), "body": body},
               "error": None}
        return r.status_code == 200, json.dumps(out)


# ----------------------------------------------------------------------------------------------
# Routes


def _err(status: int, message: str, code: str | None = None) -> Response:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error",
                                   "param": None, "code": code}}, status_code=status)


def _call_kind(request: Request) -> str:
    parts = request.url.path.strip("/").split("/")[1:]  # after v1 / openai
    if parts[0] == "files":
        return "upload" if request.method == "POST" else "content" if parts[-1] == "content" \
            else "file"
    if len(parts) == 1:
        return "create" if request.method == "POST" else "list"
    return "cancel" if parts[-1] == "cancel" else "retrieve"


def batch_routes(store: BatchStore) -> list[BaseRoute]:
    async def files(request: Request) -> Response:
        if request.method != "POST":
            return JSONResponse({"object": "list", "data": [
                f.to_json() for f in store.files.values()], "has_more": False})
        form = await request.form()
        upload = form.get("file")
        purpose = str(form.get("purpose") or "")
        if upload is None or isinstance(upload, str):
            return _err(400, "missing file")
        if purpose not in ("batch", "fine-tune", "assistants", "user_data"):
            return _err(400, f"invalid purpose {purpose!r}")
        data = await upload.read()
        f = store.add_file(data, upload.filename or "upload.jsonl", purpose)
        store.uploads.append({"filename": f.filename, "bytes": len(data), "purpose": purpose,
                              "lines": sum(1 for x in data.split(b"\n") if x.strip())})
        return JSONResponse(f.to_json())

    async def one_file(request: Request) -> Response:
        f = store.files.get(request.path_params["file_id"])
        if f is None:
            return _err(404, "No such File object", "not_found")
        return JSONResponse(f.to_json())

    async def file_content(request: Request) -> Response:
        f = store.files.get(request.path_params["file_id"])
        if f is None:
            return _err(404, "No such File object", "not_found")
        return Response(f.data, media_type="application/octet-stream")

    async def batches(request: Request) -> Response:
        if request.method == "GET":
            store.lists += 1
            newest = list(reversed(store.batches.values()))
            after = request.query_params.get("after")
            if after:
                ids = [b.id for b in newest]
                newest = newest[ids.index(after) + 1:] if after in ids else []
            limit = int(request.query_params.get("limit", 20))
            page = newest[:limit]
            return JSONResponse({"object": "list", "data": [b.to_json() for b in page],
                                 "first_id": page[0].id if page else None,
                                 "last_id": page[-1].id if page else None,
                                 "has_more": len(newest) > limit})
        body = await request.json()
        fid = body.get("input_file_id")
        if fid not in store.files:
            return _err(404, f"No such File object: {fid}", "not_found")
        if body.get("endpoint") not in ENDPOINTS:
            return _err(400, f"invalid endpoint {body.get('endpoint')!r}", "invalid_value")
        if body.get("completion_window") != "24h":
            return _err(400, "completion_window must be 24h", "invalid_value")
        auth = {k: v for k, v in request.headers.items() if k in ("authorization", "api-key")}
        b = StoredBatch(store.new_id("batch"), len(store.batches) + 1, fid, body["endpoint"],
                        body["completion_window"], body.get("metadata"), auth,
                        int(time.time()))
        store.batches[b.id] = b
        return JSONResponse(b.to_json())

    async def one_batch(request: Request) -> Response:
        b = store.batches.get(request.path_params["batch_id"])
        if b is None:
            return _err(404, "No such Batch object", "not_found")
        store.retrieves += 1
        await store.advance(request.app, b)
        return JSONResponse(b.to_json())

    async def cancel(request: Request) -> Response:
        b = store.batches.get(request.path_params["batch_id"])
        if b is None:
            return _err(404, "No such Batch object", "not_found")
        if b.status not in TERMINAL:
            b.status, b.times["cancelling"] = "cancelling", int(time.time())
        return JSONResponse(b.to_json())

    async def stats(request: Request) -> Response:
        return JSONResponse(store.stats())

    def counted(handler: Any) -> Any:
        async def wrapper(request: Request) -> Response:
            store.prefixes[request.url.path.split("/")[1]] += 1
            kind = _call_kind(request)
            store.calls[kind] += 1
            queue = store.config.faults.get(kind)
            if queue:
                status = queue.pop(0)
                headers = {"retry-after": "0.01"} if status == 429 else None
                return JSONResponse({"error": {"message": f"stub: {kind} fails with {status}",
                                               "type": "stub", "param": None, "code": None}},
                                    status_code=status, headers=headers)
            return await handler(request)
        return wrapper

    routes: list[BaseRoute] = [Route("/stub/batches", stats)]
    for prefix in ("/v1", "/openai"):
        routes += [
            Route(f"{prefix}/files", counted(files), methods=["GET", "POST"]),
            Route(f"{prefix}/files/{{file_id}}", counted(one_file)),
            Route(f"{prefix}/files/{{file_id}}/content", counted(file_content)),
            Route(f"{prefix}/batches", counted(batches), methods=["GET", "POST"]),
            Route(f"{prefix}/batches/{{batch_id}}", counted(one_batch)),
            Route(f"{prefix}/batches/{{batch_id}}/cancel", counted(cancel), methods=["POST"]),
        ]
    return routes


class BatchStubServer(StubServer):
    """The stub server with the Batch API routes; ``.batches`` is its ``BatchStore``."""

    def __init__(self, config: StubConfig | None = None, port: int = 0,
                 batch_config: BatchConfig | None = None):
        self.batches = BatchStore(batch_config)
        super().__init__(config, port, extra_routes=batch_routes(self.batches))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.batch_server",
                                description="The stub server with the OpenAI Batch API.")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--lines_per_poll", type=int, default=0)
    args = p.parse_args(argv)
    server = BatchStubServer(port=args.port,
                             batch_config=BatchConfig(lines_per_poll=args.lines_per_poll)).start()
    print(f"listening on {server.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
