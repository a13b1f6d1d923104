"""The offline stand-in: an OpenAI-compatible server on loopback for tests, the demo and benchmarks.

It answers deterministically and schema-valid from the request; it is not a model. Its model list says
`offline-stand-in`, its fingerprint says so, and every free string it writes starts with `[stand-in]`
(unless a junk mode is on: then free strings are schema-valid junk, see standin/junk.py). It also serves
OpenAI's Files and Batches API (standin/batches.py), answering each batched request as this server would.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import pickle
import random
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agentinstruct_dagster.standin.batches import BatchApi
from agentinstruct_dagster.standin.junk import JUDGE_MODES, JUNK_MODES
from agentinstruct_dagster.standin.schema_instance import SchemaError, SchemaInstance

STANDIN_MODEL_ID = "agentinstruct-standin"
JUDGE_SCHEMA = "JudgeVerdict"  # response formats of this name get the judge switch's scores
FINGERPRINT = "offline-stand-in"
WORD = re.compile(r"[^\s{}\[\]\"]*\w[^\s{}\[\]\"]*")  # tokens with a letter, digit or underscore


FAULT_KINDS = (
    "rate_limited",
    "connection_reset",
    "server_error",
    "unauthorized",
    "slow",
    "malformed_json",
    "schema_mismatch",
    "truncated",
    "empty",
    "refusal",
    "content_filter",
)


@dataclass(frozen=True)
class Fault:
    """Answer the first `first_attempts` attempts at each conversation with this fault, or with `rate` > 0,
    each attempt with that probability (drawn deterministically from the conversation and attempt number).

    Retries and repair re-asks of one request count as attempts at the same conversation (same model,
    response format and opening messages), so `first_attempts=1` fails a request once and then lets it pass.
    """

    kind: str
    first_attempts: int = 1
    rate: float = 0.0
    retry_after_seconds: float | None = None
    delay_seconds: float = 5.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {self.kind!r}; known: {', '.join(FAULT_KINDS)}")
        if not 0 <= self.rate <= 1:
            raise ValueError(f"fault rate {self.rate} is not within 0..1")

    def applies(self, key: str, attempt: int) -> bool:
        if attempt <= self.first_attempts:
            return True
        draw = int(hashlib.sha256(f"{self.kind}:{key}:{attempt}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        return draw < self.rate


@dataclass(frozen=True)
class StandinConfig:
    """Switches of the stand-in.

    `latency_seconds` is added to every answer; with `latency_sigma` > 0 it is the median of a lognormal
    latency. `max_in_flight` caps concurrent requests like a provider: requests over the cap get 429 with
    `Retry-After: cap_retry_after_seconds`. `faults` inject failures. `junk` fills free strings with
    schema-valid junk (standin/junk.py); `judge` sets the integer scores of `JudgeVerdict` answers to their
    maximum (`high`), minimum (`low`) or a hashed value, and leaves their strings ordinary.

    The `batch_*` switches shape the Batches API (standin/batches.py): a batch takes `batch_completion_seconds`
    from create to completed, answering its requests evenly over that time; `batch_failure_rate` of its
    requests (drawn per custom_id) fail with a 500 in the error file; a batch not done after
    `batch_expire_seconds` (OpenAI: 24 h) expires; with `batch_never_finishes` it stays in progress (half its
    requests answered) until cancelled or expired; input files are limited like OpenAI's
    (`batch_max_requests`, `batch_max_file_bytes`); with `batch_enqueued_token_limit` a batch whose prompt
    tokens would take the model's unfinished batches over it fails with `token_limit_exceeded`. Files and
    batches live in memory, and also in `state_dir` if set, so that a restarted stand-in still knows them.
    """

    latency_seconds: float = 0.0
    latency_sigma: float = 0.0
    max_in_flight: int | None = None
    cap_retry_after_seconds: float = 0.1
    faults: tuple[Fault, ...] = ()
    seed: int = 0
    junk: str = "none"
    judge: str = "high"
    batch_completion_seconds: float = 0.0
    batch_failure_rate: float = 0.0
    batch_expire_seconds: float | None = None
    batch_never_finishes: bool = False
    batch_max_requests: int = 50_000
    batch_max_file_bytes: int = 200 * 1024 * 1024
    batch_enqueued_token_limit: int | None = None
    state_dir: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.batch_failure_rate <= 1:
            raise ValueError(f"batch failure rate {self.batch_failure_rate} is not within 0..1")
        if self.batch_completion_seconds < 0 or (self.batch_expire_seconds or 0) < 0:
            raise ValueError("batch completion and expiry times must not be negative")
        if self.junk not in JUNK_MODES:
            raise ValueError(f"unknown junk mode {self.junk!r}; known: {', '.join(JUNK_MODES)}")
        if self.judge not in JUDGE_MODES:
            raise ValueError(f"unknown judge mode {self.judge!r}; known: {', '.join(JUDGE_MODES)}")

    def latency(self, draw: random.Random) -> float:
        if self.latency_sigma <= 0:
            return self.latency_seconds
        return draw.lognormvariate(math.log(self.latency_seconds), self.latency_sigma)


def _conversation_key(body: dict[str, Any]) -> str:
    opening = {"model": body.get("model"), "format": body.get("response_format")}
    opening["messages"] = body["messages"][:2]
    return hashlib.sha256(json.dumps(opening, sort_keys=True).encode()).hexdigest()


def _error_body(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(_error_body(message), status_code=status)


class Rejected(ValueError):
    """A chat completion request the stand-in answers with 400; the message says why."""


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _request_problem(body: Any) -> str | None:
    """Why a parsed body is not a chat completion request the stand-in can answer, or None."""
    if not isinstance(body, dict):
        return "the request body must be a JSON object"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return "`messages` must be a non-empty list of message objects"
    response_format = body.get("response_format")
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        return "`response_format` must be an object"
    if response_format.get("type") == "json_schema":
        json_schema = response_format.get("json_schema")
        if not isinstance(json_schema, dict) or not isinstance(json_schema.get("schema", {}), dict):
            return "`response_format.json_schema.schema` must be an object"
    return None


def _text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def completion_content(body: dict[str, Any], junk: str = "none", judge: str = "high") -> str:
    """The deterministic answer to a (valid) chat completion request body; SchemaError for unusable schemas.

    Free text is a labelled window of the last user message's words, chosen by a hash of the whole body and
    the JSON path, so one body always gets one answer and different fields get different strings; `junk`
    and `judge` are the switches of `StandinConfig`.
    """
    messages = body["messages"]
    seed = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    user_turns = [message for message in messages if message.get("role") == "user"]
    message = _text((user_turns or messages)[-1].get("content"))
    response_format = body.get("response_format") or {}
    json_schema = response_format.get("json_schema") or {}
    judged = response_format.get("type") == "json_schema" and json_schema.get("name") == JUDGE_SCHEMA
    instance = SchemaInstance(
        json_schema.get("schema", {}),
        WORD.findall(message),
        seed,
        junk="none" if judged else junk,
        message=message,
        scores=judge if judged else "hashed",
    )
    if response_format.get("type") == "json_schema":
        return json.dumps(instance.build(), ensure_ascii=False)
    if response_format.get("type") == "json_object":
        return json.dumps({"text": instance.free_text("$.text")}, ensure_ascii=False)
    return instance.free_text("$")


def answer_content(body: Any, config: StandinConfig) -> str:
    """The content the stand-in answers a parsed request body with, under the config's switches; Rejected if
    the body is not a request it can answer."""
    problem = _request_problem(body)
    if problem is not None:
        raise Rejected(problem)
    try:
        return completion_content(body, config.junk, config.judge)
    except SchemaError as error:
        raise Rejected(f"stand-in cannot answer this response_format: {error}") from error


def respond(body: Any, config: StandinConfig) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of the answer to a parsed request body, as `/v1/chat/completions` gives it when
    no latency, cap or fault applies (the answer of a batched request)."""
    try:
        content = answer_content(body, config)
    except Rejected as error:
        return 400, _error_body(str(error))
    return 200, _completion(body, content)


