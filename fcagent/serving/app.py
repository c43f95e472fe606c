"""`fcagent serve`: the student behind an OpenAI-compatible endpoint, with escalation and recording.

Applications that call a model through the OpenAI Chat Completions API swap in the distilled student
by changing `base_url`. The server (FastAPI on uvicorn) answers `POST /v1/chat/completions` (messages
with `tool` turns and assistant `tool_calls`, `tools`, `tool_choice`, `temperature`, `top_p`,
`max_tokens` / `max_completion_tokens`, `n`, `seed`, `stop`, `stream` as server-sent events with
`tool_calls` deltas, `usage`) and `GET /v1/models`, in OpenAI's shapes, so the official client parses
them unchanged. Concurrent requests are decoded together (`LocalChatModel`'s batching).

* **Escalation** (`teacher=`): a student reply that fails `StudentCheck` (an unreadable or invalid
  call, a repeated call, an answer in words given without looking anything up) goes to the teacher,
  through the escalation routine `StudentMiddleware` runs too (`fcagent.routing.escalation`); the
  response's `model` field and the `x-fcagent-model` header say who answered.
* **Recording and feedback** (`store=`): every request is an episode holding the reply the client
  got (its id the response's id without `chatcmpl-`; role `student` when the student's reply stood),
  and every escalation a pair episode of its own, exported as a `teacher_student` pair;
  `POST /v1/feedback` (`id`, `label`, `reason`) labels an episode: production feedback from apps
  that are not LangChain.
* **Safe by default**: loopback only unless an API key is set (compared in constant time); request
  bodies and `max_tokens` are bounded; malformed requests get OpenAI-style 4xx errors, never a
  traceback; a client that disconnects mid-stream stops its rows of the batch.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import (  # module level: FastAPI resolves the routes' annotations here
    FastAPI,
    Request,
)
from fastapi.responses import JSONResponse, StreamingResponse
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from fcagent.core import keys
from fcagent.core.errors import UserError
from fcagent.core.names import model_name
from fcagent.routing.check import StudentCheck, Validator
from fcagent.routing.escalation import Escalations
from fcagent.serving.streaming import Answer, stream_events
from fcagent.serving.wire import BadRequest, ChatRequest, Feedback, error_body, finish_reason, json_depth, message_json
from fcagent.tracing.buffers import CallBuffer, EpisodeBuffer
from fcagent.tracing.episodes import EpisodeWrites, episode_from_buffer
from fcagent.tracing.store import TraceStore, open_store

__all__ = ["create_app", "serve", "background_server", "ChatRequest", "ServeSettings"]

MODEL_HEADER = "x-fcagent-model"
RUN_HEADER = "x-fcagent-run"


class ServeSettings(BaseModel):
    """Limits and identity of a server."""

    model_config = ConfigDict(extra="forbid")

    api_key: str | None = Field(None, description="Required as `Authorization: Bearer KEY` when set.")

    @field_validator("api_key")
    @classmethod
    def _real_key(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or value != value.strip()):
            raise ValueError("an API key must not be blank nor start or end with whitespace")
        return value
    max_body_bytes: int = Field(1_000_000, ge=1_000, description="Largest request body accepted.")
    max_tokens_limit: int = Field(1024, ge=1, description="Most tokens a request may ask for.")
    max_n: int = Field(8, ge=1, le=64, description="Most choices a request may ask for.")
    max_tools: int = Field(128, ge=1, description="Most tools a request may offer.")
    max_json_depth: int = Field(32, ge=4, description="Deepest nesting of the request's JSON (tool schemas, "
                                "arguments) accepted.")
    max_prompt_tokens: int = Field(8192, ge=16, description="Longest prompt (as the student renders it) accepted.")
    model_name: str = Field("fcagent-student", description="The name `GET /v1/models` lists for the student; a "
                            "request for another model (but the teacher's) is a 404, as OpenAI answers one.")


# --- answering -----------------------------------------------------------------------------------


def _model_id(model: Any) -> str:
    return model_name(model) or "model"


# Pydantic's error locations name union branches too (`tool_choice.literal['none','auto','required']`): the
# parameter a client wrote is the field names and indexes alone.
_BRANCH = re.compile(r"[\[\]'(),]|^(str|int|float|bool|dict|list|none|json-or-python)$|^[A-Z_]")


def _param(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if isinstance(p, int) or not _BRANCH.search(str(p))) or "body"


def _bound(model: BaseChatModel, tools: list[dict[str, Any]] | None, options: dict[str, Any]) -> Any:
    """A chat model other than the local student, asked what the request asks: its tools and tool choice,
    its response format."""
    if tools:
        model = model.bind_tools(tools, **({"tool_choice": options["tool_choice"]} if "tool_choice" in options else {}))
    if "response_format" in options:
        model = model.bind(response_format=options["response_format"])
    return model


class _Server:
    """What the routes share: the models, the escalation routine, the store, the limits."""

    def __init__(self, student: BaseChatModel, teacher: BaseChatModel | None, store: TraceStore | None,
                 check: StudentCheck, settings: ServeSettings):
        self.student, self.teacher, self.store, self.check, self.settings = student, teacher, store, check, settings
        self.routine = Escalations(check, store)
        # Request episodes are queued for the store's writer thread: a write never holds up a reply,
        # and a failed one is logged naming the episode (`writes.errors`).
        self.writes = EpisodeWrites(store, "report", None) if store is not None else None
        self.reloader: Any = None  # a StudentReloader, when the student's path may be re-pointed (a promotion)
        self.shadow: Any = None  # a Shadow: the teacher answers, the student is measured beside it

    def run_header(self) -> dict[str, str]:
        """`x-fcagent-run`: the run folder the serving student was loaded from, where it follows one."""
        return {RUN_HEADER: self.reloader.loaded} if self.reloader is not None else {}

    def names(self) -> list[str]:
        """The model names the server answers to (`GET /v1/models`)."""
        return [self.settings.model_name, *([_model_id(self.teacher)] if self.teacher is not None else [])]

    def validate_request(self, req: ChatRequest) -> None:
        """Every rule a request must pass before any model work (a BadRequest naming the field)."""
        req.check()
        if req.model is not None and req.model not in self.names():
            raise BadRequest(f"the model `{req.model}` does not exist here; this server serves "
                             f"{', '.join(self.names())} (GET /v1/models)", "model", status=404, code="model_not_found")
        if req.tools and len(req.tools) > self.settings.max_tools:
            raise BadRequest(f"{len(req.tools)} tools are over this server's limit of {self.settings.max_tools}",
                             "tools")
        for i, tool in enumerate(req.tools or []):
            if json_depth(tool.function.parameters, self.settings.max_json_depth) > self.settings.max_json_depth:
                raise BadRequest(f"the parameters of tool {tool.function.name} nest deeper than "
                                 f"{self.settings.max_json_depth} levels", f"tools.{i}.function.parameters")
        self.options(req)
        req.to_langchain()

    def prompt_tokens(self, req: ChatRequest) -> int | None:
        """The prompt's length in the student's tokens (local students only), rendered as it would be."""
        from fcagent.models.local.chat_model import LocalChatModel

        if not isinstance(self.student, LocalChatModel):
            return None
        prompt = self.student.render(req.to_langchain(), req.tool_schemas())
        return len(self.student.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def options(self, req: ChatRequest) -> dict[str, Any]:
        limit = self.settings.max_tokens_limit
        asked, field_name = ((req.max_completion_tokens, "max_completion_tokens") if req.max_completion_tokens
                             else (req.max_tokens, "max_tokens"))
        if asked is not None and asked > limit:
            raise BadRequest(f"`{field_name}` {asked} is over this server's limit of {limit}", field_name)
        if req.n > self.settings.max_n:
            raise BadRequest(f"`n` {req.n} is over this server's limit of {self.settings.max_n}", "n")
        options: dict[str, Any] = {"n": req.n}
        if req.tool_choice is not None:
            options["tool_choice"] = req.tool_choice_option()
        if req.response_format_option() is not None:
            options["response_format"] = req.response_format_option()
        if req.logprobs:
            options |= {"logprobs": True, "top_logprobs": req.top_logprobs or 0}
        if req.temperature is not None:
            options["temperature"] = req.temperature
        if req.top_p is not None:
            options["top_p"] = req.top_p
        if asked is not None:
            options["max_new_tokens"] = asked
        if req.seed is not None:
            options["seed"] = req.seed
        return options

    def _student_replies(self, student: BaseChatModel, messages: list[BaseMessage], tools: list[dict[str, Any]] | None,
                         stop: list[str] | None, options: dict[str, Any], callbacks: Any,
                         cancel: threading.Event) -> list[AIMessage]:
        """`n` replies of the student: the local model samples them from one prompt pass (and stops a
        request's rows when `cancel` is set); another chat model is asked once."""
        from fcagent.models.local.chat_model import LocalChatModel

        if isinstance(student, LocalChatModel):
            result = student.generate([messages], stop=stop, callbacks=callbacks, tools=tools, cancel=cancel,
                                           **options)
            return [g.message for g in result.generations[0]]
        if options.get("n", 1) > 1:
            raise BadRequest("this server's student answers n=1 only", "n")
        return [_bound(student, tools, options).invoke(messages, {"callbacks": callbacks}, stop=stop)]

    def answer(self, req: ChatRequest, episode_id: str, *, callbacks: list[Any], cancel: threading.Event) -> Answer:
        """The student's reply (or replies, for n > 1), escalated to the teacher when it fails the check
        (`Escalations`, shared with `StudentMiddleware`). Runs in a worker thread. With a store, the
        request is an episode holding the reply that reached the client; an escalation is stored as
        its own pair episode by the routine."""
        student = self.student  # this request's, whatever a reload swaps in meanwhile
        messages = req.to_langchain()
        tools = req.tool_schemas()
        options = self.options(req)
        stop = [req.stop] if isinstance(req.stop, str) else req.stop
        started_at, started = time.time(), time.perf_counter()
        escalated = None
        if self.shadow is not None:  # the teacher answers; the student is measured beside it, off this path
            reply = _bound(self.teacher, tools, options).invoke(messages, stop=stop)  # type: ignore[arg-type]
            replies, answered_by, why, latency = [reply], self.teacher, None, time.perf_counter() - started
            self.shadow.submit(messages, tools or [], reply, self.teacher)
        else:
            replies = self._student_replies(student, messages, tools, stop, options, callbacks, cancel)
            answered_by, latency = student, time.perf_counter() - started
            why = self.routine.judge(messages, replies[0] if replies else None, tools or [],
                                     require_call=True if req.requires_call() else None)
        if why is not None and self.teacher is not None and not cancel.is_set():
            started = time.perf_counter()
            reply = _bound(self.teacher, tools, options).invoke(messages)
            latency = time.perf_counter() - started
            self.routine.record(messages, tools or [], student_reply=replies[0] if replies else None,
                                teacher_reply=reply, why=why, student=student, teacher=self.teacher)
            replies, answered_by, escalated = [reply], self.teacher, why
        usage = [r.usage_metadata or {} for r in replies]  # the prompt once, every reply's tokens
        answer = Answer(messages=replies, escalated=escalated,
                         model=self.settings.model_name if answered_by is student else _model_id(answered_by),
                         prompt_tokens=usage[0].get("input_tokens", 0) if usage else 0,
                         completion_tokens=sum(u.get("output_tokens", 0) for u in usage))
        if self.writes is not None:
            role = {keys.ROLE: keys.Role.STUDENT.value} if answered_by is student else {}
            call = CallBuffer(id=str(uuid.uuid4()), messages=messages, tools=tools or [], model=answer.model, order=0,
                              params=options, metadata={keys.PROTOCOL: "native"},
                              generations=[ChatGeneration(message=r) for r in replies],
                              usage={"input_tokens": answer.prompt_tokens, "output_tokens": answer.completion_tokens},
                              latency_ms=latency * 1000)
            buf = EpisodeBuffer(id=episode_id, name="fcagent-serve", started_at=started_at, ended_at=time.time(),
                                tags=["serve"], metadata={keys.MODEL: answer.model, **role}, calls=[call],
                                outputs={"final_answer": replies[0].content if replies else None})
            self.writes.submit(episode_id, lambda: episode_from_buffer(buf))
        return answer


def create_app(student: BaseChatModel, *, teacher: BaseChatModel | None = None, store: str | TraceStore | None = None,
               validate: Validator = "grounded", settings: ServeSettings | None = None,
               follow: str | None = None, shadow: bool = False) -> Any:
    """The FastAPI app (see the module docs); `serve()` runs it with uvicorn. `follow`: the path the student
    was loaded from (a run folder, or a link a promotion re-points): the server swaps in the student it
    leads to when that changes (`fcagent.serving.reload`). `shadow`: the teacher answers every request and
    the student answers it too, off the request path, both stored side by side (`fcagent.routing.shadow`)."""
    settings = settings or ServeSettings()
    server = _Server(student, teacher, open_store(store) if store is not None else None, StudentCheck(validate),
                     settings)
    if follow is not None:
        from fcagent.serving.reload import StudentReloader

        server.reloader = StudentReloader(server, follow)
    if shadow:
        if teacher is None:
            raise UserError("shadow mode needs a teacher to answer (`--teacher SPEC`): the student is only measured")
        from fcagent.routing.shadow import Shadow

        server.shadow = Shadow(student, store=server.store, check=server.check)
    app = FastAPI(title="fcagent serve", docs_url=None, redoc_url=None)
    app.state.fcagent = server

    def error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
        kind = {401: "authentication_error", 404: "not_found_error", 413: "invalid_request_error"}.get(
            status, "invalid_request_error" if status < 500 else "server_error")
        return JSONResponse(error_body(message, param, kind, code), status_code=status)

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        if settings.api_key is not None:
            given = request.headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), settings.api_key.encode()):
                return error(401, "invalid or missing API key (Authorization: Bearer ...)", code="invalid_api_key")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
            return error(413, f"request body over {settings.max_body_bytes} bytes")
        try:
            return await call_next(request)
        except Exception as exc:  # noqa: BLE001 - a message, never a traceback
            return error(500, f"the server failed to answer: {type(exc).__name__}")

    async def read_json(request: Request) -> Any:
        body = b""
        async for part in request.stream():
            body += part
            if len(body) > settings.max_body_bytes:
                raise BadRequest(f"request body over {settings.max_body_bytes} bytes", status=413)
        try:
            data = json.loads(body or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the body is not valid JSON ({exc})") from None
        except RecursionError:
            raise BadRequest(f"the body nests deeper than {settings.max_json_depth} levels") from None
        if json_depth(data, settings.max_json_depth) > settings.max_json_depth:
            raise BadRequest(f"the body nests deeper than {settings.max_json_depth} levels")
        return data

    def parse(model: type[BaseModel], data: Any) -> Any:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            # A union reports every branch's error; the one that went deepest says what is wrong.
            err = max(exc.errors(), key=lambda e: len(e["loc"]))
            where = _param(err["loc"])
            if err["type"] == "extra_forbidden":
                raise BadRequest(f"`{where}` is not supported by this server", where) from None
            raise BadRequest(f"`{where}`: {err['msg']}", where) from None

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Any:
        if exc.status_code == 404:
            return error(404, f"no route {request.url.path} here; this server answers /v1/chat/completions, "
                         "/v1/models and /v1/feedback", code="unknown_url")
        if exc.status_code == 405:
            return error(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed")
        return error(exc.status_code, str(exc.detail))

    @app.get("/v1/models")
    async def models() -> Any:
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "fcagent"}
                                           for n in server.names()]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        if server.reloader is not None:
            server.reloader.maybe_reload()
        try:
            req = parse(ChatRequest, await read_json(request))
            server.validate_request(req)
            tokens = await asyncio.to_thread(server.prompt_tokens, req)
            if tokens is not None and tokens > settings.max_prompt_tokens:
                raise BadRequest(f"the prompt is {tokens} tokens, over this server's limit of "
                                 f"{settings.max_prompt_tokens}", "messages", code="context_length_exceeded")
        except BadRequest as exc:
            return error(exc.status, exc.message, exc.param, exc.code)
        except UserError as exc:
            return error(400, str(exc))
        episode_id = str(uuid.uuid4())
        response_id = f"chatcmpl-{episode_id}"
        created = int(time.time())
        cancel = threading.Event()
        if not req.stream:
            try:
                answer = await asyncio.to_thread(server.answer, req, episode_id, callbacks=[], cancel=cancel)
            except BadRequest as exc:
                return error(exc.status, exc.message, exc.param)
            except UserError as exc:
                return error(400, str(exc))
            choices = [{"index": i, "message": message_json(m), "finish_reason": finish_reason(m),
                        "logprobs": (m.response_metadata or {}).get("logprobs") if req.logprobs else None}
                       for i, m in enumerate(answer.messages)]
            body = {"id": response_id, "object": "chat.completion", "created": created, "model": answer.model,
                    "choices": choices, "system_fingerprint": None,
                    "usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
                              "total_tokens": answer.prompt_tokens + answer.completion_tokens}}
            return JSONResponse(body, headers={MODEL_HEADER: answer.model, **server.run_header()})
        return StreamingResponse(stream_events(server, req, episode_id, response_id, created, cancel, request),
                                 media_type="text/event-stream",
                                 headers={MODEL_HEADER: settings.model_name, **server.run_header()})

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> Any:
        from fcagent.tracing.feedback import parse_verdict

        if server.store is None:
            return error(404, "this server records nothing (start it with --store) so there is nothing to label")
        try:
            fb = parse(Feedback, await read_json(request))
        except BadRequest as exc:
            return error(exc.status, exc.message, exc.param)
        verdict = parse_verdict(fb.label)
        if verdict is None:
            return error(400, "`label` must be good or bad (up/down, true/false, 1/0, a score)", "label")
        episode = fb.id.removeprefix("chatcmpl-")
        # The whole id, never a prefix: a client labels its own responses, not whichever one an id starts.
        if not await asyncio.to_thread(server.store.has_episode, episode):
            return error(404, f"no response with id {fb.id!r} was recorded here", "id")
        label = await asyncio.to_thread(server.store.label, episode, verdict, fb.reason, fb.source)
        return {"id": fb.id, "episode": label.target_id, "label": "good" if verdict else "bad"}

    return app


