"""Errors split by who must act (the model's mistakes are observations, see `fcagent.graph`)."""

__all__ = ["UserError", "RunFailure"]


class UserError(ValueError):
    """A mistake of the developer using fcagent: says which argument and how to fix it."""


class RunFailure(RuntimeError):
    """A run failed for a reason outside the caller's control; carries the evidence."""

    def __init__(self, message: str, *, evidence: dict | None = None):
        super().__init__(message)
        self.evidence = evidence or {}
