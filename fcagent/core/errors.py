"""Errors split by who must act (the model's mistakes are observations, see `fcagent.agent.graph`)."""

__all__ = ["UserError", "RunFailure", "StoreError", "StoreWriteError"]


class UserError(ValueError):
    """A mistake of the developer using fcagent: says which argument and how to fix it."""


class RunFailure(RuntimeError):
    """A run failed for a reason outside the caller's control; carries the evidence."""

    def __init__(self, message: str, *, evidence: dict | None = None):
        super().__init__(message)
        self.evidence = evidence or {}


class StoreError(RuntimeError):
    """The store cannot be used as asked (newer schema, corrupt import); nothing stored was changed."""


class StoreWriteError(RuntimeError):
    """An episode could not be written (disk full, store locked, ...): it is not in the store."""

    def __init__(self, episode_id: str, cause: BaseException):
        super().__init__(f"episode {episode_id} was not stored: {type(cause).__name__}: {cause}")
        self.episode_id = episode_id
        self.cause = cause
