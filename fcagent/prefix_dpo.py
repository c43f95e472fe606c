"""Prefix-shared DPO: TRL's `DPOTrainer` with each pair's prompt run through the model once.

TRL scores a pair as two sequences, prompt+chosen and prompt+rejected, so the prompt (most of a row
here: ~600 tokens of system prompt and history before a ~30-token call) goes through the backbone
twice, forward and backward, for the policy and again for the reference (TRL issue 3549; Wang &
Hegde 2024, arXiv 2410.20305). `PrefixSharingDPOTrainer` keeps TRL's losses, metrics, logging,
reference handling and PEFT handling, and changes only the forward its loss calls: a pair becomes one
packed sequence `[prompt, chosen, rejected]` whose rejected tokens attend to the prompt but not to the
chosen ones (a block attention mask) and restart their positions after the prompt, so every token sees
exactly the context it sees in TRL's two sequences. The LM head then runs only at the completion
positions (TRL's fused head scores every position on a CPU).

The packed forward is used where it applies — a batch laid out as TRL's collator lays it out (the
chosen rows, then the rejected rows of the same prompts), an SDPA or eager attention — and TRL's own
forward runs otherwise. A test checks that log-probabilities and gradients match TRL's.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any

__all__ = ["PrefixSharingDPOTrainer", "install_prefix_sharing", "PairLayout"]


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


def _shared_forward(model: Any, input_ids: Any, labels: Any, layout: PairLayout, outputs: tuple[str, ...]) -> Any:
    import torch
    import torch.nn.functional as F
    from trl.trainer.utils import FusedCausalLMOutput

    half = len(layout.prompt)
    attn = getattr(model.config, "_attn_implementation", "sdpa")
    lm_head = model.get_output_embeddings()
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    ids, pos, mask = _packed_inputs(input_ids, layout, pad_id, attn, lm_head.weight.dtype)
    hidden = model.base_model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
    # Where each scored token is predicted from, in the packed rows, and where TRL expects its score.
    src_row, src_pos, dst_row, dst_pos = [], [], [], []
    for i, (p, c, r) in enumerate(zip(layout.prompt, layout.chosen, layout.rejected)):
        for k in range(c):  # chosen token p+k, predicted from p+k-1
            src_row.append(i), src_pos.append(p + k - 1), dst_row.append(i), dst_pos.append(p + k - 1)
        for k in range(r):  # rejected token p+k: from the prompt's end, then from its own packed tokens
            src_row.append(i), src_pos.append(p - 1 if k == 0 else p + c + k - 1)
            dst_row.append(half + i), dst_pos.append(p + k - 1)
    src = hidden[torch.tensor(src_row, device=hidden.device), torch.tensor(src_pos, device=hidden.device)]
    target_rows, target_cols = torch.tensor(dst_row), torch.tensor(dst_pos)
    targets = labels[target_rows, target_cols + 1]
    logits = F.linear(src.float(), lm_head.weight.float(),
                      lm_head.bias.float() if getattr(lm_head, "bias", None) is not None else None)
    logp_all = F.log_softmax(logits, dim=-1)
    picked = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    shape = (input_ids.shape[0], input_ids.shape[1] - 1)

    def place(values: Any, grad: bool = True) -> Any:
        out = values.new_zeros(shape) if grad else values.detach().new_zeros(shape)
        return out.index_put((target_rows, target_cols), values if grad else values.detach())

    def flags(values: Any) -> Any:  # is_top1 is a bool tensor in TRL's output
        out = torch.zeros(shape, dtype=torch.bool, device=values.device)
        out[target_rows, target_cols] = values
        return out

    fields: dict[str, Any] = {"log_probs": place(picked)}
    if "entropy" in outputs:
        fields["entropy"] = place(-(logp_all.exp() * logp_all).sum(-1))
    if "mean_logits" in outputs:
        fields["mean_logits"] = place(logits.mean(-1), grad=False)
    if "is_top1" in outputs:
        fields["is_top1"] = flags(logits.argmax(-1) == targets)
    if "log_sum_sq_probs" in outputs:
        fields["log_sum_sq_probs"] = place(torch.logsumexp(2 * logp_all, dim=-1), grad=False)
    label_mask = torch.zeros(shape, dtype=torch.bool, device=picked.device)
    label_mask[target_rows, target_cols] = True
    loss = -fields["log_probs"].sum() / label_mask.sum().clamp(min=1)
    return FusedCausalLMOutput(loss=loss, label_mask=label_mask, **fields)


def install_prefix_sharing(model: Any, outputs: tuple[str, ...] = ("log_probs", "entropy", "mean_logits", "is_top1")) -> None:
    """Wrap the fused forward TRL installed on `model` (the base model under PEFT): a call with
    `fused_lm_head=True` on a batch of pairs runs packed (see the module docs); anything else, TRL's own."""
    fused = model.forward
    if getattr(fused, "_fcagent_prefix_sharing", False):
        return

    def forward(self: Any, *args: Any, fused_lm_head: bool = False, labels: Any = None, **kwargs: Any) -> Any:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        attn = getattr(self.config, "_attn_implementation", "sdpa")
        if fused_lm_head and input_ids is not None and labels is not None and attn in ("sdpa", "eager") \
                and kwargs.get("inputs_embeds") is None:
            layout = pair_layout(input_ids, labels)
            if layout is not None:
                return _shared_forward(self, input_ids, labels, layout, outputs)
        return fused(*args, fused_lm_head=fused_lm_head, labels=labels, **kwargs)

    forward._fcagent_prefix_sharing = True  # type: ignore[attr-defined]
    model.forward = types.MethodType(forward, model)


def _trainer_class() -> type:
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


def __getattr__(name: str) -> Any:  # the trainer class is built on first use: importing TRL costs seconds
    if name == "PrefixSharingDPOTrainer":
        cls = _trainer_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
