"""`fcagent serve`: the student behind an OpenAI-compatible endpoint, with escalation and recording.

Applications that call a model through the OpenAI Chat Completions API swap in the distilled student
by changing `base_url`. The server (FastAPI on uvicorn) answers `POST /v1/chat/completions` (messages
with `tool` turns and assistant `tool_calls`, `tools`, `tool_choice`, `temperature`, `top_p`,
`max_tokens` / `max_completion_tokens`, `n`, `seed`, `stop`, `stream` as server-sent events with
`tool_calls` deltas, `usage`) and `GET /v1/models`, in OpenAI's shapes, so the official client parses
them unchanged. Concurrent requests are decoded together (`LocalChatModel`'s batching).

* **Escalation** (`teacher=`): a student reply that fails `StudentCheck` (an unreadable or invalid
  call, a repeated call, an answer in words given without looking anything up) goes to the teacher;
  the response's `model` field and the `x-fcagent-model` header say who answered.
* **Recording and feedback** (`store=`): every request is an episode (the same records as
  `TraceRecorder`), its id the response's id without `chatcmpl-`; an escalation labels the student's
  reply bad and the teacher's good, so it exports as a pair; `POST /v1/feedback` (`id`, `label`,
  `reason`) labels an episode: production feedback from apps that are not LangChain.
* **Safe by default**: loopback only unless an API key is set (compared in constant time); request
  bodies and `max_tokens` are bounded; malformed requests get OpenAI-style 4xx errors, never a
  traceback; a client that disconnects mid-stream stops its rows of the batch.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from fastapi import FastAPI, Request  # module level: FastAPI resolves the routes' annotations here
from fastapi.responses import JSONResponse, StreamingResponse
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fcagent.errors import UserError
from fcagent.middleware import StudentCheck, Validator
from fcagent.prompting import assistant_text, tool_schemas
from fcagent.records import StepError
from fcagent.recorder import TraceRecorder
from fcagent.store import TraceStore, open_store

__all__ = ["create_app", "serve", "background_server", "ChatRequest", "ServeSettings"]

MODEL_HEADER = "x-fcagent-model"


class ServeSettings(BaseModel):
    """Limits and identity of a server."""

    model_config = ConfigDict(extra="forbid")

    api_key: str | None = Field(None, description="Required as `Authorization: Bearer KEY` when set.")
    max_body_bytes: int = Field(1_000_000, ge=1_000, description="Largest request body accepted.")
    max_tokens_limit: int = Field(1024, ge=1, description="Most tokens a request may ask for.")
    max_n: int = Field(8, ge=1, le=64, description="Most choices a request may ask for.")
    model_name: str = Field("fcagent-student", description="The name `GET /v1/models` lists.")


# --- the request ---------------------------------------------------------------------------------


class _Function(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class _Tool(BaseModel):
    type: Literal["function"] = "function"
    function: _Function


class _CallFunction(BaseModel):
    name: str
    arguments: str = "{}"


class _ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: _CallFunction


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[_ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: the text ones
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") in ("text", "input_text"))
        return self.content or ""


class ChatRequest(BaseModel):
    """The body of `POST /v1/chat/completions` (fields the server does not use are accepted and ignored)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[_Message] = Field(min_length=1)
    tools: list[_Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def to_langchain(self) -> list[BaseMessage]:
        out: list[BaseMessage] = []
        for i, m in enumerate(self.messages):
            if m.role in ("system", "developer"):
                out.append(SystemMessage(m.text()))
            elif m.role == "user":
                out.append(HumanMessage(m.text()))
            elif m.role == "tool":
                if not m.tool_call_id:
                    raise _BadRequest(f"messages[{i}].tool_call_id is required for a tool message", "messages")
                out.append(ToolMessage(m.text(), tool_call_id=m.tool_call_id))
            else:
                calls = []
                for call in m.tool_calls or []:
                    try:
                        args = json.loads(call.function.arguments or "{}")
                    except json.JSONDecodeError:
                        raise _BadRequest(f"messages[{i}].tool_calls: arguments of {call.function.name} are not JSON",
                                          "messages") from None
                    calls.append({"name": call.function.name, "args": args if isinstance(args, dict) else {}, "id": call.id})
                out.append(AIMessage(content=m.text(), tool_calls=calls))
        return out

    def tool_schemas(self) -> list[dict[str, Any]] | None:
        """The tools the reply may call: none for `tool_choice="none"`, the named one for a function choice."""
        if not self.tools or self.tool_choice == "none":
            return None
        tools = [t.model_dump() for t in self.tools]
        if isinstance(self.tool_choice, dict):
            name = (self.tool_choice.get("function") or {}).get("name")
            tools = [t for t in tools if t["function"]["name"] == name]
            if not tools:
                raise _BadRequest(f"tool_choice names {name!r}, which is not among `tools`", "tool_choice")
        return tools

    def requires_call(self) -> bool:
        return self.tool_choice == "required" or isinstance(self.tool_choice, dict)


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code


class Feedback(BaseModel):
    id: str = Field(min_length=1, description="A response id (chatcmpl-...) or an episode id.")
    label: str | bool | float = Field(description="good / bad (up/down, true/false, 1/0, a score >= 0.5 is good).")
    reason: str = ""
    source: str = "feedback"


# --- answering -----------------------------------------------------------------------------------


class _Pieces(BaseCallbackHandler):
    """Hands the student's streamed text and its last chunk (the tool calls) to an asyncio queue."""

    run_inline = True

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue):
        self.loop, self.queue = loop, queue

    def on_llm_new_token(self, token: str, *, chunk: Any = None, **kwargs: Any) -> None:
        message = getattr(chunk, "message", None)
        self.loop.call_soon_threadsafe(self.queue.put_nowait, ("piece", token, message))