def _completion(
    body: dict[str, Any], content: str, finish_reason: str = "stop", refusal: str | None = None
) -> dict[str, Any]:
    prompt_tokens = sum(_tokens(json.dumps(message.get("content", ""))) for message in body["messages"])
    completion_tokens = _tokens(content) if content else 0
    return {
        "id": "standin-" + hashlib.sha256(content.encode()).hexdigest()[:24],
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model") or STANDIN_MODEL_ID,
        "system_fingerprint": FINGERPRINT,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


class ResetResponse(Response):
    """Starts an answer, then drops the connection: the client sees a connection reset."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]})
        await send({"type": "http.response.body", "body": b"{", "more_body": True})
        raise ConnectionResetError("stand-in: connection reset")


async def _faulty(fault: Fault, body: dict[str, Any], content: str, request: Request) -> Response:
    """The answer for an injected fault."""
    kind = fault.kind
    if kind == "connection_reset":
        return ResetResponse()
    if kind == "rate_limited":
        retry_after = fault.retry_after_seconds
        headers = {} if retry_after is None else {"retry-after": f"{retry_after}"}
        return JSONResponse(
            {"error": {"message": "stand-in: rate limit", "type": "rate_limit_error"}}, 429, headers=headers
        )
    if kind == "server_error":
        return JSONResponse({"error": {"message": "stand-in: internal error", "type": "server_error"}}, 500)
    if kind == "unauthorized":
        echoed = request.headers.get("authorization", "")
        return JSONResponse({"error": {"message": f"stand-in: bad key in {echoed}", "type": "auth"}}, 401)
    if kind == "slow":
        await asyncio.sleep(fault.delay_seconds)
        return JSONResponse(_completion(body, content))
    answers = {
        "malformed_json": (content[: len(content) // 2], "stop", None),
        "schema_mismatch": (json.dumps({"unexpected": "[stand-in] wrong shape"}), "stop", None),
        "truncated": (content[: len(content) // 3], "length", None),
        "empty": ("", "stop", None),
        "refusal": (None, "stop", "[stand-in] refusal"),
        "content_filter": ("", "content_filter", None),
    }
    text, finish_reason, refusal = answers[kind]
    payload = _completion(body, text or "", finish_reason, refusal)
    if text is None:
        payload["choices"][0]["message"]["content"] = None
    return JSONResponse(payload)


def create_app(config: StandinConfig) -> Starlette:
    seen: Counter[str] = Counter()
    draw = random.Random(config.seed)
    in_flight = 0

    async def models(_: Request) -> JSONResponse:
        return JSONResponse(
            {"object": "list", "data": [{"id": STANDIN_MODEL_ID, "object": "model", "owned_by": FINGERPRINT}]}
        )

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "kind": FINGERPRINT})

    async def chat_completions(request: Request) -> Response:
        nonlocal in_flight
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "request body is not JSON")
        try:
            content = answer_content(body, config)
        except Rejected as error:
            return _error(400, str(error))
        if config.max_in_flight is not None and in_flight >= config.max_in_flight:
            return JSONResponse(
                {"error": {"message": "stand-in: too many requests in flight", "type": "rate_limit_error"}},
                429,
                headers={"retry-after": f"{config.cap_retry_after_seconds}"},
            )
        in_flight += 1
        try:
            latency = config.latency(draw)
            if latency:
                await asyncio.sleep(latency)
            if config.faults:
                key = _conversation_key(body)
                seen[key] += 1
                fault = next((fault for fault in config.faults if fault.applies(key, seen[key])), None)
                if fault is not None:
                    return await _faulty(fault, body, content, request)
            return JSONResponse(_completion(body, content))
        finally:
            in_flight -= 1

    batches = BatchApi(config, lambda body: respond(body, config))
    return Starlette(
        routes=[
            *batches.routes(),
            Route("/v1/models", models),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            # Azure OpenAI's path shape, so the `azure` provider can be exercised offline too.
            Route("/openai/deployments/{deployment}/chat/completions", chat_completions, methods=["POST"]),
            Route("/health", health),
        ]
    )


def _server(config: StandinConfig) -> uvicorn.Server:
    app = create_app(config)
    settings = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", loop="asyncio")
    return uvicorn.Server(settings)


def _bind(host: str, port: int) -> socket.socket:
    """A bound IPv4 TCP socket; port 0 picks a free one."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


class StandinServer:
    """The stand-in in a child process on a free loopback port (its own interpreter, so serving it takes no
    time from the caller's event loop or GIL); use as a context manager."""

    def __init__(self, config: StandinConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or StandinConfig()
        self._socket = _bind(host, port)
        self.host, self.port = self._socket.getsockname()[:2]
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> StandinServer:
        """Start the child on the bound socket and wait until it serves (a new interpreter, not a fork, so
        no state of the caller's is copied and no caller's `__main__` is imported again)."""
        descriptor = self._socket.fileno()
        command = [sys.executable, "-c", f"from {__name__} import _serve_child; _serve_child({descriptor})"]
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=[descriptor], env=_child_environment()
        )
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(pickle.dumps(self.config))
        self._process.stdin.close()
        if self._process.stdout.readline().strip() != b"ready":
            self.stop()
            raise RuntimeError("the offline stand-in did not start")
        return self

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._socket.close()

    def __enter__(self) -> StandinServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def _child_environment() -> dict[str, str]:
    """The caller's environment without secrets the stand-in has no use for."""
    return {name: value for name, value in os.environ.items() if "KEY" not in name and "SECRET" not in name}


def _serve_child(descriptor: int) -> None:
    """The child process: read the config from stdin, serve on the inherited socket until terminated."""
    config = pickle.loads(sys.stdin.buffer.read())
    sock = socket.socket(fileno=descriptor)
    parent = os.getppid()

    def exit_with_parent() -> None:  # a caller killed with SIGKILL never stops its stand-in itself
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=exit_with_parent, daemon=True).start()
    server = _server(config)

    async def serve() -> None:
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not serving.done():
            await asyncio.sleep(0.01)
        if server.started:
            print("ready", flush=True)
        await serving

    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the signal that stopped it
        asyncio.run(serve())


def serve_forever(config: StandinConfig, host: str = "127.0.0.1", port: int = 8088) -> None:
    """Serve in the foreground until interrupted (the `agentinstruct standin` command); port 0 picks one."""
    sock = _bind(host, port)
    url = f"http://{host}:{sock.getsockname()[1]}/v1"
    print(f"offline stand-in (deterministic, NOT a model) serving {url}", flush=True)
    try:
        _server(config).run(sockets=[sock])
    finally:
        sock.close()
