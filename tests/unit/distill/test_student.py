"""A student cut from a model keeps the chosen layers with their weights, loads with plain
transformers and refuses impossible layer lists."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers.tiny import build_tokenizer
from tests.helpers.tiny_cls import build_tiny_bert_dir
from tunesmith.errors import ConfigError
from tunesmith.models.student import keep_layers


def _llama(layers: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer()
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128))


def test_every_other_layer_keeps_weights_and_reloads(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    teacher = _llama(6)
    before = {i: teacher.model.layers[i].mlp.up_proj.weight.clone() for i in range(6)}
    kept = keep_layers(teacher, "every_other")  # in place: the model becomes the student
    assert kept == [0, 2, 4]
    assert teacher.config.num_hidden_layers == 3 and len(teacher.model.layers) == 3
    for new, old in enumerate(kept):
        assert torch.equal(teacher.model.layers[new].mlp.up_proj.weight, before[old])
        assert teacher.model.layers[new].self_attn.layer_idx == new
    teacher.save_pretrained(tmp_path / "student")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert loaded.config.num_hidden_layers == 3
    ids = torch.tensor([[1, 5, 9, 14]])
    assert torch.allclose(loaded(ids).logits, teacher(ids).logits, atol=1e-5)
    out = loaded.generate(ids, max_new_tokens=3, do_sample=False)  # KV cache by layer index
    assert out.shape == (1, 7)


def test_explicit_layers_on_bert(tmp_path: Path) -> None:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(build_tiny_bert_dir(tmp_path / "bert"))
    assert keep_layers(model, [1]) == [1]
    assert len(model.encoder.layer) == 1 and model.config.num_hidden_layers == 1
    out = model(input_ids=torch.tensor([[2, 5, 6, 3]]))
    assert out.last_hidden_state.shape == (1, 4, 32)


@pytest.mark.parametrize("spec", [[], [2, 1], [0, 0], [0, 9], [-1]])
def test_bad_layer_lists_are_refused(spec: list[int]) -> None:
    with pytest.raises(ConfigError) as err:
        keep_layers(_llama(4), spec)
    assert "distill.student_layers" in str(err.value) and "0..3" in str(err.value)
