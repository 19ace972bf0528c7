"""Knowledge distillation: a student (``model.name``, optionally cut to a subset of its
layers) learns from a teacher (``distill.teacher``: any model or run directory).

    config → tokenizers (same vocabulary, or a clear error) → data (as sft, or as
           classification for ``distill.head: classification``) → student (+ layer subset,
           + method) → teacher (frozen; on the fly, or its outputs cached and released)
           → run dir → training loop → final/

Causal LMs are distilled token by token on the labelled positions; classifiers learn from
the teacher's soft labels. Both mix the distillation loss with the usual loss by
``distill.alpha``. See :mod:`tunesmith.train.objectives.distill`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.config.schema import RunConfig
from tunesmith.data.classification import prepare_classification
from tunesmith.data.pipeline import prepare_data
from tunesmith.device import DTYPES
from tunesmith.errors import ConfigError, ModelError
from tunesmith.models.artifacts import check_weights_safe, resolve_artifact
from tunesmith.models.load import load_causal_lm, load_errors, load_tokenizer
from tunesmith.models.student import keep_layers
from tunesmith.recipes import common
from tunesmith.train.engine import LoopResult, StepCallback, TrainLoop
from tunesmith.train.objectives.distill import (
    CausalDistillObjective,
    ClassifierDistillObjective,
    cache_key,
)
from tunesmith.train.objectives.dpo import model_fingerprint


@dataclass
class DistillResult:
    run_dir: Path
    loop: LoopResult
    final_dir: Path
    student_layers: list[int] | None = None
    teacher_cached: bool | None = None


def check_same_vocabulary(student_tok: Any, teacher_tok: Any, student_name: str,
                          teacher_name: str) -> None:
    """Token-level distillation compares distributions over the same token ids."""
    if student_tok.get_vocab() == teacher_tok.get_vocab():
        return
    raise ModelError("teacher and student have different vocabularies, so their outputs "
                     "cannot be compared token by token", where="distill.teacher",
                     got=f"student {student_name}: {len(student_tok)} tokens; teacher "
                     f"{teacher_name}: {len(teacher_tok)} tokens",
                     fix="pick a teacher and student from the same model family (same "
                     "tokenizer), e.g. a larger and a smaller SmolLM2, or a student cut from "
                     "the teacher with distill.student_layers")


def _check_output_sizes(student: Any, teacher: Any) -> None:
    s = student.get_output_embeddings().weight.shape[0]
    t = teacher.get_output_embeddings().weight.shape[0]
    if s != t:
        raise ModelError("teacher and student have different vocabularies (output sizes "
                         "differ)", where="distill.teacher", got=f"student {s}, teacher {t}",
                         fix="use models that share a tokenizer and embedding size")


def load_teacher_classifier(source: Path | str, names: list[str], cfg: RunConfig) -> Any:
    """A trained classifier whose labels are exactly ``names`` (its head is kept)."""
    # deferred: transformers is heavy and only this path needs it
    from transformers import AutoModelForSequenceClassification

    safe = check_weights_safe(source, cfg.model.allow_pickle)
    with load_errors("cannot load the teacher classifier", f"distill.teacher {source}",
                     "point distill.teacher at a trained classification run or checkpoint"):
        teacher = AutoModelForSequenceClassification.from_pretrained(
            str(source), dtype=DTYPES[cfg.model.dtype],
            trust_remote_code=cfg.model.trust_remote_code, **safe)
    labels = [teacher.config.id2label[i] for i in range(teacher.config.num_labels)]
    if labels != list(names):
        raise ModelError("the teacher's labels differ from the data's", where="distill.teacher",
                         got=f"teacher {labels}, data {list(names)}",
                         fix="set classification.labels to the teacher's labels, in its order")
    return teacher


def run(cfg: RunConfig, resume: bool = False, overwrite: bool = False, progress: bool = True,
        callbacks: list[StepCallback] | None = None, allow_config_change: bool = False
        ) -> DistillResult:
    precision, accelerator = common.setup(cfg)
    d = cfg.distill
    assert d.teacher is not None  # the schema requires it for task distill
    teacher_src = resolve_artifact(d.teacher)
    kept: list[int] = []

    def cut(model: Any) -> None:
        if d.student_layers is not None:
            kept.extend(keep_layers(model, d.student_layers))

    bs = cfg.train.eval_batch_size or cfg.train.batch_size
    if d.head == "classification":
        source = resolve_artifact(cfg.model.name)
        tok = load_tokenizer(source, None, cfg.model.trust_remote_code)
        check_same_vocabulary(tok, load_tokenizer(teacher_src), cfg.model.name, d.teacher)
        data = prepare_classification(cfg.data, cfg.classification, tok, cfg.train.seed)
        if data.labels.multi_label:
            raise ConfigError("distillation of multi-label classifiers is not supported yet",
                              where="classification.multi_label", got=True,
                              fix="distil a single-label classifier, or train the smaller "
                              "model with task: classification")
        names = data.labels.names
        teacher = load_teacher_classifier(teacher_src, names, cfg)
        model, unfreezer, _ = common.build_classifier(cfg, tok, source, names, cut)
        objective: Any = ClassifierDistillObjective(
            model, teacher, tok, data.train, data.validation, data.labels, cfg,
            common.classifier_info(cfg, names))
        examples = {"train": len(data.train), "validation": len(data.validation)}
    else:
        tok = common.build_tokenizer(cfg)
        check_same_vocabulary(tok, load_tokenizer(teacher_src), cfg.model.name, d.teacher)
        data = prepare_data(cfg.data, tok, cfg.train.seed)  # before any model loads
        model, tok, unfreezer = common.build_causal_lm(cfg, tok, cut)
        teacher = load_causal_lm(teacher_src, cfg.model.dtype, cfg.model.trust_remote_code,
                                 cfg.model.attn_implementation, cfg.model.allow_pickle)
        _check_output_sizes(model, teacher)
        objective = CausalDistillObjective(model, teacher, tok, data.train, data.validation, cfg)
        examples = {"train": len(data.train), "validation": len(data.validation)}
    del teacher  # the objective holds it (or, with the cache, drops it)
    cached = None
    if d.teacher_outputs == "cache":
        key = cache_key(d.head, model_fingerprint(teacher_src), objective.fingerprint(),
                        precision, cfg.model.dtype)
        cached = objective.cache_teacher(accelerator, bs, key)

    stats = {k: v.as_dict() for k, v in data.stats.items()}
    run = common.open_run(cfg, resume, overwrite, tok, model, stats, {
        "precision": precision, "examples": examples, "teacher": str(teacher_src),
        "student_layers": kept or None, "teacher_cached": cached,
        "distill": d.model_dump()}, allow_config_change)
    _, result = common.train_and_finish(run, lambda: TrainLoop(
        objective, tok, cfg, run.dir, accelerator, unfreezer, progress, callbacks))
    return DistillResult(run.dir, result, run.dir / "final", kept or None, cached)
