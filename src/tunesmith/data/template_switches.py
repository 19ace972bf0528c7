"""Template switches: ``model.chat_template_kwargs`` such as ``enable_thinking: false``.

Templates like Qwen3's read variables beyond ``messages`` and ``add_generation_prompt``
(``enable_thinking`` adds an empty ``<think></think>`` block so the model answers without
reasoning). Peers pass such switches per call, and a call that forgets them (evaluation, the
server, the merged model, the GGUF file) renders another prompt than training did: the
merged model that "thinks again". tunesmith instead writes the switches into the template
itself as defaults, at the top, between two markers::

    {#- tunesmith: model.chat_template_kwargs #}{%- if enable_thinking is not defined %}
    {%- set enable_thinking = false %}{%- endif %}{#- /tunesmith #}

The tokenizer saved with every checkpoint carries that template, so evaluation, serving,
merging and export (the GGUF's embedded template, the Ollama Modelfile measured from it)
render exactly what training rendered, with nothing to pass. A value given explicitly at
render time (a server request's ``chat_template_kwargs``) still wins: the default is set
only when the variable is not defined.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from tunesmith.errors import ConfigError

START = "{#- tunesmith: model.chat_template_kwargs #}"
END = "{#- /tunesmith #}"
_BLOCK = re.compile(re.escape(START) + r"(.*?)" + re.escape(END), re.DOTALL)
_DEFAULT = re.compile(r"\{%- if (\w+) is not defined %\}\{%- set \1 = (.*?) %\}\{%- endif %\}")
# what every chat template may read; the rest are the template's own switches
STANDARD = frozenset({"messages", "tools", "documents", "add_generation_prompt", "bos_token",
                      "eos_token", "pad_token", "unk_token", "raise_exception", "strftime_now",
                      "range", "namespace", "custom_tools", "tools_in_user_message",
                      "date_string", "continue_final_message"})
Value = bool | int | float | str


@lru_cache(maxsize=64)
def _variables(template: str) -> frozenset[str]:
    # deferred: jinja2 is needed only when a switch is checked
    from jinja2 import Environment, meta

    env = Environment(extensions=["jinja2.ext.loopcontrols"])  # as transformers renders
    return frozenset(meta.find_undeclared_variables(env.parse(template)))


def template_switches(template: str) -> list[str]:
    """The variables a template reads besides the standard ones (its switches), sorted."""
    return sorted(_variables(strip(template)) - STANDARD)


def strip(template: str) -> str:
    """The template without tunesmith's defaults block."""
    return _BLOCK.sub("", template, count=1)


def baked(template: Any) -> dict[str, Value]:
    """The switches a template carries as defaults (empty when none were written)."""
    m = _BLOCK.match(template) if isinstance(template, str) else None
    return {k: json.loads(v) for k, v in _DEFAULT.findall(m.group(1))} if m else {}


def unread(template: str, kwargs: dict[str, Any]) -> list[str]:
    """The keys of ``kwargs`` that ``template`` never reads (typos, another model's switch)."""
    reads = _variables(strip(template))
    return [k for k in kwargs if k not in reads]


def bake(template: str, kwargs: dict[str, Value], where: str = "model.chat_template_kwargs",
         strict: bool = True) -> str:
    """``template`` with ``kwargs`` written in as defaults (replacing earlier ones).

    ``strict``: a key the template never reads is a :class:`ConfigError` naming it and the
    switches the template does read; otherwise such keys are left out (a mixture task's own
    template may not know the model's switches).
    """
    body = strip(template)
    missing = unread(body, kwargs)
    if missing and strict:
        _refuse(body, missing[0], kwargs[missing[0]], where)
    keep = {k: v for k, v in kwargs.items() if k not in missing}
    if not keep:
        return body
    block = "".join(f"{{%- if {k} is not defined %}}{{%- set {k} = {json.dumps(v)} %}}"
                    "{%- endif %}" for k, v in keep.items())
    return START + block + END + body


def apply(tok: Any, kwargs: dict[str, Value]) -> None:
    """Write ``kwargs`` into ``tok``'s chat template (each template of a named set)."""
    template = getattr(tok, "chat_template", None)
    if not template:
        raise ConfigError("model.chat_template_kwargs is set but the model has no chat template",
                          where="model.chat_template_kwargs", got=kwargs,
                          fix="set model.chat_template, or remove the switches")
    if isinstance(template, dict):  # named templates (e.g. "default", "tool_use")
        for key, value in kwargs.items():
            if all(unread(t, {key: value}) for t in template.values()):
                _refuse(strip(next(iter(template.values()))), key, value,
                        "model.chat_template_kwargs")
        tok.chat_template = {name: bake(t, kwargs, strict=False) for name, t in template.items()}
    else:
        tok.chat_template = bake(template, kwargs)


def _refuse(body: str, key: str, value: Any, where: str) -> None:
    known = template_switches(body)
    raise ConfigError("the chat template never reads this switch, so setting it would change "
                      "nothing", where=f"{where}.{key}", got=value,
                      fix=f"use a switch this template reads ({', '.join(known)})" if known
                      else "remove it: this template has no switches besides messages, tools "
                      "and add_generation_prompt")