def serve(student: str, *, host: str = "127.0.0.1", port: int = 8000, teacher: str | None = None,
          store: str | None = None, validate: Validator = "grounded", settings: ServeSettings | None = None,
          shadow: bool = False) -> None:
    """Load the models and run the server until interrupted (the CLI's `fcagent serve`)."""
    import uvicorn

    from fcagent.models.spec import ModelSpec

    settings = settings or ServeSettings()
    if host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        raise UserError(f"`--host {host}` exposes the model beyond this machine: set an API key "
                        "(`--api-key` or $FCAGENT_API_KEY)")
    spec = ModelSpec.parse(student)
    student_model = spec.load()
    teacher_model = ModelSpec.parse(teacher).load() if teacher else None
    # A student loaded from a path (a run folder, or `runs/prod`, a link promotions re-point) is followed.
    follow = spec.source if spec.kind == "folder" and not spec.settings else None
    app = create_app(student_model, teacher=teacher_model, store=store, validate=validate,
                     settings=settings.model_copy(update={"model_name": student}), follow=follow, shadow=shadow)
    if follow is not None and hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: app.state.fcagent.reloader.reload_now())
    uvicorn.run(app, host=host, port=port, log_level="info")


@contextmanager
def background_server(app: FastAPI, *, host: str = "127.0.0.1", start_timeout_s: float = 60.0) -> Iterator[str]:
    """Run `app` on a free loopback port in a thread for the `with` block; yields its base URL (tests,
    benchmarks, a notebook that calls its own student)."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True, name="fcagent-serve")
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server on {host}:{port} did not start")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
