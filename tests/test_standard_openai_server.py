"""LangChain's standard integration tests for `ChatOpenAI` pointed at `fcagent serve` (the bundled model):
the server is a drop-in OpenAI endpoint. Quality-only failures are `xfail` with the reason."""

import functools

import pytest
from langchain_openai import ChatOpenAI
from langchain_tests.integration_tests import ChatModelIntegrationTests

pytestmark = pytest.mark.slow  # starts a server with the bundled model

_SERVER: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def _served():
    from fcagent.models.loading import load_chat_model
    from fcagent.serving.app import ServeSettings, background_server, create_app

    student = load_chat_model("bundled:smollm2-135m", max_new_tokens=96)  # as tests/test_standard_chat_model.py
    with background_server(create_app(student, settings=ServeSettings(model_name="fcagent-student"))) as url:
        _SERVER["url"] = url
        yield
    _SERVER.clear()


def _quality(name: str, reason: str, run: bool = True):
    """Expected to fail for the 135M model's answer alone; `run=False` where the reply runs to the token limit
    and tests/test_standard_chat_model.py runs the same model's same failure."""
    base = getattr(ChatModelIntegrationTests, name)

    @functools.wraps(base)
    def test(self, *args, **kwargs):
        return base(self, *args, **kwargs)

    test.pytestmark = [*getattr(base, "pytestmark", []), pytest.mark.xfail(reason=reason, strict=False, run=run)]
    return test


_RUNS_ON = "the 135M model repeats itself inside a string until the token limit; the grammar keeps the structure"


class TestChatOpenAIOnFcagentServe(ChatModelIntegrationTests):
    @property
    def chat_model_class(self):
        return ChatOpenAI

    @property
    def chat_model_params(self) -> dict:
        return {"model": "fcagent-student", "base_url": f"{_SERVER['url']}/v1", "api_key": "unused",
                "max_retries": 0, "stream_usage": True}

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_image_inputs(self) -> bool:
        return False  # a 400 naming the content part (tests/test_serve_contract.py)

    test_structured_output = _quality("test_structured_output", _RUNS_ON, run=False)
    test_structured_output_async = _quality("test_structured_output_async", _RUNS_ON, run=False)
    test_structured_output_pydantic_2_v1 = _quality("test_structured_output_pydantic_2_v1", _RUNS_ON, run=False)
    test_structured_output_optional_param = _quality("test_structured_output_optional_param", _RUNS_ON, run=False)
    test_unicode_tool_call_integration = _quality("test_unicode_tool_call_integration", _RUNS_ON, run=False)
    test_json_mode = _quality("test_json_mode", "json_mode holds the reply to a JSON object; the 135M model leaves "
                              "out a field the prompt asks for")
    test_agent_loop = _quality("test_agent_loop", "asked without a forced call, the 135M model answers in words "
                               "instead of calling the tool")
