"""Classification config, early-stopping directions, classifier heads and LoRA targets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers.tiny_cls import build_tiny_bert_dir, build_tiny_llama_cls_dir
from tunesmith.config import validate_dict
from tunesmith.config.schema import MethodConfig
from tunesmith.errors import ConfigError
from tunesmith.models import adapters
from tunesmith.models.classifier import default_lora_targets, head_modules, load_classifier
from tunesmith.models.load import load_tokenizer
from tunesmith.train.early_stopping import higher_is_better, is_improvement


def test_classification_section_defaults_and_task() -> None:
    cfg = validate_dict({"task": "classification",
                         "train": {"early_stopping": {"metric": "val_macro_f1"}}})
    assert cfg.classification.text_field == "text" and cfg.classification.max_length == 128
    assert cfg.classification.class_weights == "none"


def test_sft_rejects_classification_metrics_and_vice_versa() -> None:
    with pytest.raises(ConfigError) as exc:
        validate_dict({"train": {"early_stopping": {"metric": "val_macro_f1"}}})
    assert "not computed by task sft" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        validate_dict({"task": "classification",
                       "train": {"early_stopping": {"metric": "val_perplexity"}}})
    assert "val_accuracy" in str(exc.value)


def test_bad_classification_values_are_reported_together() -> None:
    with pytest.raises(ConfigError) as exc:
        validate_dict({"task": "classification", "classification": {
            "threshold": 1.5, "class_weights": "auto", "label_smoothing": -0.1, "lables": []}})
    text = str(exc.value)
    assert "classification.threshold" in text and "classification.class_weights" in text
    assert "classification.label_smoothing" in text and "did you mean" in text
    with pytest.raises(ConfigError, match="positive weight"):
        validate_dict({"task": "classification", "classification": {"class_weights": [1, 0]}})


@pytest.mark.parametrize("metric,higher", [("val_loss", False), ("val_perplexity", False),
                                           ("val_token_accuracy", True), ("val_accuracy", True),
                                           ("val_macro_f1", True), ("val_micro_f1", True)])
def test_early_stopping_direction(metric: str, higher: bool) -> None:
    assert higher_is_better(metric) is higher
    assert is_improvement(0.6, 0.5, metric) is higher
    assert is_improvement(0.5, None, metric)
    assert not is_improvement(0.55, 0.5, metric, min_delta=0.1)


def test_unknown_metric_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        higher_is_better("val_bleu")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert_dir(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama_cls_dir(tmp_path_factory.mktemp("llama"))


def test_encoder_head_labels_and_lora_targets(bert_dir: Path) -> None:
    tok = load_tokenizer(bert_dir)
    model = load_classifier(bert_dir, ["neg", "pos", "mixed"], False, tok.pad_token_id)
    assert model.config.id2label == {0: "neg", 1: "pos", 2: "mixed"}
    assert model.config.problem_type == "single_label_classification"
    assert head_modules(model) == ["classifier", "pooler"]
    targets = default_lora_targets(model, MethodConfig().target_modules)
    assert set(targets) == {"self.query", "self.key", "self.value", "output.dense",
                            "intermediate.dense"}
    peft_model = adapters.apply_method(model, MethodConfig(type="lora", target_modules=targets),
                                       task_type="SEQ_CLS", modules_to_save=head_modules(model))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert any("classifier" in n for n in trainable) and any("pooler" in n for n in trainable)
    assert any("lora_A" in n for n in trainable)
    assert not any("word_embeddings" in n for n in trainable)
    assert not any("pooler" in n and "lora" in n for n in trainable)


def test_decoder_head_sets_pad_id_and_pools_last_real_token(llama_dir: Path) -> None:
    tok = load_tokenizer(llama_dir)
    model = load_classifier(llama_dir, ["a", "b"], True, tok.pad_token_id)
    assert model.config.pad_token_id == tok.pad_token_id is not None
    assert model.config.problem_type == "multi_label_classification"
    assert head_modules(model) == ["score"]
    assert default_lora_targets(model, MethodConfig().target_modules) == \
        MethodConfig().target_modules
    model.eval()
    ids = tok(["the quick brown fox"], add_special_tokens=True).input_ids[0]
    alone = model(input_ids=torch.tensor([ids])).logits
    padded = torch.tensor([ids + [tok.pad_token_id] * 5])
    mask = torch.tensor([[1] * len(ids) + [0] * 5])
    assert torch.allclose(model(input_ids=padded, attention_mask=mask).logits, alone, atol=1e-5)


def test_explicit_targets_missing_from_the_model_are_a_config_error(bert_dir: Path) -> None:
    tok = load_tokenizer(bert_dir)
    model = load_classifier(bert_dir, ["a", "b"], False, tok.pad_token_id)
    with pytest.raises(ConfigError, match="does not have"):
        adapters.apply_method(model, MethodConfig(type="lora", target_modules=["q_proj"]),
                              task_type="SEQ_CLS")


def test_gpt2_style_decoder_without_pad_token(tmp_path: Path) -> None:
    from tests.helpers.tiny_cls import build_tiny_gpt2_dir

    src = build_tiny_gpt2_dir(tmp_path / "gpt2")
    tok = load_tokenizer(src)  # no pad token in the checkpoint: unk/eos stands in
    assert tok.pad_token_id is not None
    model = load_classifier(src, ["a", "b", "c"], False, tok.pad_token_id)
    assert model.config.pad_token_id == tok.pad_token_id
    assert head_modules(model) == ["score"]
    model.eval()
    ids = tok(["the quick brown fox"], add_special_tokens=True).input_ids[0]
    alone = model(input_ids=torch.tensor([ids])).logits
    padded = torch.tensor([ids + [tok.pad_token_id] * 3])
    mask = torch.tensor([[1] * len(ids) + [0] * 3])
    assert torch.allclose(model(input_ids=padded, attention_mask=mask).logits, alone, atol=1e-5)
