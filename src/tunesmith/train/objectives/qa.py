"""Extractive QA: start/end cross-entropy per window; SQuAD exact match and F1 on validation.

Each window's loss is the mean of the start and end cross-entropies (position 0 is the
target when the window does not hold the answer), averaged over the step's windows, as
BERT's SQuAD fine-tuning does. Evaluation runs every window of every validation question,
keeps the best span per question (``data/qa_windows.best_span``: n-best starts and ends,
a maximum answer length) and scores it with the official SQuAD normalisation
(``metrics/squad.py``). With unanswerable questions (SQuAD v2-style) the no-answer
threshold is chosen on that validation set to maximise F1 (unless
``extractive_qa.null_threshold`` fixes it); the chosen value is saved with the model, so
``predict`` answers "no answer" the way validation scored it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from tunesmith.config.schema import QA_METRICS, RunConfig
from tunesmith.data.collate import padded_width
from tunesmith.data.qa_windows import Question, SpanAnswer, Window, best_span
from tunesmith.metrics.squad import SquadCounts, best_null_threshold, score
from tunesmith.train.engine import BatchOut
from tunesmith.train.reported import ReportedObjective

EVAL_LOG = "eval/extractive_qa.jsonl"


def collate_windows(windows: Sequence[Window], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids (to a multiple of 8), attention mask, token types (when the tokenizer
    has them) and the start/end targets."""
    width = padded_width(max(len(w.input_ids) for w in windows))
    ids = torch.full((len(windows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(windows), width), dtype=torch.long)
    types = torch.zeros((len(windows), width), dtype=torch.long) \
        if windows[0].token_type_ids is not None else None
    for r, w in enumerate(windows):
        n = len(w.input_ids)
        ids[r, :n] = torch.tensor(w.input_ids)
        mask[r, :n] = 1
        if types is not None:
            types[r, :n] = torch.tensor(w.token_type_ids)
    out = {"input_ids": ids, "attention_mask": mask,
           "start_positions": torch.tensor([w.start for w in windows]),
           "end_positions": torch.tensor([w.end for w in windows])}
    if types is not None:
        out["token_type_ids"] = types
    return out


class SpanCriterion(nn.Module):
    """Wraps the QA model; returns (summed window loss, start logits, end logits).

    Padding positions are masked out of both softmaxes, so a window's loss does not depend
    on how wide its batch is (run_qa.py pads every window to the full length and leaves
    the padding in)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, start_positions: torch.Tensor, end_positions: torch.Tensor,
                **inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(**inputs)
        pad = inputs["attention_mask"] == 0
        start = out.start_logits.float().masked_fill(pad, float("-inf"))
        end = out.end_logits.float().masked_fill(pad, float("-inf"))
        ce = nn.functional.cross_entropy
        loss = (ce(start, start_positions, reduction="sum")
                + ce(end, end_positions, reduction="sum")) / 2
        return loss, start, end


def answers_for(questions: Sequence[Question], windows: Sequence[Window],
                starts: Sequence[torch.Tensor], ends: Sequence[torch.Tensor], n_best: int,
                max_answer_length: int) -> list[SpanAnswer]:
    """The best span of every question from its windows' logits (windows in any order)."""
    by_q: dict[int, list[int]] = {}
    for i, w in enumerate(windows):
        by_q.setdefault(w.question, []).append(i)
    out = []
    for qi, q in enumerate(questions):
        idx = by_q.get(qi, [])
        out.append(best_span(q.context, [windows[i] for i in idx], [starts[i] for i in idx],
                             [ends[i] for i in idx], n_best, max_answer_length))
    return out


def score_answers(questions: Sequence[Question], answers: Sequence[SpanAnswer],
                  allow_no_answer: bool, threshold: float | None
                  ) -> tuple[dict[str, Any], float | None, list[str]]:
    """SQuAD figures, the no-answer threshold used (chosen for best F1 when None) and the
    predicted texts ("" for no answer)."""
    if allow_no_answer and threshold is None:
        span_f1 = [score(a.text, q.answer_texts)[1] for q, a in zip(questions, answers)]
        threshold, _ = best_null_threshold([a.null_margin for a in answers],
                                           [bool(q.answers) for q in questions], span_f1)
    counts = SquadCounts()
    texts = []
    for q, a in zip(questions, answers):
        text = "" if allow_no_answer and a.null_margin > (threshold or 0.0) else a.text
        counts.update(text, q.answer_texts)
        texts.append(text)
    return counts.compute(), (threshold if allow_no_answer else None), texts


class QAObjective(ReportedObjective):
    """Start/end cross-entropy per window; SQuAD EM/F1 on validation questions."""

    task = "extractive_qa"
    eval_log = EVAL_LOG
    metrics = QA_METRICS
    rate_name = "examples"
    shown_metrics = ("val_loss", "val_exact_match", "val_f1")

    def __init__(self, model: Any, tokenizer: Any, train: list[Window], val: list[Window],
                 val_questions: list[Question], allow_no_answer: bool, cfg: RunConfig,
                 save_info: dict[str, Any]) -> None:
        self.train_set, self.val_set, self.val_questions = train, val, val_questions
        self.allow_no_answer, self.cfg, self.qcfg = allow_no_answer, cfg, cfg.extractive_qa
        self.module = SpanCriterion(model)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.train_lengths = [len(w.input_ids) for w in train]
        self.val_size = len(val)
        self.threshold = self.qcfg.null_threshold
        self.save_info = save_info
        self.last_report: dict[str, Any] = {}

    def train_batch(self, wrapped: nn.Module, idx: list[int], device: Any) -> BatchOut:
        batch = {k: v.to(device) for k, v in collate_windows(
            [self.train_set[j] for j in idx], self.pad_id).items()}
        lsum, _, _ = wrapped(**batch)
        return BatchOut(lsum, {}, int(batch["attention_mask"].sum()))

    def step_values(self, sums: dict[str, float], units: int) -> dict[str, float]:
        return {"step_examples": units}

    def evaluate(self, wrapped: nn.Module, acc: Any, batch_size: int) -> dict[str, float]:
        order = sorted(range(len(self.val_set)), key=lambda i: -len(self.val_set[i].input_ids))
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        starts: list[torch.Tensor] = [torch.empty(0)] * len(self.val_set)
        ends: list[torch.Tensor] = [torch.empty(0)] * len(self.val_set)
        loss_sum = 0.0
        for idx in batches[acc.process_index::acc.num_processes]:
            windows = [self.val_set[j] for j in idx]
            batch = {k: v.to(acc.device) for k, v in collate_windows(windows,
                                                                     self.pad_id).items()}
            with acc.autocast():
                lsum, sl, el = wrapped(**batch)
            loss_sum += float(lsum)
            for r, j in enumerate(idx):
                n = len(self.val_set[j].input_ids)
                starts[j], ends[j] = sl[r, :n].cpu(), el[r, :n].cpu()
        if acc.num_processes > 1:  # every process scores all questions: gather the logits
            gathered = [None] * acc.num_processes
            torch.distributed.all_gather_object(gathered, (starts, ends, loss_sum))
            loss_sum = 0.0
            for s_, e_, l_ in gathered:  # type: ignore[misc]
                loss_sum += l_
                for j, (a, b) in enumerate(zip(s_, e_)):
                    if a.numel():
                        starts[j], ends[j] = a, b
        answers = answers_for(self.val_questions, self.val_set, starts, ends, self.qcfg.n_best,
                              self.qcfg.max_answer_length)
        report, threshold, _ = score_answers(self.val_questions, answers, self.allow_no_answer,
                                             self.qcfg.null_threshold)
        self.threshold = threshold
        self.last_report = {**report, "null_threshold": threshold,
                            "windows": len(self.val_set)}
        return {"val_loss": loss_sum / max(len(self.val_set), 1),
                "val_exact_match": report["exact_match"], "val_f1": report["f1"]}

    def info(self) -> dict[str, Any]:
        return {**self.save_info, "null_threshold": self.threshold}
