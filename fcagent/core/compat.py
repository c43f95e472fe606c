"""Where the libraries fcagent builds on disagree between versions."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

__all__ = ["peft_trl_deprecations_silenced"]


@contextlib.contextmanager
def peft_trl_deprecations_silenced() -> Iterator[None]:
    """PEFT's and TRL's own code still asks a model `is_gradient_checkpointing`, which transformers 5
    renamed (it warns on every training run and every adapter load). Their deprecation, in their code:
    nothing a user of fcagent can act on, so it is not shown. fcagent's own calls use the new names."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield
