"""What a model is called in traces and replies: one rule for every route."""

from __future__ import annotations

from typing import Any

__all__ = ["model_name", "invocation_model_name"]

_NAME_FIELDS = ("model_name", "model", "model_id", "deployment_name")


def model_name(model: Any) -> str | None:
    """A chat model object's name: its provider's model id where it has one, else its class name."""
    if model is None:
        return None
    for attr in _NAME_FIELDS:
        value = getattr(model, attr, None)
        if isinstance(value, str):
            return value
    return type(model).__name__


def invocation_model_name(params: dict[str, Any], serialized: dict[str, Any] | None) -> str | None:
    """The same rule, read from what a LangChain callback sees: the invocation params, else the
    model's serialised name."""
    for key in _NAME_FIELDS:
        if isinstance(params.get(key), str):
            return params[key]
    return (serialized or {}).get("name") or params.get("_type")
