"""The built-in tool template, and whether a model's own template renders tools.

Many small models (SmolLM2 among them) ship a ChatML template that ignores ``tools`` and
``tool_calls``: a tool-calling conversation would train as if the calls were not there. For
such a model tunesmith registers **the built-in tool template** (Hermes-style, as Qwen2.5 and
NousResearch Hermes render tools) in the tokenizer, so it is saved with the model, and the
server, the merged model, the GGUF file and the Ollama Modelfile all render what training did:

- the tools are listed as JSON, one per line, inside ``<tools>...</tools>`` in the system turn
  (after the conversation's own system message, or the model's default one);
- an assistant call is ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`` after
  the turn's text (several calls: several blocks), and the turn ends with EOS as usual;
- a tool result is a user turn holding ``<tool_response>\\n...\\n</tool_response>``;
- reasoning, when kept, is a ``<think>`` block at the start of the assistant turn
  (:func:`tunesmith.data.tools.template_messages` writes it there).

A model whose template mentions ``tool_calls`` keeps its own template; the contract checks
then verify that what it renders parses back to the same calls.
"""

from __future__ import annotations

from typing import Any

from tunesmith.data.tools import template_messages

TOOL_SYSTEM = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
TOOL_SYSTEM_END = (
    "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


def hermes_template(default_system: str | None = None) -> str:
    """The built-in tool template (ChatML turns, Hermes tool blocks); ``default_system`` is
    the system message the model's own template adds when a conversation has none."""
    default = (default_system or "").replace("\\", "\\\\").replace("'", "\\'").replace(
        "\n", "\\n")
    return (
        "{%- set sys = messages[0]['content'] if messages and messages[0]['role'] == 'system'"
        f" else '{default}' %}}"
        "{%- if tools %}{{ '<|im_start|>system\\n' }}{% if sys %}{{ sys + '\\n\\n' }}{% endif %}"
        "{{ '" + TOOL_SYSTEM.replace("\n", "\\n") + "' }}"
        "{%- for tool in tools %}{{ '\\n' }}{{ tool | tojson }}{%- endfor %}"
        "{{ '" + TOOL_SYSTEM_END.replace("\n", "\\n") + "' + eos_token + '\\n' }}"
        "{%- elif sys %}{{ '<|im_start|>system\\n' + sys + eos_token + '\\n' }}{%- endif %}"
        "{%- for message in messages %}"
        "{%- if message['role'] == 'system' and loop.first %}"
        "{%- elif message['role'] == 'tool' %}"
        "{{ '<|im_start|>user\\n<tool_response>\\n' + message['content'] + "
        "'\\n</tool_response>' + eos_token + '\\n' }}"
        "{%- elif message['role'] == 'assistant' %}"
        "{{ '<|im_start|>assistant\\n' + (message['content'] or '') }}"
        "{%- for tc in message.get('tool_calls') or [] %}"
        "{%- if (message['content'] and not message['content'].endswith('\\n')) or not loop.first"
        " %}{{ '\\n' }}{% endif %}"
        "{%- set fn = tc['function'] if tc['function'] is defined else tc %}"
        "{{ '<tool_call>\\n{\"name\": \"' + fn['name'] + '\", \"arguments\": ' }}"
        "{%- if fn['arguments'] is string %}{{ fn['arguments'] }}"
        "{%- else %}{{ fn['arguments'] | tojson }}{% endif %}{{ '}\\n</tool_call>' }}"
        "{%- endfor %}{{ eos_token + '\\n' }}"
        "{%- else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
        "eos_token + '\\n' }}{%- endif %}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}")


def supports_tools(template: str | None) -> bool:
    """Whether a template renders tool calls at all (it reads ``tool_calls``)."""
    return bool(template) and "tool_calls" in template


def renders_reasoning(template: str | None) -> bool:
    """Whether a template reads ``reasoning_content`` (Qwen3, DeepSeek-R1 style)."""
    return bool(template) and "reasoning_content" in template


def default_system(tok: Any) -> str | None:
    """The system message a ChatML template adds to a conversation that has none
    (SmolLM2's "You are a helpful AI assistant named SmolLM..."), kept by the tool template."""
    template = getattr(tok, "chat_template", None)
    if not template or "<|im_start|>" not in template:
        return None
    try:
        text = tok.apply_chat_template([{"role": "user", "content": "\x01"}], tokenize=False)
    except Exception:  # a template that refuses a lone user turn has no default to keep
        return None
    head = "<|im_start|>system\n"
    if not text.startswith(head) or "<|im_end|>" not in text:
        return None
    return text[len(head):text.index("<|im_end|>")]


def tool_template_for(tok: Any) -> str:
    """The built-in tool template carrying ``tok``'s default system message, if any."""
    return hermes_template(default_system(tok))


def render_chat(tok: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                add_generation_prompt: bool = True, reasoning: str = "keep",
                template_kwargs: dict[str, Any] | None = None) -> str:
    """A conversation as the model was trained on it: the one renderer of serving and eval.

    ``messages`` are in the data shape (``reasoning`` beside ``content``); with tools on a
    template that ignores ``tool_calls``, the built-in tool template renders, exactly as
    training would have switched to it.
    """
    template = getattr(tok, "chat_template", None)
    has_calls = any(m.get("tool_calls") for m in messages)
    chosen = tool_template_for(tok) if (tools or has_calls) and not supports_tools(
        template) else template
    msgs = template_messages(messages, reasoning, renders_reasoning(chosen))
    return tok.apply_chat_template(msgs, tools=tools or None, chat_template=chosen,
                                   tokenize=False, add_generation_prompt=add_generation_prompt,
                                   **(template_kwargs or {}))
