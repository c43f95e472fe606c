"""Training chat templates: what the student sees at inference, with the turns SFT learns marked.

TRL trains only assistant turns (`assistant_only_loss`) when the chat template wraps them in
`{% generation %}` markers, and TRL ships none for SmolLM2. fcagent's template for a model renders
exactly the text its own template renders (tested token for token against `LocalChatModel.render`),
and marks every assistant turn unless the message says `"train": false` (a row per step trains only
its last turn; a whole chain trains every one). Tools are never rendered by the template: fcagent
puts the functions into the system prompt itself, so a template that rendered `tools` would show them
twice.
"""

from __future__ import annotations

from typing import Any

__all__ = ["training_template", "TEMPLATES"]

# SmolLM2-Instruct's template (ChatML with a default system prompt), with the assistant turns marked.
_SMOLLM2 = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' and message.get('train', true) is not false %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_SMOLLM2_INFERENCE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>'"
    " + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TEMPLATES: dict[str, str] = {_SMOLLM2_INFERENCE: _SMOLLM2}


def training_template(tokenizer: Any) -> str | None:
    """The training template for this tokenizer's chat template: its own when it already marks the
    assistant turns, fcagent's for a template it knows, else None (then SFT trains one row per step,
    prompt and completion, which needs no markers)."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        return None
    if "{% generation %}" in template or "{%- generation %}" in template:
        return template
    return TEMPLATES.get(template)
