"""The compact Llama decoder (inference/fast_decode.py) against transformers' forward.

Greedy tokens equal ``model.generate``'s; logits of rows of different lengths decoded
together equal each row's own transformers forward; LoRA adapters per row follow PEFT's
mixed batch; models and adapters it cannot run are refused (transformers' path is kept).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from tunesmith.inference.fast_decode import decoder_for


def _llama(dtype: torch.dtype = torch.float32, bias: bool = False, **kw: Any
           ) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=97,
                      attention_bias=bias, **kw)
    cfg._attn_implementation = kw.pop("attn_implementation", "sdpa")
    return LlamaForCausalLM(cfg).to(dtype).eval()


def _with_adapters(model: torch.nn.Module, names: tuple[str, ...] = ("a", "b"),
                   **kw: Any) -> Any:
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
               "lm_head"]
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, **kw),
                          adapter_name=names[0])
    for name in names[1:]:
        peft.add_adapter(name, LoraConfig(r=4, lora_alpha=16, target_modules=targets, **kw))
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:  # B starts at zero: give every adapter an effect
                p.copy_(torch.randn_like(p) * 0.2)
    return peft.eval()


def _greedy(model: Any, prompt: list[int], steps: int, adapter: str | None = None,
            chunk: int | None = None) -> list[int]:
    dec = decoder_for(model)
    assert dec is not None
    kv = dec.new_cache()
    chunk = chunk or len(prompt)
    for s in range(0, len(prompt), chunk):
        logits = dec.forward(torch.tensor([prompt[s:s + chunk]]), kv, [adapter])
    out = []
    for _ in range(steps):
        out.append(int(logits[0].argmax()))
        logits = dec.forward(torch.tensor([[out[-1]]]), kv, [adapter])
    return out


def _reference(model: Any, prompt: list[int], steps: int, adapter: str | None = None
               ) -> list[int]:
    kw = {"adapter_names": [adapter or "__base__"]} if hasattr(model, "peft_config") else {}
    with torch.inference_mode():
        out = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=steps,
                             do_sample=False, min_new_tokens=steps, pad_token_id=0, **kw)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_greedy_equals_generate(dtype: torch.dtype) -> None:
    model = _llama(dtype)
    prompt = [5, 17, 3, 44, 9, 12, 80, 2]
    assert _greedy(model, prompt, 24) == _reference(model, prompt, 24)
    assert _greedy(model, prompt, 24, chunk=3) == _reference(model, prompt, 24)


def test_attention_bias_and_adapters_equal_generate() -> None:
    model = _with_adapters(_llama(bias=True))
    prompt = [7, 1, 33, 60, 2, 90]
    for adapter in (None, "a", "b"):
        assert _greedy(model, prompt, 16, adapter) == _reference(model, prompt, 16, adapter)
    assert _greedy(model, prompt, 16, "a") != _greedy(model, prompt, 16, "b")


def test_rows_of_different_lengths_and_adapters_together_equal_each_alone() -> None:
    """Rows join a batch at different lengths, decode side by side, one leaves: each row's
    logits equal its own transformers forward over its whole history."""
    model = _with_adapters(_llama())
    dec = decoder_for(model)
    # caches sized to their prompts, as the serve engine's prefill makes them; the second
    # row is longer than the batch so far: the batch grows (by doubling) to take it
    prompts = [[(3 * i + 1) % 97 for i in range(40)], [(7 * i + 2) % 97 for i in range(70)],
               [20, 21]]
    adapters = ["a", None, "b"]
    batch = None
    for p, a in zip(prompts, adapters):
        kv = dec.new_cache(cap=len(p))
        dec.forward(torch.tensor([p]), kv, [a])
        if batch is None:
            batch = kv
        else:
            batch.extend(kv)
    histories = [list(p) for p in prompts]
    for step in range(6):
        tokens = [(13 * step + 7 * i) % 97 for i in range(len(histories))]
        logits = dec.forward(torch.tensor(tokens).view(-1, 1), batch, adapters)
        for i, (h, t, a) in enumerate(zip(histories, tokens, adapters)):
            h.append(t)
            with torch.inference_mode():
                want = model(input_ids=torch.tensor([h]), adapter_names=[a or "__base__"]
                             ).logits[0, -1]
            torch.testing.assert_close(logits[i], want, rtol=1e-5, atol=1e-5)
        if step == 2:  # the longest row leaves: capacity and rows follow
            batch.keep([0, 2])
            del histories[1], adapters[1]
    assert batch.rows == 2 and batch.lens.tolist() == [len(h) for h in histories]


def test_mixed_adapters_of_other_ranks_and_targets_equal_each_alone() -> None:
    """A batch of three adapters (ranks 4 and 8, one only on q/v, one on the head) and the
    base: each row's logits equal PEFT's own forward for its adapter; changing an adapter's
    weights in place is seen at the next step (the stacked copies are rebuilt)."""
    model = _with_adapters(_llama())
    model.add_adapter("c", LoraConfig(r=8, lora_alpha=12, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(2)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B.c" in n:
                p.copy_(torch.randn_like(p) * 0.2)
    model.eval()
    dec = decoder_for(model)
    prompts = [[5, 9, 11], [(3 * i) % 97 for i in range(9)], [40, 2], [7, 7, 8, 1]]
    adapters = ["c", "a", None, "b"]
    batch, alone = None, []  # each row also decoded by itself (one adapter: live weights)
    for p, a in zip(prompts, adapters):
        kv, own = dec.new_cache(cap=len(p)), dec.new_cache(cap=len(p))
        dec.forward(torch.tensor([p]), kv, [a])
        dec.forward(torch.tensor([p]), own, [a])
        alone.append(own)
        batch = kv if batch is None else (batch.extend(kv) or batch)
    histories = [list(p) for p in prompts]
    for step in range(3):
        if step == 2:  # the cached keys now differ from a full forward's: compare with alone
            with torch.no_grad():
                model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["c"].weight \
                    .mul_(3)
        tokens = [(11 * step + 5 * i) % 97 for i in range(len(histories))]
        logits = dec.forward(torch.tensor(tokens).view(-1, 1), batch, adapters)
        for i, (h, t, a) in enumerate(zip(histories, tokens, adapters)):
            h.append(t)
            own = dec.forward(torch.tensor([[t]]), alone[i], [a])[0]
            torch.testing.assert_close(logits[i], own, rtol=1e-5, atol=1e-5)
            if step < 2:
                with torch.inference_mode():
                    want = model(input_ids=torch.tensor([h]),
                                 adapter_names=[a or "__base__"]).logits[0, -1]
                torch.testing.assert_close(logits[i], want, rtol=1e-5, atol=1e-5)


def test_cache_grows_past_its_first_capacity() -> None:
    model = _llama()
    prompt = list(range(1, 70))  # beyond the first 64 slots, while decoding grows it again
    assert _greedy(model, prompt, 70, chunk=32) == _reference(model, prompt, 70)


@pytest.mark.parametrize("case", ["eager", "dora", "switched off", "gpt2"])
def test_models_it_cannot_run_keep_transformers(case: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    if case == "eager":
        model = _llama(attn_implementation="eager")
    elif case == "dora":
        model = _with_adapters(_llama(), names=("a",), use_dora=True)
    elif case == "switched off":
        monkeypatch.setenv("TUNESMITH_FAST_DECODE", "0")
        model = _llama()
    else:
        from transformers import GPT2Config, GPT2LMHeadModel
        model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    assert decoder_for(model) is None


def test_adapter_added_later_rebuilds_the_decoder() -> None:
    model = _with_adapters(_llama(), names=("a",))
    first = decoder_for(model)
    assert decoder_for(model) is first
    model.add_adapter("c", LoraConfig(r=2, target_modules=["q_proj"]))
    second = decoder_for(model)
    assert second is not None and second is not first
    assert "c" in second.layers[0].proj["q_proj"].loras


@pytest.mark.parametrize("chunk", [1, 4, 7])
def test_chunked_prefill_logits_equal_one_forward(chunk: int) -> None:
    """A prompt fed in chunks (each later chunk attends causally over the cache) gives the
    logits of transformers' forward over the whole prompt, and so does every decode step."""
    model = _llama()
    dec = decoder_for(model)
    prompt = [(11 * i + 3) % 97 for i in range(23)]
    kv = dec.new_cache()
    for s in range(0, len(prompt), chunk):
        logits = dec.forward(torch.tensor([prompt[s:s + chunk]]), kv, [None])
    history = list(prompt)
    for _ in range(3):
        with torch.inference_mode():
            want = model(input_ids=torch.tensor([history])).logits[0, -1]
        torch.testing.assert_close(logits[0], want, rtol=1e-5, atol=1e-5)
        history.append(int(logits[0].argmax()))
        logits = dec.forward(torch.tensor([[history[-1]]]), kv, [None])


