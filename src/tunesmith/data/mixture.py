"""Multitask mixtures: several datasets, each with its own format, instruction, template and
weight, trained together with per-task loss and validation metrics.

Each dataset is encoded by the ordinary SFT pipeline (same checks, same cache). Records are
first rewritten when the dataset asks for it — ``prompt``/``completion`` format strings turn
any record (e.g. a classification row) into a user/assistant exchange, ``instruction`` is put
before the first user message — into a content-addressed JSONL file under
``$TUNESMITH_HOME/mixture/``, so rewriting and tokenizing happen once (a damaged file there
is noticed by its checksum and rewritten: :mod:`tunesmith.data.cache`).

Sampling: every batch holds examples of one task (so a batch's loss is that task's loss).
A batch's task is drawn with probability ∝ weight (``proportional``) or ∝ weight^(1/T)
(``temperature``); an unset weight is the dataset's number of training examples. Within a
task, batches follow the usual deterministic, length-grouped order, restarting with a new
shuffle when the task runs out.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config.schema import DataConfig, MixtureConfig, MixtureDataset, RunConfig
from tunesmith.data.cache import read_entry, write_entry
from tunesmith.data.collate import epoch_batches
from tunesmith.data.formats import detect_training_format, to_example
from tunesmith.data.pipeline import SplitStats, encode_file, split_off
from tunesmith.data.readers import read_rows
from tunesmith.data.template_switches import bake, baked
from tunesmith.data.templates import Encoded, Encoder, resolve_chat_template
from tunesmith.errors import DataError
from tunesmith.io import cache_root, file_sha256


@dataclass
class MixtureData:
    train: list[Encoded]
    validation: list[Encoded]
    tasks: list[str]          # task of each training example
    val_tasks: list[str]      # task of each validation example
    probabilities: dict[str, float]
    stats: dict[str, SplitStats] = field(default_factory=dict)
    data_card: None = None

    def batch_plan(self, epoch: int, cfg: RunConfig) -> list[list[int]]:
        """The batches of ``epoch`` (deterministic), each from one task."""
        tc = cfg.train
        return mixture_batches(self.tasks, [len(e.input_ids) for e in self.train],
                               self.probabilities, tc.batch_size, tc.seed, epoch,
                               tc.group_by_length)


def sampling_probabilities(weights: dict[str, float], sampling: str, temperature: float
                           ) -> dict[str, float]:
    """Probability of drawing each task for a batch."""
    power = 1.0 if sampling == "proportional" else 1.0 / temperature
    scaled = {k: w ** power for k, w in weights.items()}
    total = sum(scaled.values())
    return {k: v / total for k, v in scaled.items()}


def mixture_batches(tasks: list[str], lengths: list[int], probs: dict[str, float],
                    batch_size: int, seed: int, epoch: int, group_by_length: bool = True
                    ) -> list[list[int]]:
    """As many batches as the data fills; each batch's task drawn from ``probs``."""
    members: dict[str, list[int]] = {}
    for i, t in enumerate(tasks):
        members.setdefault(t, []).append(i)
    names = sorted(members)
    rng = random.Random(seed * 7_777_777 + epoch)
    streams: dict[str, list[list[int]]] = {t: [] for t in names}
    passes = {t: 0 for t in names}
    out = []
    for _ in range(math.ceil(len(tasks) / batch_size)):
        t = rng.choices(names, weights=[probs[n] for n in names])[0]
        if not streams[t]:
            ids = members[t]
            sub = epoch_batches([lengths[i] for i in ids], batch_size,
                                seed + names.index(t), epoch * 1_000 + passes[t],
                                group_by_length)
            streams[t] = [[ids[k] for k in b] for b in sub]
            passes[t] += 1
        out.append(streams[t].pop(0))
    return out


def _format_record(template: str, data: dict[str, Any], where: str, key: str) -> str:
    try:
        return template.format(**data)
    except (KeyError, IndexError, ValueError) as exc:
        raise DataError(f"data.mixture {key} cannot be filled from this record ({exc})",
                        where=where, got=sorted(data), fix="use only fields the records have "
                        "in the format string, e.g. {text}") from None


