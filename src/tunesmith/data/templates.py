"""Render examples with the chat template, tokenize them and build label masks.

Labels are built from character spans of the rendered text, so the mask is right for any
template that renders earlier turns the same way when later turns are appended (checked).
A trained assistant span runs from the end of the generation prompt through the EOS that
closes the turn; everything else is masked (-100) unless ``train_on_inputs``.

Tool calls are part of the assistant turn and train with it; tool results are masked even
with ``train_on_inputs``. Think blocks follow ``data.reasoning`` (keep: trained, mask: in the
context but masked, drop: removed before rendering); an empty think block is always masked.
A conversation with tools, on a tokenizer whose template ignores ``tool_calls``, is rendered
with the built-in tool template (:mod:`tunesmith.data.tool_template`), which is then saved
with the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tunesmith.data.formats import Example
from tunesmith.data.tool_template import renders_reasoning, supports_tools, tool_template_for
from tunesmith.data.tools import THINK_RE, parse_output, same_calls, template_messages
from tunesmith.errors import ConfigError, DataError

IGNORE = -100

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")
ALPACA = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + "
    "'\n\n' }}{% elif message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + "
    "'\n\n' }}{% elif message['role'] == 'assistant' %}{{ '### Response:\n' + message['content'] "
    "+ eos_token + '\n\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "{{ '### Response:\n' }}{% endif %}")
BUILTIN_TEMPLATES = {"chatml": CHATML, "alpaca": ALPACA}


def resolve_chat_template(value: str) -> str:
    """A built-in name, a path to a Jinja file, or a Jinja string."""
    if value in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[value]
    if "{" not in value:
        path = Path(value)
        if not path.exists():
            raise ConfigError("chat template not found", where="model.chat_template", got=value,
                              fix=f"use {', '.join(BUILTIN_TEMPLATES)}, a .jinja file path or "
                              "a Jinja string")
        return path.read_text(encoding="utf-8")
    return value


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    where: str
    truncated: bool = False
    # (first, last) token index of every trained assistant turn, for the contract checks
    turns: list[tuple[int, int]] = field(default_factory=list)
    # the tool calls of each trained turn (aligned with ``turns``), for the round-trip check
    calls: list[list[dict[str, Any]]] = field(default_factory=list)
    # (first, last) token index of every think block, for the all-or-nothing check
    thinks: list[tuple[int, int]] = field(default_factory=list)
    results: list[tuple[int, int]] = field(default_factory=list)  # tool-result token ranges


@dataclass
class Encoder:
    """Turns Examples into token ids + labels for one tokenizer and template."""

    tokenizer: Any
    max_length: int
    train_on_inputs: bool = False
    truncation: str = "truncate"
    reasoning: str = "keep"  # data.reasoning: keep | mask | drop

    def __post_init__(self) -> None:
        tok = self.tokenizer
        self.eos_ids = eos_token_ids(tok)
        self.eos_texts = [t for t in {tok.eos_token, *tok.convert_ids_to_tokens(
            sorted(self.eos_ids))} if t]
        probe = tok("a", add_special_tokens=True).input_ids
        self.adds_bos = tok.bos_token_id is not None and bool(probe) and \
            probe[0] == tok.bos_token_id
        self.has_template = bool(getattr(tok, "chat_template", None))

    def encode(self, ex: Example) -> Encoded:
        """Full-length encoding (truncation is applied by :meth:`fit`)."""
        if ex.kind == "chat":
            if ex.tools or any(m.get("tool_calls") for m in ex.messages):
                self.use_tool_template()
            if not self.has_template:
                self.use_fallback_template()
            return self._encode_chat(ex)
        if ex.kind == "completion":
            return self._encode_pieces(ex.where, ex.prompt, ex.completion)
        return self._encode_pieces(ex.where, "", ex.text)

    def use_fallback_template(self) -> None:
        """Chat data for a tokenizer without a chat template: use the built-in alpaca one."""
        if not self.has_template:
            self.tokenizer.chat_template = ALPACA
            self.has_template = True

    def use_tool_template(self) -> bool:
        """Tool data for a template that ignores ``tool_calls``: use the built-in tool
        template (it keeps the model's default system message). True when it switched."""
        if supports_tools(getattr(self.tokenizer, "chat_template", None)):
            return False
        self.tokenizer.chat_template = tool_template_for(self.tokenizer)
        self.has_template = True
        return True

    def fit(self, enc: Encoded) -> Encoded | None:
        """Apply ``max_length``: cut or drop; None when nothing trainable is left."""
        if len(enc.input_ids) > self.max_length:
            if self.truncation == "drop":
                return None
            n = self.max_length
            kept = [k for k, (a, _) in enumerate(enc.turns) if a < n]
            enc = replace(enc, input_ids=enc.input_ids[:n], labels=enc.labels[:n],
                          truncated=True,
                          turns=[(enc.turns[k][0], min(enc.turns[k][1], n - 1)) for k in kept],
                          calls=[enc.calls[k] for k in kept if k < len(enc.calls)],
                          thinks=[(a, min(b, n - 1)) for a, b in enc.thinks if a < n],
                          results=[(a, min(b, n - 1)) for a, b in enc.results if a < n])
        if all(lab == IGNORE for lab in enc.labels):
            return None
        return enc

    def _encode_pieces(self, where: str, prompt: str, target: str) -> Encoded:
        tok = self.tokenizer
        ids: list[int] = []
        if self.adds_bos:
            ids.append(tok.bos_token_id)
        p_ids = tok(prompt, add_special_tokens=False).input_ids if prompt else []
        t_ids = tok(target, add_special_tokens=False).input_ids
        eos = tok.eos_token_id
        ids += p_ids
        start = len(ids)
        ids += t_ids + ([eos] if eos is not None else [])
        labels = list(ids) if self.train_on_inputs else [IGNORE] * start + ids[start:]
        if self.adds_bos and not self.train_on_inputs:
            labels[0] = IGNORE
        return Encoded(ids, labels, where, turns=[(start, len(ids) - 1)])

    def _encode_chat(self, ex: Example) -> Encoded:
        tok = self.tokenizer
        msgs = template_messages(ex.messages, self.reasoning, renders_reasoning(
            tok.chat_template))
        self._tools = ex.tools or None
        full = self._render(msgs, False, ex.where)
        spans: list[tuple[int, int, bool]] = []  # (start, end, trained) in characters
        hidden: list[tuple[int, int]] = []  # tool results and masked think blocks
        result_chars: list[tuple[int, int]] = []
        think_chars: list[tuple[int, int]] = []
        calls = []
        for i, m in enumerate(ex.messages):
            if m["role"] == "tool":
                before = self._render(msgs[:i], False, ex.where)
                upto = self._render(msgs[: i + 1], False, ex.where)
                if full.startswith(upto) and upto.startswith(before):
                    hidden.append((len(before), len(upto)))
                    result_chars.append((len(before), len(upto)))
            if m["role"] != "assistant":
                continue
            prefix = self._render(msgs[:i], True, ex.where) if i else ""
            upto = self._render(msgs[: i + 1], False, ex.where)
            if not (full.startswith(upto) and upto.startswith(prefix)):
                raise DataError(
                    "the chat template renders earlier turns differently once later turns are "
                    "added, so assistant turns cannot be located for the label mask",
                    where=ex.where, fix="set model.chat_template to a template without that "
                    "behaviour (e.g. chatml), or train on single-turn data")
            end = len(upto)
            turn = upto[len(prefix):]
            cut = max((turn.rfind(t) + len(t) for t in self.eos_texts if t in turn), default=-1)
            if cut > 0:
                end = len(prefix) + cut
            spans.append((len(prefix), end, m.get("weight", 1) == 1))
            if m.get("weight", 1) == 1:
                calls.append(m.get("tool_calls", []))
            for t in THINK_RE.finditer(full, len(prefix), end):
                think_chars.append((t.start(), t.end()))
                if self.reasoning == "mask" or not t.group(1).strip():
                    hidden.append((t.start(), t.end()))
        enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        offsets = enc["offset_mapping"]
        labels = [IGNORE] * len(ids)
        turns = []
        for s, e, trained in spans:
            idx = [j for j, (a, b) in enumerate(offsets) if b > a and s <= a < e]
            if trained and idx:
                turns.append((idx[0], idx[-1]))
            for j in idx:
                if trained:
                    labels[j] = ids[j]
        if self.train_on_inputs:
            untrained = {j for s, e, t in spans if not t
                         for j, (a, b) in enumerate(offsets) if s <= a < e}
            labels = [IGNORE if j in untrained else t for j, t in enumerate(ids)]
        for s, e in hidden:
            for j, (a, b) in enumerate(offsets):
                if s <= a < e:
                    labels[j] = IGNORE
        thinks, results = [], []
        for chars, out in ((think_chars, thinks), (result_chars, results)):
            for s, e in chars:
                idx = [j for j, (a, b) in enumerate(offsets) if b > a and s <= a < e]
                if idx:
                    out.append((idx[0], idx[-1]))
        return Encoded(ids, labels, ex.where, turns=turns, calls=calls, thinks=thinks,
                       results=results)

    def _render(self, msgs: list[dict[str, Any]], gen: bool, where: str) -> str:
        try:
            return self.tokenizer.apply_chat_template(msgs, tools=getattr(self, "_tools", None),
                                                      tokenize=False,
                                                      add_generation_prompt=gen)
        except Exception as exc:  # jinja raises TemplateError and friends
            raise DataError(f"the chat template failed on this conversation ({exc})",
                            where=where, fix="check the roles and order of the messages, or "
                            "set model.chat_template") from None


def eos_token_ids(tok: Any) -> set[int]:
    ids = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    return ids


@dataclass
class CheckReport:
    """Outcome of the template and label-mask contract checks over a dataset."""

    examples: int = 0
    trained_tokens: int = 0
    masked_tokens: int = 0
    failures: dict[str, list[str]] = field(default_factory=dict)

    def fail(self, code: str, where: str) -> None:
        self.failures.setdefault(code, []).append(where)


CHECK_TEXT = {
    "double_bos": ("sequences start with two BOS tokens (the template and the tokenizer both "
                   "add one)", "use a template without {{ bos_token }} or a tokenizer that does "
                   "not add BOS"),
    "missing_bos": ("sequences lack the BOS token this tokenizer expects at the start",
                    "add {{ bos_token }} at the start of model.chat_template"),
    "missing_eos": ("a trained assistant turn does not end with a trained EOS token, so the "
                    "model would never learn to stop", "use a chat template that closes every "
                    "assistant turn with the EOS token (e.g. model.chat_template: chatml)"),
    "prompt_trained": ("prompt tokens carry labels although data.train_on_inputs is false",
                       "report this as a bug; set data.train_on_inputs: true to train anyway"),
    "empty_turn": ("a trained assistant turn has no tokens besides EOS",
                   "remove empty assistant messages or give them weight 0"),
    "tool_call_roundtrip": ("a trained tool call does not parse back to the same call (the "
                            "template drops or rewrites tool_calls)", "use a template that "
                            "renders tool_calls as <tool_call> JSON, or remove model."
                            "chat_template so the built-in tool template is used"),
    "tool_result_trained": ("tool result tokens carry labels", "report this as a bug: tool "
                            "results are never trained"),
    "think_split": ("a think block is partly trained and partly masked", "report this as a "
                    "bug, or set data.reasoning: drop"),
    "empty_think_trained": ("an empty think block is trained", "remove the empty <think></think>"
                            " tags from the data, or set data.reasoning: drop"),
}


def check_encoded(encs: list[Encoded], encoder: Encoder) -> CheckReport:
    """Verify the template/label-mask contract on every (untruncated) example."""
    tok = encoder.tokenizer
    rep = CheckReport()
    bos = tok.bos_token_id
    for enc in encs:
        rep.examples += 1
        trained = sum(1 for t in enc.labels if t != IGNORE)
        rep.trained_tokens += trained
        rep.masked_tokens += len(enc.labels) - trained
        ids = enc.input_ids
        if bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
            rep.fail("double_bos", enc.where)
        if encoder.adds_bos and ids and ids[0] != bos:
            rep.fail("missing_bos", enc.where)
        for k, (a, b) in enumerate(enc.turns):
            if enc.truncated and k == len(enc.turns) - 1:
                continue
            if enc.labels[b] == IGNORE or ids[b] not in encoder.eos_ids:
                rep.fail("missing_eos", enc.where)
            elif b == a:
                rep.fail("empty_turn", enc.where)
        if not encoder.train_on_inputs and enc.turns:
            first = enc.turns[0][0]
            if any(t != IGNORE for t in enc.labels[:first]):
                rep.fail("prompt_trained", enc.where)
        check_tool_turns(enc, tok, rep)
    return rep


def check_tool_turns(enc: Encoded, tok: Any, rep: CheckReport) -> None:
    """The tool and reasoning parts of the contract, on what is actually trained."""
    for k, (a, b) in enumerate(enc.turns):
        trained = tok.decode([enc.input_ids[j] for j in range(a, b + 1)
                              if enc.labels[j] != IGNORE], skip_special_tokens=False)
        if THINK_RE.search(trained) and any(not t.group(1).strip()
                                            for t in THINK_RE.finditer(trained)):
            rep.fail("empty_think_trained", enc.where)
        expected = enc.calls[k] if k < len(enc.calls) else []
        if expected and not (enc.truncated and k == len(enc.turns) - 1) and not same_calls(
                parse_output(trained).calls, expected):
            rep.fail("tool_call_roundtrip", enc.where)
    if any(enc.labels[j] != IGNORE for a, b in enc.results
           for j in range(a, min(b + 1, len(enc.labels)))):
        rep.fail("tool_result_trained", enc.where)
    for a, b in enc.thinks:
        states = {enc.labels[j] != IGNORE for j in range(a, min(b + 1, len(enc.labels)))}
        if len(states) > 1:
            rep.fail("think_split", enc.where)


def raise_on_failures(rep: CheckReport, source: str) -> None:
    if not rep.failures:
        return
    problems = []
    for code, wheres in rep.failures.items():
        what, fix = CHECK_TEXT[code]
        problems.append(f"{what}: {len(wheres)} of {rep.examples} examples (first: {wheres[0]})"
                        f" — fix: {fix}")
    raise DataError("template / label-mask check failed before training", where=source,
                    fix="see `tunesmith data preview CONFIG` for the rendered samples\n" +
                    "\n".join(f"  - {p}" for p in problems))


def too_long_fix(max_key: str, max_length: int, truncation: str) -> str:
    """What to change when examples do not fit ``max_length``, given the settings in force
    (a fix never asks for a setting the config already has)."""
    if truncation == "truncate":
        return (f"raise {max_key} (now {max_length}): truncation keeps the start of each "
                f"example, so a prompt of {max_length} tokens or more leaves no answer to "
                "train on; or shorten the prompts (data.system_prompt counts too)")
    return (f"raise {max_key} (now {max_length}), or set data.truncation: truncate to cut long "
            "examples instead of dropping them")