class _Answer(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    messages: list[AIMessage]
    model: str
    escalated: StepError | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


def _model_id(model: Any) -> str:
    for attr in ("model_name", "model", "model_id"):
        if isinstance(getattr(model, attr, None), str):
            return getattr(model, attr)
    return type(model).__name__


class _Server:
    """What the routes share: the models, the check, the store, the limits."""

    def __init__(self, student: BaseChatModel, teacher: BaseChatModel | None, store: TraceStore | None,
                 check: StudentCheck, settings: ServeSettings):
        self.student, self.teacher, self.store, self.check, self.settings = student, teacher, store, check, settings

    def options(self, req: ChatRequest) -> dict[str, Any]:
        limit = self.settings.max_tokens_limit
        wanted = req.max_completion_tokens or req.max_tokens
        if wanted is not None and wanted > limit:
            raise _BadRequest(f"max_tokens {wanted} is over this server's limit of {limit}", "max_tokens")
        if req.n > self.settings.max_n:
            raise _BadRequest(f"n {req.n} is over this server's limit of {self.settings.max_n}", "n")
        options: dict[str, Any] = {"n": req.n}
        if req.temperature is not None:
            options["temperature"] = req.temperature
        if req.top_p is not None:
            options["top_p"] = req.top_p
        if wanted is not None:
            options["max_new_tokens"] = wanted
        if req.seed is not None:
            options["seed"] = req.seed
        return options

    def _student_replies(self, messages: list[BaseMessage], tools: list[dict[str, Any]] | None, stop: list[str] | None,
                         options: dict[str, Any], callbacks: Any, run_id: uuid.UUID,
                         cancel: threading.Event) -> tuple[list[AIMessage], dict[str, Any]]:
        """`n` replies of the student: the local model samples them from one prompt pass (and stops a
        request's rows when `cancel` is set); another chat model is asked once."""
        from fcagent.local_model import LocalChatModel

        if isinstance(self.student, LocalChatModel):
            result = self.student.generate([messages], stop=stop, callbacks=callbacks, run_id=run_id, tools=tools,
                                           cancel=cancel, **options)
            replies = [g.message for g in result.generations[0]]
            usage = [r.usage_metadata or {} for r in replies]  # the prompt once, every reply's tokens
            return replies, {"input_tokens": usage[0].get("input_tokens", 0) if usage else 0,
                             "output_tokens": sum(u.get("output_tokens", 0) for u in usage)}
        if options.get("n", 1) > 1:
            raise _BadRequest("this server's student answers n=1 only", "n")
        model = self.student.bind_tools(tools) if tools else self.student
        reply = model.invoke(messages, {"callbacks": callbacks, "run_id": run_id}, stop=stop)
        return [reply], dict(reply.usage_metadata or {})

    def answer(self, req: ChatRequest, episode_id: str, *, callbacks: list[Any], cancel: threading.Event) -> _Answer:
        """The student's reply (or replies, for n > 1), escalated to the teacher when it fails the check.
        Runs in a worker thread; every model call is one episode's (recorded when a store is set)."""
        messages = req.to_langchain()
        tools = req.tool_schemas()
        options = self.options(req)
        stop = [req.stop] if isinstance(req.stop, str) else req.stop
        recorder = TraceRecorder(self.store, tags=["serve"]) if self.store is not None else None
        config_callbacks = [*callbacks, *([recorder] if recorder else [])]
        root = _EpisodeRoot(episode_id, config_callbacks)
        student_id = uuid.uuid4()
        try:
            replies, usage = self._student_replies(messages, tools, stop, options, root.manager, student_id, cancel)
            answer = _Answer(messages=replies, model=_model_id(self.student),
                             prompt_tokens=usage.get("input_tokens", 0), completion_tokens=usage.get("output_tokens", 0))
            why = self.check.failure(messages, replies[0] if replies else None, tools or [])
            if why is None and req.requires_call() and not replies[0].tool_calls:
                why = StepError(kind="no_call", detail="tool_choice asks for a call and the reply has none")
            if why is not None and self.teacher is not None and not cancel.is_set():
                model = self.teacher.bind_tools(tools) if tools else self.teacher
                teacher_id = uuid.uuid4()
                reply = model.invoke(messages, {"callbacks": root.manager, "run_id": teacher_id})
                answer = _Answer(messages=[reply], model=_model_id(self.teacher), escalated=why,
                                 prompt_tokens=(reply.usage_metadata or {}).get("input_tokens", 0),
                                 completion_tokens=(reply.usage_metadata or {}).get("output_tokens", 0))
                root.escalation = (str(student_id), str(teacher_id), why)
        except BaseException as exc:
            root.end(error=exc)
            raise
        root.end(outputs={"final_answer": answer.messages[0].content if answer.messages else None})
        if self.store is not None and root.escalation is not None:
            student_call, teacher_call, why = root.escalation
            self.store.label(student_call, False, str(why), "serve-escalation", candidate=0, kind=why.kind)
            self.store.label(teacher_call, True, "teacher answer after a student failure", "serve-escalation", candidate=0)
        return answer


class _EpisodeRoot:
    """One request as one LangChain root run (so the recorder writes one episode, its id `episode_id`)."""

    def __init__(self, episode_id: str, callbacks: list[Any]):
        from langchain_core.callbacks import CallbackManager

        self.escalation: tuple[str, str, StepError] | None = None
        manager = CallbackManager.configure(inheritable_callbacks=callbacks)
        self.run = manager.on_chain_start({"name": "fcagent-serve"}, {}, run_id=uuid.UUID(episode_id),
                                          name="fcagent-serve")
        self.manager = self.run.get_child()

    def end(self, *, outputs: Any = None, error: BaseException | None = None) -> None:
        if error is not None:
            self.run.on_chain_error(error)
        else:
            self.run.on_chain_end(outputs or {})


def _message_json(message: AIMessage) -> dict[str, Any]:
    calls = [{"id": c["id"] or f"call_{uuid.uuid4().hex[:12]}", "type": "function",
              "function": {"name": c["name"], "arguments": json.dumps(c["args"], ensure_ascii=False)}}
             for c in message.tool_calls]
    text = message.content if isinstance(message.content, str) else assistant_text(message)
    out: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        out["tool_calls"] = calls
    return out


def _finish_reason(message: AIMessage) -> str:
    if message.tool_calls:
        return "tool_calls"
    return "length" if (message.response_metadata or {}).get("finish_reason") == "length" else "stop"


def _error_body(message: str, param: str | None, kind: str = "invalid_request_error", code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def create_app(student: BaseChatModel, *, teacher: BaseChatModel | None = None, store: str | TraceStore | None = None,
               validate: Validator = "grounded", settings: ServeSettings | None = None) -> Any:
    """The FastAPI app (see the module docs); `serve()` runs it with uvicorn."""
    settings = settings or ServeSettings()
    server = _Server(student, teacher, open_store(store) if store is not None else None, StudentCheck(validate),
                     settings)
    app = FastAPI(title="fcagent serve", docs_url=None, redoc_url=None)
    app.state.fcagent = server

    def error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
        kind = {401: "authentication_error", 404: "not_found_error", 413: "invalid_request_error"}.get(
            status, "invalid_request_error" if status < 500 else "server_error")
        return JSONResponse(_error_body(message, param, kind, code), status_code=status)

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
                raise _BadRequest(f"request body over {settings.max_body_bytes} bytes", status=413)
        try:
            return json.loads(body or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _BadRequest(f"the body is not valid JSON ({exc})") from None

    def parse(model: type[BaseModel], data: Any) -> Any:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "body"
            raise _BadRequest(f"`{where}`: {err['msg']}", where) from None

    @app.get("/v1/models")
    async def models() -> Any:
        names = [settings.model_name, *([_model_id(teacher)] if teacher is not None else [])]
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "fcagent"}
                                           for n in names]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        try:
            req = parse(ChatRequest, await read_json(request))
            req.to_langchain()
            server.options(req)
        except _BadRequest as exc:
            return error(exc.status, exc.message, exc.param, exc.code)
        episode_id = str(uuid.uuid4())
        response_id = f"chatcmpl-{episode_id}"
        created = int(time.time())
        cancel = threading.Event()
        if not req.stream:
            try:
                answer = await asyncio.to_thread(server.answer, req, episode_id, callbacks=[], cancel=cancel)
            except _BadRequest as exc:
                return error(exc.status, exc.message, exc.param)
            except UserError as exc:
                return error(400, str(exc))
            choices = [{"index": i, "message": _message_json(m), "finish_reason": _finish_reason(m), "logprobs": None}
                       for i, m in enumerate(answer.messages)]
            body = {"id": response_id, "object": "chat.completion", "created": created, "model": answer.model,
                    "choices": choices, "system_fingerprint": None,
                    "usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
                              "total_tokens": answer.prompt_tokens + answer.completion_tokens}}
            return JSONResponse(body, headers={MODEL_HEADER: answer.model})
        return StreamingResponse(_stream(server, req, episode_id, response_id, created, cancel, request),
                                 media_type="text/event-stream", headers={MODEL_HEADER: _model_id(student)})

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> Any:
        from fcagent.feedback import parse_verdict

        if server.store is None:
            return error(404, "this server records nothing (start it with --store) so there is nothing to label")
        try:
            fb = parse(Feedback, await read_json(request))
        except _BadRequest as exc:
            return error(exc.status, exc.message, exc.param)
        verdict = parse_verdict(fb.label)
        if verdict is None:
            return error(400, "`label` must be good or bad (up/down, true/false, 1/0, a score)", "label")
        try:
            label = await asyncio.to_thread(server.store.label, fb.id.removeprefix("chatcmpl-"), verdict, fb.reason,
                                            fb.source)
        except UserError as exc:
            return error(404, str(exc), "id")
        return {"id": fb.id, "episode": label.target_id, "label": "good" if verdict else "bad"}

    return app