def rewrite_rows(ds: MixtureDataset, path: str, fmt: str, system_prompt: str | None,
                 limit: int | None) -> tuple[str, str]:
    """(path, format) of the dataset as the SFT pipeline should read it: the file itself, or
    a rewritten messages file when ``prompt``/``completion`` or ``instruction`` is set."""
    if ds.prompt is None and ds.instruction is None:
        return path, fmt
    recipe = json.dumps([ds.prompt, ds.completion, ds.label_names, ds.instruction,
                         system_prompt, fmt, limit, ENCODE_REV])
    key = hashlib.sha256((file_sha256(path) + recipe).encode()).hexdigest()[:24] \
        if Path(path).is_file() else hashlib.sha256((path + recipe).encode()).hexdigest()[:24]
    out = cache_root() / "mixture" / f"{ds.name}-{key}.jsonl"
    if read_entry(out, lambda p: p) is not None:  # verified; a damaged one is rewritten
        return str(out), "messages"
    rows = read_rows(path, limit=limit)
    real_fmt = detect_training_format(rows) if fmt == "auto" and ds.prompt is None else fmt
    lines = []
    for row in rows:
        if ds.prompt is not None:
            data = dict(row.data)
            if ds.label_names is not None:
                label = data.get("label")
                if not isinstance(label, int) or not 0 <= label < len(ds.label_names):
                    raise DataError("label is not an index into label_names", where=row.where,
                                    got=label, fix=f"data.mixture dataset {ds.name}: give "
                                    f"{len(ds.label_names)} label_names for labels 0.."
                                    f"{len(ds.label_names) - 1}")
                data["label_text"] = ds.label_names[label]
            msgs = [{"role": "user", "content": _format_record(ds.prompt, data, row.where,
                                                               "prompt")},
                    {"role": "assistant", "content": _format_record(
                        ds.completion or "", data, row.where, "completion")}]
        else:
            ex = to_example(row, real_fmt)
            if ex.kind != "chat":
                raise DataError("data.mixture instruction needs chat-style records",
                                where=row.where, got=real_fmt, fix="use messages or alpaca "
                                "records, or prompt/completion format strings")
            msgs = [dict(m) for m in ex.messages]
        if ds.instruction:
            first = next(m for m in msgs if m["role"] == "user")
            first["content"] = ds.instruction + "\n\n" + first["content"]
        if system_prompt and msgs[0]["role"] != "system":
            msgs.insert(0, {"role": "system", "content": system_prompt})
        lines.append(json.dumps({"messages": msgs}, ensure_ascii=False))
    text = "\n".join(lines) + "\n"
    write_entry(out, lambda fh: fh.write(text.encode("utf-8")))
    return str(out), "messages"


ENCODE_REV = "1"  # bump when rewrite_rows changes its output


def prepare_mixture(data: DataConfig, mix: MixtureConfig, tokenizer: Any, seed: int = 42
                    ) -> MixtureData:
    """Encode every dataset with its own settings; concatenate with task tags."""
    train: list[Encoded] = []
    val: list[Encoded] = []
    tasks: list[str] = []
    val_tasks: list[str] = []
    weights: dict[str, float] = {}
    stats: dict[str, SplitStats] = {}
    for ds in mix.datasets:
        tok = tokenizer
        if ds.chat_template:
            tok = copy.copy(tokenizer)
            # the model's switches, where this task's template reads them
            tok.chat_template = bake(resolve_chat_template(ds.chat_template),
                                     baked(tokenizer.chat_template), strict=False)
        system = ds.system_prompt if ds.system_prompt is not None else data.system_prompt
        dcfg = data.model_copy(update={"mixture": None, "format": ds.format, "train": ds.train,
                                       "validation": ds.validation, "system_prompt": None,
                                       "max_examples": ds.max_examples})
        encoder = Encoder(tok, data.max_length, data.train_on_inputs, data.truncation,
                          data.reasoning)
        t_path, fmt = rewrite_rows(ds, ds.train, ds.format, system, ds.max_examples)
        enc, st = encode_file(t_path, dcfg.model_copy(update={"format": fmt,
                                                              "system_prompt": system}),
                              encoder, limit=ds.max_examples)
        st.source = ds.train
        stats[f"{ds.name}/train"] = st
        v_enc: list[Encoded] = []
        if ds.validation:
            v_path, v_fmt = rewrite_rows(ds, ds.validation, ds.format, system, None)
            v_enc, vst = encode_file(v_path, dcfg.model_copy(update={"format": v_fmt,
                                                                     "system_prompt": system}),
                                     encoder)
            vst.source = ds.validation
            stats[f"{ds.name}/validation"] = vst
        elif data.val_split > 0:
            enc, v_enc = split_off(enc, data.val_split, seed)
        train += enc
        tasks += [ds.name] * len(enc)
        val += v_enc
        val_tasks += [ds.name] * len(v_enc)
        weights[ds.name] = ds.weight if ds.weight is not None else float(len(enc))
    probs = sampling_probabilities(weights, mix.sampling, mix.temperature)
    return MixtureData(train, val, tasks, val_tasks, probs, stats)
