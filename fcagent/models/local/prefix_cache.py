"""Prompt KV caches kept for reuse by later prompts that share a prefix.

Step k+1 of an agent episode is step k's prompt plus a reply and an observation, so a cache of step
k's prompt saves all but the new tokens (~50 instead of ~600). A few caches are kept, least recently
used out first; a prefix is reused only when at least `min_shared` tokens match.
"""

from __future__ import annotations

import copy
import functools
import inspect
import threading
from typing import Any

__all__ = ["PrefixCache"]


class PrefixCache:
    """`prefill(model, tokens)`: a KV cache of `tokens[:-1]`, pre-filled from the longest kept prefix."""

    def __init__(self, size: int = 8, *, min_shared: int = 16):
        self.size = size
        self.min_shared = min_shared
        self._entries: list[tuple[list[int], Any]] = []  # (token ids, DynamicCache), newest last
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def _longest(self, tokens: list[int], target: int) -> tuple[list[int] | None, Any, int]:
        best, best_len = None, 0
        for i, (cached_tokens, _) in enumerate(self._entries):
            limit = min(len(cached_tokens), target)
            n = 0
            while n < limit and cached_tokens[n] == tokens[n]:
                n += 1
            if n > best_len:
                best, best_len = i, n
        if best is None or best_len < self.min_shared:
            return None, None, 0
        entry = self._entries.pop(best)
        self._entries.append(entry)  # most recently used last
        return entry[0], entry[1], best_len

    def prefill(self, model: Any, tokens: list[int]) -> Any:
        """A cache holding `tokens[:-1]` (generate() feeds the last token itself); only the tokens past the
        longest kept prefix go through the model. The result is the caller's to extend."""
        import torch
        from transformers import DynamicCache

        target = len(tokens) - 1
        with self._lock:
            cached_tokens, cached, shared = self._longest(tokens, target)
            cache = copy.deepcopy(cached) if cached is not None else DynamicCache()
        if cached_tokens is not None and len(cached_tokens) > shared:
            cache.crop(shared - len(cached_tokens))  # transformers 5: a negative count of tokens to drop
        if target > shared:
            model(torch.tensor([tokens[shared:target]]), use_cache=True, **kv_cache_argument(model, cache))
        if self.size > 0:
            with self._lock:
                self._entries.append((tokens[:target], copy.deepcopy(cache)))
                del self._entries[:-self.size]
        return cache


def kv_cache_argument(model: Any, cache: Any) -> dict[str, Any]:
    """`cache` under the keyword this transformers' models take: `cache` where `forward` has it (5.x,
    which deprecates `past_key_values` and drops it from `forward` in 5.40), else `past_key_values`.
    `generate` takes the same keyword as `forward`."""
    return {_cache_keyword(type(model)): cache}  # the class's forward: a spy on the instance hides it


@functools.cache
def _cache_keyword(model_class: type) -> str:  # read once per class, not on every decode
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"