async def _stream(server: _Server, req: ChatRequest, episode_id: str, response_id: str, created: int,
                  cancel: threading.Event, request: Any) -> Any:
    """Server-sent events: the student's text as it is decoded, tool calls as `tool_calls` deltas, the
    finish reason, usage if asked, `[DONE]`. A teacher's reply (escalation) arrives whole at the end."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    # Tokens stream as decoded only where no teacher may still overrule the reply: what has been sent
    # cannot be taken back. With a teacher, the reply (the student's or the teacher's) arrives whole.
    streams_tokens = req.n == 1 and server.teacher is None

    def event(delta: dict[str, Any], finish: str | None = None, model: str | None = None, index: int = 0) -> str:
        chunk = {"id": response_id, "object": "chat.completion.chunk", "created": created,
                 "model": model or _model_id(server.student), "system_fingerprint": None,
                 "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    async def run() -> None:
        try:
            handler = [_Pieces(loop, queue)] if streams_tokens else []
            answer = await asyncio.to_thread(server.answer, req, episode_id, callbacks=handler, cancel=cancel)
            await queue.put(("done", answer, None))
        except Exception as exc:  # noqa: BLE001 - the stream ends with an error event, not a traceback
            await queue.put(("error", exc, None))

    task = asyncio.create_task(run())
    yield event({"role": "assistant", "content": ""})
    sent = ""
    try:
        while True:
            if await request.is_disconnected():
                cancel.set()  # the rows of this request stop; the rest of the batch goes on
                return
            try:
                kind, payload, _ = await asyncio.wait_for(queue.get(), timeout=0.5)
            except asyncio.TimeoutError:
                continue
            if kind == "piece":
                if payload:
                    sent += payload
                    yield event({"content": payload})
                continue
            if kind == "error":
                body = _error_body(str(payload) if isinstance(payload, _BadRequest | UserError) else
                                   f"the server failed to answer: {type(payload).__name__}", None)
                yield f"data: {json.dumps(body)}\n\n"
                yield "data: [DONE]\n\n"
                return
            answer: _Answer = payload
            for index, message in enumerate(answer.messages):
                body = _message_json(message)
                text = body.get("content") or ""
                escalated = answer.escalated is not None
                if index == 0 and not escalated and text.startswith(sent):
                    text = text[len(sent):]  # the student's text already streamed
                if text:
                    yield event({"content": text}, model=answer.model, index=index)
                for i, call in enumerate(body.get("tool_calls") or []):
                    yield event({"tool_calls": [{"index": i, **call}]}, model=answer.model, index=index)
                yield event({}, finish=_finish_reason(message), model=answer.model, index=index)
            if (req.stream_options or {}).get("include_usage"):
                usage = {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
                         "total_tokens": answer.prompt_tokens + answer.completion_tokens}
                chunk = {"id": response_id, "object": "chat.completion.chunk", "created": created,
                         "model": answer.model, "choices": [], "usage": usage}
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"
            return
    finally:
        if not task.done():
            cancel.set()


def serve(student: str, *, host: str = "127.0.0.1", port: int = 8000, teacher: str | None = None,
          store: str | None = None, validate: Validator = "grounded", settings: ServeSettings | None = None) -> None:
    """Load the models and run the server until interrupted (the CLI's `fcagent serve`)."""
    import uvicorn

    from fcagent.models import load_chat_model, resolve_model

    settings = settings or ServeSettings()
    if host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        raise UserError(f"`--host {host}` exposes the model beyond this machine: set an API key "
                        "(`--api-key` or $FCAGENT_API_KEY)")
    student_model = load_chat_model(student)
    teacher_model = resolve_model(teacher) if teacher else None
    app = create_app(student_model, teacher=teacher_model, store=store, validate=validate,
                     settings=settings.model_copy(update={"model_name": student}))
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