class _Tok:
    eos_token_id, pad_token_id = 2, 0


def _both_paths(model: Any, monkeypatch: pytest.MonkeyPatch, settings: Any, n: int
                ) -> tuple[list[list[int]], list[list[int]]]:
    from tunesmith.inference.generate import sample_ids

    prompts = [[5, 17, 3, 44, 9], [7, 1, 33], [60, 61, 62, 63, 64, 65, 66]]
    fast = sample_ids(model, _Tok(), prompts, settings, n)
    monkeypatch.setenv("TUNESMITH_FAST_DECODE", "0")
    stock = sample_ids(model, _Tok(), prompts, settings, n)
    monkeypatch.delenv("TUNESMITH_FAST_DECODE")
    return fast, stock


def test_rollouts_greedy_equal_generate_with_an_adapter(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """GRPO's sample_ids through the compact decoder: with the active LoRA adapter, the same
    rows as model.generate (prompts of different lengths, rows cut after their EOS)."""
    from tunesmith.inference.generate import GenerationSettings

    model = _with_adapters(_llama(), names=("a",))
    model.generation_config.eos_token_id = 2
    model.train()  # sample_ids decodes in eval mode and restores the mode
    fast, stock = _both_paths(model, monkeypatch, GenerationSettings(max_new_tokens=12), 1)
    assert fast == stock and len(fast) == 3 and model.training
    with model.disable_adapter():  # the adapter matters: the base alone decodes otherwise
        base = _both_paths(model, monkeypatch, GenerationSettings(max_new_tokens=12), 1)[1]
    assert fast != base


def test_rollouts_sampled_are_seeded_and_end_at_eos() -> None:
    from tunesmith.inference.generate import GenerationSettings, sample_ids

    model = _llama()
    settings = GenerationSettings(max_new_tokens=20, temperature=1.5, top_p=0.95, seed=7)
    prompts = [[5, 17, 3], [9, 9]]
    eos = {2, *range(80, 97)}  # many EOS ids: rows end at different steps
    model.generation_config.eos_token_id = sorted(eos)
    a = sample_ids(model, _Tok(), prompts, settings, 4)
    assert a == sample_ids(model, _Tok(), prompts, settings, 4)
    other = sample_ids(model, _Tok(), prompts, GenerationSettings(
        max_new_tokens=20, temperature=1.5, top_p=0.95, seed=8), 4)
    assert a != other and len(a) == 8
    for row in a:
        assert all(t not in eos for t in row[:-1])
        assert row[-1] in eos or len(row) == 20
    assert len({len(r) for r in a}) > 1  # rows left the batch at different steps


def test_rollouts_under_autocast_with_a_bf16_frozen_base() -> None:
    """A LoRA run keeps a bf16 frozen base beside float32 embeddings and adapters and samples
    under autocast: the compact decoder runs it in the weights' own dtypes."""
    from tunesmith.inference.generate import GenerationSettings, sample_ids

    model = _with_adapters(_llama(), names=("a",))
    for name, module in model.named_modules():
        if name.endswith("base_layer"):
            module.to(torch.bfloat16)
    model.generation_config.eos_token_id = 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sample_ids(model, _Tok(), [[5, 17, 3], [8]],
                         GenerationSettings(max_new_tokens=6, temperature=1.0, seed=1), 2)
    assert len(out) == 4 and all(0 < len(r) <= 6 for r in out)
