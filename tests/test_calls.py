import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fcagent import Call, CallParseError, format_calls, parse_calls


def test_json_object():
    (call,) = parse_calls('{"name": "add", "arguments": {"a": 1, "b": 2.5}}')
    assert (call.name, call.args) == ("add", {"a": 1, "b": 2.5})


def test_json_inside_a_fence_or_a_tag_that_is_the_whole_reply():
    assert parse_calls('```json\n{"name": "f", "arguments": {"x": "y"}}\n```')[0].args == {"x": "y"}
    assert parse_calls('<tool_call>{"name": "g", "arguments": {}}</tool_call>')[0].name == "g"
    assert parse_calls('{"name": "g", "args": {"k": 1}}')[0].args == {"k": 1}  # the one documented alias
    assert parse_calls('{"type": "function", "function": {"name": "g", "arguments": "{}"}}')[0].name == "g"


@pytest.mark.parametrize("text", [
    'Sure!\n```json\n{"name": "f", "arguments": {"x": "y"}}\n```',  # prose around a call is an answer
    'I would call add(a=1, b=2) here.',
    'The answer is 3. {"name": "add", "arguments": {"a": 1}}',
    '{"name": "add", "arguments": {"a": 1}} and then I add more',
    '[f(x=1), g(y=\'a\')] and that is all',
    # a copied function schema is not a call: `parameters` is not an arguments key
    '{"name": "add", "description": "Add.", "parameters": {"a": 1}}',
])
def test_a_call_is_never_fished_out_of_prose_or_a_schema(text):
    with pytest.raises(CallParseError):
        parse_calls(text)


def test_json_list_is_parallel_calls_and_string_arguments_are_decoded():
    calls = parse_calls('[{"name": "a", "arguments": "{\\"k\\": 1}"}, {"name": "b", "arguments": {}}]')
    assert [c.name for c in calls] == ["a", "b"] and calls[0].args == {"k": 1}


def test_python_call_syntax():
    calls = parse_calls("math.factorial(number=5, opts={'fast': True}, xs=[1, -2.0], t=None)")
    assert calls[0].name == "math.factorial"
    assert calls[0].args == {"number": 5, "opts": {"fast": True}, "xs": [1, -2.0], "t": None}


def test_python_several_calls():
    calls = parse_calls("[f(x=1), g(y='a')]")
    assert [(c.name, c.args) for c in calls] == [("f", {"x": 1}), ("g", {"y": "a"})]


@pytest.mark.parametrize("text", [
    "__import__('os').system('echo pwned')",
    "f(x=open('/etc/passwd').read())",
    "f(x=lambda: 1)",
    "f(**{'a': 1})",
    "f(1, 2)",
    "no call here at all",
    "",
    '{"arguments": {"a": 1}}',
    '{"name": "f", "arguments": [1, 2]}',
])
def test_rejected_with_reason(text):
    with pytest.raises(CallParseError):
        parse_calls(text)


def test_hostile_output_is_refused_not_crashing():
    with pytest.raises(CallParseError, match="nested"):
        parse_calls('{"name": "f", "arguments": {"a": ' + "[" * 5000 + "]" * 5000 + "}}")
    with pytest.raises(CallParseError, match="limit"):
        parse_calls('{"name": "f", "arguments": {"a": "' + "x" * 50_000 + '"}}')
    with pytest.raises(CallParseError):
        parse_calls("f(x=" + "(" * 3000 + "1" + ")" * 3000 + ")")


def test_format_round_trips():
    calls = [Call(name="f", args={"a": [1, {"b": "c"}]}), Call(name="g", args={})]
    assert [c.signature() for c in parse_calls(format_calls(calls))] == [c.signature() for c in calls]


json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=20)
                           | st.floats(allow_nan=False, allow_infinity=False),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                           max_leaves=10)
names = st.from_regex(r"[a-z_][a-z0-9_]{0,10}(\.[a-z_][a-z0-9_]{0,6})?", fullmatch=True)


@settings(max_examples=150, deadline=None)
@given(name=names, args=st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), json_values, max_size=4))
def test_property_format_then_parse_is_identity(name, args):
    (call,) = parse_calls(format_calls([Call(name=name, args=args)]))
    assert call.name == name and call.args == args


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_property_arbitrary_text_parses_or_raises_parse_error(text):
    try:
        calls = parse_calls(text)
    except CallParseError:
        return
    assert calls and all(isinstance(c, Call) for c in calls)


def test_no_eval_or_exec_anywhere_in_fcagent():
    root = Path(__file__).resolve().parents[1] / "fcagent"
    offenders = []
    for path in root.rglob("*.py"):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"(?<![\w.])(eval|exec)\s*\(", line) or "literal_eval" in line:
                offenders.append(f"{path.name}:{lineno}")
    assert offenders == []


def test_numbers_out_of_range_are_not_calls():
    """`1e999` is valid JSON but parses to inf, which no function takes and JSON cannot write back
    (the constrained decoder let a random model write one)."""
    for text in ('{"name": "f", "arguments": {"x": -1e999}}', '{"name": "f", "arguments": {"x": NaN}}',
                 '{"name": "f", "arguments": "{\\"x\\": Infinity}"}', "f(x=1e999)"):
        with pytest.raises(CallParseError):
            parse_calls(text)
    assert parse_calls('{"name": "f", "arguments": {"x": 1e300}}')[0].args == {"x": 1e300}
