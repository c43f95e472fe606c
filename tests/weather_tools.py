"""The user-style tools the tracing and export tests give their `create_agent` agents."""

from langchain_core.messages import AIMessage
from langchain_core.tools import tool


@tool
def get_weather(city: str) -> str:
    """Weather for a city."""
    return f"sunny in {city}"


@tool
def convert(celsius: float) -> float:
    """Celsius to Fahrenheit."""
    return celsius * 9 / 5 + 32


def call(name, args, call_id):
    """A scripted model's reply calling `name`."""
    return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": call_id}])
