"""The Ollama ``Modelfile``: the tokenizer's chat template as a Go template, stop tokens.

A Jinja template cannot be translated to Go in general, so the template is *measured*:
it is rendered for probe conversations and split into the text around each role's content
(``ChatSpec``). The spec is written as a Go template and checked by rendering it back
(:func:`render_spec`, which follows the Go template's logic) against the Jinja template on
several conversations (with and without a system message, multi-turn). Only when they agree
does the Modelfile get a ``TEMPLATE``; otherwise it relies on the template embedded in the
GGUF and the export's checks say so.

A ChatML model (SmolLM2, any model trained on tool conversations with the built-in tool
template) gets the tool-aware template of :mod:`tunesmith.export.modelfile_tools` instead:
tools, tool calls, tool results and reasoning (per the run's ``data.reasoning``), checked
the same way on conversations with tools.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tunesmith.export.modelfile_tools import TOOL_PROBES, derive_tool_spec, go_tool_template

MARK = {"system": "\x01SYS\x01", "user": "\x01USR\x01", "assistant": "\x01AST\x01"}
PROBES: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "3+3?"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": "c\nd"}],
]


@dataclass
class ChatSpec:
    prefix: dict[str, str]      # text before a message's content, per role
    suffix: dict[str, str]      # text after it
    generation: str             # the assistant header that add_generation_prompt appends
    default_system: str | None  # system message the template inserts when none is given


def _render(tok: Any, messages: list[dict[str, str]], gen: bool) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


def derive_spec(tok: Any) -> ChatSpec | None:
    """Measure the chat template; None when it is not "prefix + content + suffix" per role."""
    # deferred: jinja2 is heavy and only this path needs it
    from jinja2 import TemplateError

    try:
        sys_only = _render(tok, [{"role": "system", "content": MARK["system"]}], False)
        with_user = _render(tok, [{"role": "system", "content": MARK["system"]},
                                  {"role": "user", "content": MARK["user"]}], False)
        with_asst = _render(tok, [{"role": "system", "content": MARK["system"]},
                                  {"role": "user", "content": MARK["user"]},
                                  {"role": "assistant", "content": MARK["assistant"]}], False)
        gen = _render(tok, [{"role": "system", "content": MARK["system"]},
                            {"role": "user", "content": MARK["user"]}], True)
        user_only = _render(tok, [{"role": "user", "content": MARK["user"]}], False)
    except (TemplateError, ValueError, TypeError, KeyError, IndexError):
        return None  # templates may refuse unusual message orders; then no TEMPLATE line
    if not (with_user.startswith(sys_only) and with_asst.startswith(with_user)
            and gen.startswith(with_user)):
        return None
    prefix, suffix = {}, {}
    for role, part in (("system", sys_only), ("user", with_user[len(sys_only):]),
                       ("assistant", with_asst[len(with_user):])):
        if part.count(MARK[role]) != 1:
            return None
        prefix[role], suffix[role] = part.split(MARK[role])
    bos = tok.bos_token or ""
    adds_bos = bool(tok("a")["input_ids"][:1] == [tok.bos_token_id])
    if adds_bos and bos and prefix["system"].startswith(bos):
        prefix["system"] = prefix["system"][len(bos):]  # the runtime adds BOS itself
    default = None
    user_part = prefix["user"] + MARK["user"] + suffix["user"]
    head = user_only[: len(user_only) - len(user_part)] if user_only.endswith(user_part) else None
    if head is None:
        return None
    if adds_bos and bos and head.startswith(bos):
        head = head[len(bos):]
    if head:
        if not (head.startswith(prefix["system"]) and head.endswith(suffix["system"])):
            return None
        default = head[len(prefix["system"]): len(head) - len(suffix["system"])]
    return ChatSpec(prefix, suffix, gen[len(with_user):], default)


def render_spec(spec: ChatSpec, messages: list[dict[str, str]], system: str | None = None
                ) -> str:
    """What Ollama renders from :func:`go_template` (``system``: the Modelfile's SYSTEM)."""
    msgs = list(messages)
    sys_text = system
    if msgs and msgs[0]["role"] == "system":
        sys_text = msgs.pop(0)["content"]
    out = spec.prefix["system"] + sys_text + spec.suffix["system"] if sys_text else ""
    for m in msgs:
        out += spec.prefix[m["role"]] + m["content"] + spec.suffix[m["role"]]
    return out + spec.generation


def _go_literal(text: str) -> str:
    # literal text in a Go template is verbatim except for the action delimiters
    return text.replace("{{", '{{ "{{" }}')


def go_template(spec: ChatSpec) -> str:
    """The Go template Ollama renders; no ``{{-`` trimming: every newline is literal."""
    p, s = spec.prefix, spec.suffix
    return ("{{ if .System }}" + _go_literal(p["system"]) + "{{ .System }}"
            + _go_literal(s["system"]) + "{{ end }}"
            + "{{ range .Messages }}"
            + '{{ if eq .Role "user" }}' + _go_literal(p["user"]) + "{{ .Content }}"
            + _go_literal(s["user"])
            + '{{ else if eq .Role "assistant" }}' + _go_literal(p["assistant"])
            + "{{ .Content }}" + _go_literal(s["assistant"]) + "{{ end }}"
            + "{{ end }}" + _go_literal(spec.generation))


def stop_tokens(tok: Any, pieces: str) -> list[str]:
    """EOS plus every special token in ``pieces``, the text that opens and closes turns
    (never the markup inside an assistant turn: ``<tool_call>`` or ``<think>`` must not stop
    generation, even where the tokenizer makes them special tokens)."""
    stops = [tok.eos_token] if tok.eos_token else []
    specials = [t for t in tok.all_special_tokens if t and t != tok.pad_token]
    stops += [t for t in specials if t in pieces and t not in stops]
    return stops


def _turn_pieces(spec: ChatSpec) -> str:
    return "".join(list(spec.prefix.values()) + list(spec.suffix.values()) + [spec.generation])


def run_reasoning(run_dir: Path | None) -> str:
    """The run's ``data.reasoning`` (keep | mask | drop; ``keep`` without a run config)."""
    f = run_dir / "config.yaml" if run_dir is not None else None
    if f is None or not f.exists():
        return "keep"
    cfg = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
    return str((cfg.get("data") or {}).get("reasoning") or "keep")


def verify_spec(tok: Any, spec: ChatSpec) -> bool:
    """The Go-side rendering equals the Jinja template on every probe conversation."""
    for msgs in PROBES:
        want = _render(tok, msgs, True)
        got = render_spec(spec, msgs, spec.default_system)
        bos = tok.bos_token or ""
        if bos and want.startswith(bos) and not got.startswith(bos):
            want = want[len(bos):]
        if want != got:
            return False
    return True


def modelfile_text(gguf_name: str, tok: Any, reasoning: str = "keep") -> tuple[str, str]:
    """The Modelfile and a one-line check result for the card.

    A ChatML model gets the tool-aware template (tools, calls, results, reasoning per
    ``reasoning``, the run's data.reasoning) when it renders every probe like the tokenizer;
    other models the per-role template measured from theirs (no tools); else no TEMPLATE.
    """
    has_template = bool(getattr(tok, "chat_template", None))
    tool_spec = derive_tool_spec(tok, reasoning, PROBES) if has_template else None
    spec = derive_spec(tok) if has_template and tool_spec is None else None
    template, system, pieces = None, None, ""
    if tool_spec is not None:
        template, system = go_tool_template(tool_spec), tool_spec.default_system
        pieces = f"<|im_start|>system\nuser\nassistant\n{tok.eos_token}"
        check = (f"Modelfile TEMPLATE renders exactly like the tokenizer's chat template on "
                 f"{len(PROBES) + len(TOOL_PROBES)} probe conversations, {len(TOOL_PROBES)} of "
                 f"them with tools, parallel calls, tool results and reasoning "
                 f"(data.reasoning: {reasoning}); the rendered calls parse back")
    elif spec is not None and verify_spec(tok, spec):
        template, system, pieces = go_template(spec), spec.default_system, _turn_pieces(spec)
        check = (f"Modelfile TEMPLATE renders exactly like the tokenizer's chat template on "
                 f"{len(PROBES)} probe conversations (without tools: not a ChatML template)")
    else:
        check = ("Modelfile has no TEMPLATE: the chat template is not a per-role prefix/suffix "
                 "format; Ollama uses the template embedded in the GGUF")
    lines = [f"FROM ./{gguf_name}"]
    if template is not None:
        lines.append(f'TEMPLATE """{template}"""')
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f'PARAMETER stop "{stop}"' for stop in stop_tokens(tok, pieces)]
    lines.append("PARAMETER temperature 0.7")
    return "\n".join(lines) + "\n", check


def write_modelfile(out_dir: Path, gguf_name: str, tok: Any, reasoning: str = "keep") -> str:
    text, check = modelfile_text(gguf_name, tok, reasoning)
    (out_dir / "Modelfile").write_text(text, encoding="utf-8")
    return check
