"""Shared conversations and templates of the tool-calling tests (written here, no downloads)."""

from __future__ import annotations

from typing import Any

from tunesmith.data.templates import IGNORE, Encoded

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}}
CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'}}
CONVERSATION: dict[str, Any] = {"tools": [WEATHER], "messages": [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny 21C"},
    {"role": "assistant", "content": "It is sunny."}]}

# SmolLM2-135M-Instruct's own template (no tool support; a default system message)
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")

# A Qwen2.5-style native tool template: tools in the system turn, <tool_call> blocks,
# consecutive tool results grouped in one user turn
QWEN = (
    "{%- if tools %}<|im_start|>system\n{{ messages[0].content if messages[0].role == 'system' "
    "else 'You are Qwen.' }}\n\n# Tools\n<tools>{% for t in tools %}\n{{ t | tojson }}"
    "{% endfor %}\n</tools><|im_end|>\n{% endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' and tools %}"
    "{%- elif message.role == 'assistant' %}<|im_start|>assistant\n{{ message.content }}"
    "{%- for tc in message.tool_calls or [] %}{% if message.content or not loop.first %}\n"
    "{% endif %}<tool_call>\n{\"name\": \"{{ tc.function.name }}\", \"arguments\": "
    "{{ tc.function.arguments }}}\n</tool_call>{% endfor %}<|im_end|>\n"
    "{%- elif message.role == 'tool' %}{% if messages[loop.index0 - 1].role != 'tool' %}"
    "<|im_start|>user{% endif %}\n<tool_response>\n{{ message.content }}\n</tool_response>"
    "{% if loop.last or messages[loop.index0 + 1].role != 'tool' %}<|im_end|>\n{% endif %}"
    "{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endif %}"
    "{%- endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# A template that says it knows tools but drops tool_calls (the bug peers ship)
DROPPING = (
    "{%- for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}"
    "{% if message.tool_calls %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def trained_spans(tok: Any, enc: Encoded) -> list[str]:
    """Decoded text of each maximal run of trained positions."""
    spans: list[list[int]] = []
    prev = False
    for tid, lab in zip(enc.input_ids, enc.labels):
        on = lab != IGNORE
        if on and not prev:
            spans.append([])
        if on:
            spans[-1].append(tid)
        prev = on
    return [tok.decode(s) for s in spans]
