"""TRL's trainers with cheaper forwards: their losses, metrics, logging and PEFT handling unchanged.

Both trainers call the model as `model(..., labels=labels, fused_lm_head=True)` and read per-token
log-probabilities back. Two things make that call cost more than it must here:

* **The LM head at every position.** TRL's fused head scores only the labelled positions on
  Triton devices, but every position on a CPU; with SmolLM2's 49k-token vocabulary that is ~20% of a
  step, spent mostly on prompt tokens nothing is learnt from. The compact head here runs the backbone,
  then the LM head at the labelled positions only (`CompactHeadSFTTrainer`, and DPO below).
* **The DPO prompt twice.** TRL scores a pair as two sequences, prompt+chosen and prompt+rejected, so
  the prompt (most of a row here: ~600 tokens before a ~30-token call) goes through the backbone twice,
  forward and backward, for the policy and again for the reference (TRL issue 3549; Wang & Hegde 2024,
  arXiv 2410.20305). `PrefixSharingDPOTrainer` packs a pair into one sequence `[prompt, chosen,
  rejected]` whose rejected tokens attend to the prompt but not to the chosen ones (a block attention
  mask) and restart their positions after the prompt, so every token sees exactly the context it sees
  in TRL's two sequences.

Each applies where it can — an SDPA or eager attention, and for packing a batch laid out as TRL's DPO
collator lays it out (the chosen rows, then the rejected rows of the same prompts) — and TRL's own
forward runs otherwise. Tests check that log-probabilities and gradients match TRL's.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any

__all__ = ["PrefixSharingDPOTrainer", "CompactHeadSFTTrainer", "install_prefix_sharing", "install_compact_head",
           "PairLayout"]


@dataclass
class PairLayout:
    prompt: list[int]  # prompt length per pair
    chosen: list[int]  # chosen completion length per pair
    rejected: list[int]


def pair_layout(input_ids: Any, labels: Any) -> PairLayout | None:
    """The pairs in TRL's batch layout (rows 0..B-1 prompt+chosen, B..2B-1 prompt+rejected, labels
    -100 outside the completions), or None when the batch is not laid out so."""
    import torch

    rows = input_ids.shape[0]
    if rows % 2 or labels is None or labels.shape != input_ids.shape:
        return None
    half = rows // 2
    scored = labels != -100
    layout = PairLayout([], [], [])
    for i in range(half):
        c_idx = torch.nonzero(scored[i]).flatten()
        r_idx = torch.nonzero(scored[half + i]).flatten()
        if len(c_idx) == 0 or len(r_idx) == 0:
            return None
        p = int(c_idx[0])
        if int(r_idx[0]) != p or not torch.equal(input_ids[i, :p], input_ids[half + i, :p]):
            return None
        c, r = len(c_idx), len(r_idx)
        if int(c_idx[-1]) != p + c - 1 or int(r_idx[-1]) != p + r - 1:  # completions are contiguous
            return None
        layout.prompt.append(p)
        layout.chosen.append(c)
        layout.rejected.append(r)
    return layout


def _packed_inputs(input_ids: Any, layout: PairLayout, pad_id: int, attn: str, dtype: Any) -> tuple[Any, Any, Any]:
    """Packed ids, position ids and a 4D attention mask for the pairs of `layout`."""
    import torch

    half = len(layout.prompt)
    lengths = [p + c + r for p, c, r in zip(layout.prompt, layout.chosen, layout.rejected)]
    width = max(lengths)
    ids = torch.full((half, width), pad_id, dtype=input_ids.dtype, device=input_ids.device)
    pos = torch.zeros((half, width), dtype=torch.long, device=input_ids.device)
    allowed = torch.zeros((half, 1, width, width), dtype=torch.bool, device=input_ids.device)
    for i, (p, c, r) in enumerate(zip(layout.prompt, layout.chosen, layout.rejected)):
        ids[i, : p + c] = input_ids[i, : p + c]
        ids[i, p + c: p + c + r] = input_ids[half + i, p: p + r]
        pos[i, : p + c] = torch.arange(p + c)
        pos[i, p + c: p + c + r] = torch.arange(p, p + r)
        causal = torch.ones((width, width), dtype=torch.bool, device=input_ids.device).tril()
        block = causal.clone()
        block[p + c: p + c + r, p: p + c] = False  # the rejected tokens never see the chosen ones
        block[p + c + r:, :] = False
        idx = torch.arange(p + c + r, width, device=input_ids.device)
        block[idx, idx] = True  # padding attends to itself only (an all-masked row would give NaN)
        allowed[i, 0] = block
    if attn == "eager":  # an additive float mask
        mask = torch.zeros(allowed.shape, dtype=dtype, device=input_ids.device)
        mask = mask.masked_fill(~allowed, torch.finfo(dtype).min)
        return ids, pos, mask
    return ids, pos, allowed


def _scored(model: Any, hidden: Any, src_rows: list[int], src_pos: list[int], dst_rows: Any, dst_pos: Any,
            labels: Any, shape: tuple[int, int], outputs: tuple[str, ...]) -> Any:
    """TRL's fused-head output for the scored positions only: each label's log-probability (and the
    requested per-token fields) from the hidden state that predicts it, zero elsewhere."""
    import torch
    import torch.nn.functional as F
    from trl.trainer.utils import FusedCausalLMOutput

    lm_head = model.get_output_embeddings()
    src = hidden[torch.tensor(src_rows, device=hidden.device), torch.tensor(src_pos, device=hidden.device)]
    targets = labels[dst_rows, dst_pos + 1]
    logits = F.linear(src.float(), lm_head.weight.float(),
                      lm_head.bias.float() if getattr(lm_head, "bias", None) is not None else None)
    logp_all = F.log_softmax(logits, dim=-1)
    picked = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)

    def place(values: Any, grad: bool = True) -> Any:
        out = values.new_zeros(shape) if grad else values.detach().new_zeros(shape)
        return out.index_put((dst_rows, dst_pos), values if grad else values.detach())

    fields: dict[str, Any] = {"log_probs": place(picked)}
    if "entropy" in outputs:
        fields["entropy"] = place(-(logp_all.exp() * logp_all).sum(-1))
    if "mean_logits" in outputs:
        fields["mean_logits"] = place(logits.mean(-1), grad=False)
    if "is_top1" in outputs:  # a bool tensor in TRL's output
        top1 = torch.zeros(shape, dtype=torch.bool, device=picked.device)
        top1[dst_rows, dst_pos] = logits.argmax(-1) == targets
        fields["is_top1"] = top1
    if "log_sum_sq_probs" in outputs:
        fields["log_sum_sq_probs"] = place(torch.logsumexp(2 * logp_all, dim=-1), grad=False)
    label_mask = torch.zeros(shape, dtype=torch.bool, device=picked.device)
    label_mask[dst_rows, dst_pos] = True
    loss = -fields["log_probs"].sum() / label_mask.sum().clamp(min=1)
    return FusedCausalLMOutput(loss=loss, label_mask=label_mask, **fields)


def _shared_forward(model: Any, input_ids: Any, labels: Any, layout: PairLayout, outputs: tuple[str, ...]) -> Any:
    import torch

    half = len(layout.prompt)
    attn = getattr(model.config, "_attn_implementation", "sdpa")
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    ids, pos, mask = _packed_inputs(input_ids, layout, pad_id, attn, model.get_output_embeddings().weight.dtype)
    hidden = model.base_model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
    # Where each scored token is predicted from, in the packed rows, and where TRL expects its score.
    src_row, src_pos, dst_row, dst_pos = [], [], [], []
    for i, (p, c, r) in enumerate(zip(layout.prompt, layout.chosen, layout.rejected)):
        for k in range(c):  # chosen token p+k, predicted from p+k-1
            src_row.append(i), src_pos.append(p + k - 1), dst_row.append(i), dst_pos.append(p + k - 1)
        for k in range(r):  # rejected token p+k: from the prompt's end, then from its own packed tokens
            src_row.append(i), src_pos.append(p - 1 if k == 0 else p + c + k - 1)
            dst_row.append(half + i), dst_pos.append(p + k - 1)
    shape = (input_ids.shape[0], input_ids.shape[1] - 1)
    return _scored(model, hidden, src_row, src_pos, torch.tensor(dst_row), torch.tensor(dst_pos), labels, shape, outputs)


def last_turn_mask(labels: Any) -> Any:
    """Per row, the scored positions (shifted as TRL scores them) of the last contiguous labelled span:
    in a whole-chain SFT row, the final assistant turn."""
    import torch

    scored = labels[:, 1:] != -100
    mask = torch.zeros_like(scored)
    for row in range(scored.shape[0]):
        idx = torch.nonzero(scored[row]).flatten()
        if len(idx) == 0:
            continue
        breaks = torch.nonzero(idx[1:] - idx[:-1] > 1).flatten()
        start = int(idx[int(breaks[-1]) + 1]) if len(breaks) else int(idx[0])
        mask[row, start:int(idx[-1]) + 1] = True
    return mask


def _compact_forward(model: Any, labels: Any, outputs: tuple[str, ...], kwargs: dict[str, Any],
                     last_turn_weight: float = 1.0) -> Any:
    """The backbone as TRL runs it, the LM head only where a label is scored."""
    import torch

    backbone = {k: v for k, v in kwargs.items() if k not in ("num_items_in_batch", "shift_labels")}
    backbone["use_cache"] = False
    hidden = model.base_model(**backbone).last_hidden_state
    scored = torch.nonzero(labels[:, 1:] != -100)
    rows, cols = scored[:, 0], scored[:, 1]
    shape = (labels.shape[0], labels.shape[1] - 1)
    out = _scored(model, hidden, rows.tolist(), cols.tolist(), rows, cols, labels, shape, outputs)
    if last_turn_weight != 1.0:
        # TRL's SFT loss is -sum(log_probs) / tokens: scaling a token's score weights its loss (and only
        # the loss: accuracy and entropy are read from their own fields).
        weights = 1.0 + (last_turn_weight - 1.0) * last_turn_mask(labels).to(out.log_probs.dtype)
        out.log_probs = out.log_probs * weights
        out.loss = -out.log_probs.sum() / out.label_mask.sum().clamp(min=1)
    return out


def _install(model: Any, outputs: tuple[str, ...], *, share_prefixes: bool, last_turn_weight: float = 1.0) -> None:
    fused = model.forward
    if getattr(fused, "_fcagent_forward", False):
        fused = fused._fcagent_fused  # installed before (a second trainer on the same model): re-wrap TRL's

    def forward(self: Any, *args: Any, fused_lm_head: bool = False, labels: Any = None, **kwargs: Any) -> Any:
        attn = getattr(self.config, "_attn_implementation", "sdpa")
        usable = fused_lm_head and labels is not None and attn in ("sdpa", "eager") and not args \
            and kwargs.get("inputs_embeds") is None and kwargs.get("shift_labels") is None \
            and "input_ids" in kwargs and not kwargs.get("output_router_logits")
        if usable:
            layout = pair_layout(kwargs["input_ids"], labels) if share_prefixes else None
            if layout is not None:
                return _shared_forward(self, kwargs["input_ids"], labels, layout, outputs)
            return _compact_forward(self, labels, outputs, kwargs, last_turn_weight)
        if fused_lm_head and labels is not None and last_turn_weight != 1.0:
            raise RuntimeError("last_turn_weight needs the compact head's forward (an sdpa or eager attention, "
                               "input ids and labels); this batch would train unweighted")
        return fused(*args, fused_lm_head=fused_lm_head, labels=labels, **kwargs)

    forward._fcagent_forward = True  # type: ignore[attr-defined]
    forward._fcagent_fused = fused  # type: ignore[attr-defined]
    model.forward = types.MethodType(forward, model)


def install_prefix_sharing(model: Any, outputs: tuple[str, ...] = ("log_probs", "entropy", "mean_logits", "is_top1")) -> None:
    """Wrap the fused forward TRL installed on `model` (the base model under PEFT): a batch of DPO pairs
    runs packed, any other labelled batch with the compact head, anything else through TRL's own."""
    _install(model, outputs, share_prefixes=True)


