"""`fcagent serve`'s streamed replies: server-sent events in OpenAI's chunk shapes, the student's text as it
is decoded, and the reply `invoke` would give (an `Answer`) at the end; one answer routine serves both."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage
from pydantic import BaseModel, ConfigDict

from fcagent.core.errors import UserError
from fcagent.core.records import StepError
from fcagent.serving.wire import BadRequest, ChatRequest, error_body, finish_reason, message_json

__all__ = ["Answer", "TokenPieces", "stream_events"]


class TokenPieces(BaseCallbackHandler):
    """Hands the student's streamed text and its last chunk (the tool calls) to an asyncio queue."""

    run_inline = True

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue):
        self.loop, self.queue = loop, queue

    def on_llm_new_token(self, token: str, *, chunk: Any = None, **kwargs: Any) -> None:
        message = getattr(chunk, "message", None)
        self.loop.call_soon_threadsafe(self.queue.put_nowait, ("piece", token, message))


class Answer(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    messages: list[AIMessage]
    model: str
    escalated: StepError | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


async def stream_events(server: Any, req: ChatRequest, episode_id: str, response_id: str, created: int,
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
                 "model": model or server.settings.model_name, "system_fingerprint": None,
                 "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    async def run() -> None:
        try:
            handler = [TokenPieces(loop, queue)] if streams_tokens else []
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
                body = error_body(str(payload) if isinstance(payload, BadRequest | UserError) else
                                   f"the server failed to answer: {type(payload).__name__}", None)
                yield f"data: {json.dumps(body)}\n\n"
                yield "data: [DONE]\n\n"
                return
            answer: Answer = payload
            for index, message in enumerate(answer.messages):
                body = message_json(message)
                text = body.get("content") or ""
                escalated = answer.escalated is not None
                if index == 0 and not escalated and text.startswith(sent):
                    text = text[len(sent):]  # the student's text already streamed
                if text:
                    yield event({"content": text}, model=answer.model, index=index)
                for i, call in enumerate(body.get("tool_calls") or []):
                    yield event({"tool_calls": [{"index": i, **call}]}, model=answer.model, index=index)
                yield event({}, finish=finish_reason(message), model=answer.model, index=index)
            if req.stream_options is not None and req.stream_options.include_usage:
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
