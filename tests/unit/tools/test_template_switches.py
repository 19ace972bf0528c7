"""Template switches (``model.chat_template_kwargs``): baked into the saved template as
defaults, so training, the saved run, serving and the Modelfile render alike; a request may
still override them; a switch the template never reads is an error naming it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers.tiny import build_tiny_model_dir, build_tokenizer
from tests.unit.export.gotemplate import render
from tests.unit.tools.support import trained_spans
from tunesmith.data import template_switches as ts
from tunesmith.data.formats import to_example
from tunesmith.data.readers import Row
from tunesmith.data.templates import Encoder, check_encoded
from tunesmith.errors import ConfigError
from tunesmith.export.modelfile import modelfile_text
from tunesmith.models.load import load_tokenizer
from tunesmith.serve.api.errors import APIError
from tunesmith.serve.api.routes import _chat_prompt
from tunesmith.serve.api.schemas import ChatCompletionRequest

# Qwen3-style: enable_thinking=false writes an empty think block after the assistant header
# (in the generation prompt and in the answer turns of the history)
THINKING = (
    "{%- set off = enable_thinking is defined and enable_thinking is false %}"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' and off %}<think>\n\n</think>\n\n{% endif %}"
    "{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if off %}<think>\n\n</think>\n\n{% endif %}{% endif %}")
EMPTY = "<think>\n\n</think>\n\n"
USER = [{"role": "user", "content": "Say hello."}]
CHAT = USER + [{"role": "assistant", "content": "hello"}]


def _gen(tok: Any, **kw: Any) -> str:
    return tok.apply_chat_template(USER, tokenize=False, add_generation_prompt=True, **kw)


def _switched(**kwargs: Any) -> Any:
    tok = build_tokenizer(chat_template=THINKING)
    ts.apply(tok, kwargs or {"enable_thinking": False})
    return tok


def test_a_switch_is_a_default_that_a_call_can_override() -> None:
    tok = _switched()
    assert _gen(tok).endswith("assistant\n" + EMPTY)
    assert _gen(tok, enable_thinking=True).endswith("assistant\n")  # a request still wins
    assert ts.baked(tok.chat_template) == {"enable_thinking": False}
    assert ts.template_switches(tok.chat_template) == ["enable_thinking"]
    again = ts.bake(tok.chat_template, {"enable_thinking": False})
    assert again == tok.chat_template  # idempotent: re-baking replaces, never stacks
    assert ts.strip(ts.bake(tok.chat_template, {"enable_thinking": True})) == THINKING
    assert ts.baked(ts.bake(THINKING, {})) == {} and ts.bake(THINKING, {}) == THINKING
    plain = build_tokenizer(chat_template=THINKING)
    assert _gen(plain).endswith("assistant\n")  # the template's own default is thinking


def test_the_saved_run_tokenizer_renders_what_training_did(tmp_path: Path) -> None:
    src = build_tiny_model_dir(tmp_path / "m")
    tok = load_tokenizer(src, THINKING, template_kwargs={"enable_thinking": False})
    tok.save_pretrained(tmp_path / "run")
    reloaded = load_tokenizer(tmp_path / "run")  # what eval, serve, merge and export load
    assert _gen(reloaded) == _gen(tok) and _gen(reloaded).endswith(EMPTY)


@pytest.mark.parametrize("template, fix", [
    (THINKING, "enable_thinking"), (None, "no switches")])
def test_a_switch_the_template_never_reads_is_a_config_error(template: str | None,
                                                             fix: str) -> None:
    tok = build_tokenizer(chat_template=template) if template else build_tokenizer()
    with pytest.raises(ConfigError) as info:
        ts.apply(tok, {"enable_thinkin": False})
    err = info.value
    assert err.where == "model.chat_template_kwargs.enable_thinkin" and err.got is False
    assert fix in err.fix


def test_the_config_error_reaches_the_cli(tmp_path: Path, capsys: Any) -> None:
    from tests.helpers.tiny import write_jsonl
    from tests.unit.sft_support import cli, raw_cfg, write_config

    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": CHAT}])
    raw = raw_cfg(build_tiny_model_dir(tmp_path / "m"), data, tmp_path / "out",
                  model={"chat_template": THINKING, "chat_template_kwargs": {"think": False}})
    code, _, err = cli(["data", "preview", str(write_config(tmp_path / "c.yaml", raw))], capsys)
    assert code == 2 and "model.chat_template_kwargs.think" in err and "enable_thinking" in err


def test_training_renders_the_empty_block_in_context_and_never_trains_it() -> None:
    tok = _switched()
    enc = Encoder(tok, max_length=256)
    out = enc.encode(to_example(Row({"messages": CHAT}, "d.jsonl:1"), "messages"))
    assert not check_encoded([out], enc).failures  # generation prompt is the trained prefix
    assert EMPTY in tok.decode(out.input_ids)
    assert trained_spans(tok, out) == ["hello<|im_end|>"]


def test_the_modelfile_renders_the_switched_generation_prompt() -> None:
    for tok, expect in ((_switched(), True), (build_tokenizer(chat_template=THINKING), False)):
        text, _ = modelfile_text("m.gguf", tok)
        go = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
        for msgs in (USER, CHAT + USER):
            want = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            assert render(go, None, msgs, []) == want
        assert render(go, None, USER, []).endswith(EMPTY) == expect


class _Handle:
    name = "tiny"

    def __init__(self, tok: Any) -> None:
        self.tokenizer = tok


def test_a_request_overrides_the_run_switch_and_an_unknown_one_is_a_400() -> None:
    handle = _Handle(_switched())
    tok = handle.tokenizer

    def prompt(**kw: Any) -> str:
        _, ids = _chat_prompt(handle, ChatCompletionRequest(model="tiny", messages=USER, **kw))
        return tok.decode(ids)

    assert prompt().endswith(EMPTY)  # the run's default, with nothing passed
    assert prompt(chat_template_kwargs={"enable_thinking": True}).endswith("assistant\n")
    with pytest.raises(APIError) as info:
        prompt(chat_template_kwargs={"enable_thinkng": True})
    assert info.value.status == 400 and info.value.param == "chat_template_kwargs.enable_thinkng"
    assert "enable_thinking" in str(info.value)