def install_compact_head(model: Any, outputs: tuple[str, ...] = ("log_probs", "entropy", "is_top1"), *,
                         last_turn_weight: float = 1.0) -> None:
    """Wrap the fused forward TRL installed on `model`: the LM head only at the labelled positions; each
    row's last labelled span (a chain's final turn) weighted `last_turn_weight` in the loss."""
    _install(model, outputs, share_prefixes=False, last_turn_weight=last_turn_weight)


def _dpo_trainer_class() -> type:
    from trl import DPOTrainer

    class PrefixSharingDPOTrainer(DPOTrainer):
        """`DPOTrainer` whose policy and reference forwards share each pair's prompt (module docs)."""

        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            outputs = ("log_probs", "entropy", "mean_logits", "is_top1") + (("log_sum_sq_probs",) if self.use_weighting else ())
            base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            install_prefix_sharing(base, outputs)
            if self.ref_model is not None:
                install_prefix_sharing(self.ref_model, outputs)

    return PrefixSharingDPOTrainer


def _sft_trainer_class() -> type:
    from trl import SFTTrainer

    class CompactHeadSFTTrainer(SFTTrainer):
        """`SFTTrainer` whose LM head runs only at the trained positions (module docs)."""

        def __init__(self, *args: Any, last_turn_weight: float = 1.0, **kwargs: Any):
            super().__init__(*args, **kwargs)
            base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            install_compact_head(base, last_turn_weight=last_turn_weight)

    return CompactHeadSFTTrainer


_BUILDERS = {"PrefixSharingDPOTrainer": _dpo_trainer_class, "CompactHeadSFTTrainer": _sft_trainer_class}


def __getattr__(name: str) -> Any:  # the trainer classes are built on first use: importing TRL costs seconds
    if name in _BUILDERS:
        cls = _BUILDERS[name]()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
