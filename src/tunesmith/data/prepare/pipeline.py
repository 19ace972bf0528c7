"""``prepare``: read, validate, clean, scrub, deduplicate, split, check and write a dataset.

Three streaming passes keep memory bounded at any input size:

1. read every input row; reject unreadable or malformed rows (counted, with line numbers);
   clean, filter, scrub PII and drop exact duplicates; append survivors to a spool file
   and record per row only a few fixed-size values (hashes, label code, MinHash bands);
2. after near-duplicate clustering and split assignment (both on those arrays), index the
   evaluation rows (validation/test from the spool, plus any extra evaluation files);
3. stream the spool again, check train rows for contamination, write the split files.

Every removed row is written to ``reports/removed.jsonl`` and every rejected row to
``reports/rejected.jsonl`` with its ``file:line``, and the data card counts them per step,
so ``rows read = rejected + removed at each step + rows written`` always holds.
"""

from __future__ import annotations

import json
import shutil
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.data.prepare import card as card_mod
from tunesmith.data.prepare.clean import Cleaner
from tunesmith.data.prepare.config import PrepareConfig
from tunesmith.data.prepare.contamination import EvalIndex, Hit, index_eval_file
from tunesmith.data.prepare.dedup import ExactDeduper, NearDupIndex, NearDupResult, write_clusters
from tunesmith.data.prepare.fields import (
    canonical_roles,
    check_row,
    get_path,
    iter_texts,
    majority_format,
    map_texts,
    type_name,
)
from tunesmith.data.prepare.inspect import length_stats
from tunesmith.data.prepare.ledger import Ledger, WhereLog, problem_fix
from tunesmith.data.prepare.pii import PiiScrubber
from tunesmith.data.prepare.source import describe_source, expand_inputs, iter_source
from tunesmith.data.prepare.spans import SPAN_FORMATS, SpanChecker, tags_config
from tunesmith.data.prepare.split import SPLITS, CodeBook, assign_splits
from tunesmith.data.prepare.textkeys import exact_key, hash64, near_from_exact
from tunesmith.data.prepare.writers import JsonlWriter, check_output_dir, jsonl_to_parquet
from tunesmith.data.readers import BadRow, Row
from tunesmith.errors import DataError, UsageError
from tunesmith.io import atomic_directory

Progress = Callable[[str, int], None]
_DETECT_ROWS = 1000
_BATCH = 2048


@dataclass
class PrepareResult:
    """Where the prepared data went and its data card (as written to ``data_card.json``)."""

    outdir: Path
    card: dict[str, Any]


@dataclass
class _Kept:
    """Compact facts about every row that survived pass 1, by spool position."""

    where: WhereLog
    content: array = field(default_factory=lambda: array("Q"))
    label: array = field(default_factory=lambda: array("i"))
    answer: array = field(default_factory=lambda: array("Q"))  # NER/QA: hash of tags/answers
    stratum: array = field(default_factory=lambda: array("i"))
    group: array = field(default_factory=lambda: array("Q"))


def prepare(cfg: PrepareConfig, progress: Progress | None = None) -> PrepareResult:
    """Run the whole preparation described by ``cfg`` and return the data card."""
    if cfg.output is None:
        raise UsageError("no output directory given", fix="pass -o OUTDIR (or 'output:' in "
                         "the config file)")
    inputs = expand_inputs(cfg.inputs)
    eval_files = expand_inputs(cfg.contamination.eval_files) if cfg.contamination.eval_files else []
    outdir = Path(cfg.output)
    check_output_dir(outdir, inputs + eval_files, cfg.overwrite)
    with atomic_directory(outdir) as stage:
        run = _Run(cfg, inputs, eval_files, stage, progress)
        card = run.execute()
    card["output"] = str(outdir)
    return PrepareResult(outdir, card)


class _Run:
    def __init__(self, cfg: PrepareConfig, inputs: list[str], eval_files: list[str],
                 stage: Path, progress: Progress | None) -> None:
        self.cfg, self.inputs, self.eval_files, self.stage = cfg, inputs, eval_files, stage
        self.progress = progress or (lambda stage, n: None)
        self.work = stage / ".work"
        self.work.mkdir()
        self.reports = stage / "reports"
        self.ledger = Ledger(self.reports, cfg.strict, len(inputs))
        self.label_conflicts = 0
        self.read = 0
        self.sources: list[dict[str, Any]] = [{"path": s, "rows_read": 0} for s in inputs]
        self.kept = _Kept(WhereLog(inputs))
        self.labels, self.strata = CodeBook(), CodeBook()
        self.fmt = "" if cfg.format == "auto" else cfg.format
        self.stratify_field = self._stratify_field()
        self.spans: SpanChecker | None = None
        self.notes: list[str] = []

    def _stratify_field(self) -> str | None:
        by = self.cfg.split.stratify_by
        if by == "auto":
            return self.cfg.label_field if self.fmt == "classification" else None
        return by

    # ---------------------------------------------------------------- pass 1
    def execute(self) -> dict[str, Any]:
        cfg = self.cfg
        stream = self._items()
        stream, buffered = self._read_ahead(stream)
        if not self.fmt:
            self.fmt = self._detect(buffered)
        if self.fmt in SPAN_FORMATS:
            self._span_task([item.data for _, item in buffered if isinstance(item, Row)])
            cfg = self.cfg
        if cfg.split.stratify_by == "auto":
            self.stratify_field = cfg.label_field if self.fmt == "classification" else None
        self.cleaner = Cleaner(cfg.clean, self.fmt)
        self.scrubber = PiiScrubber(cfg.pii.kinds, cfg.pii.placeholder) if cfg.pii.enabled else None
        self.exact = ExactDeduper() if cfg.dedup.exact else None
        self.near = (NearDupIndex(self.work / "signatures.u16", cfg.dedup.threshold,
                                  cfg.dedup.num_perm, cfg.dedup.ngram, cfg.dedup.seed)
                     if cfg.dedup.near else None)
        with JsonlWriter(self.work / "spool.jsonl") as self.spool:
            for si, item in stream:
                self._pass1_row(si, item)
                if self.read % 10000 == 0:
                    self.progress("read", self.read)
        self.progress("read", self.read)
        self.exact = None  # its hash table (the largest pass-1 structure) is no longer needed
        if not self.kept.where and not self.read:
            raise DataError("the input holds no records", where=", ".join(self.inputs),
                            fix="point at files with at least one record")
        near = self._near_duplicates()
        split_of = self._assign(near)
        index, snippets = self._pass2(near, split_of)
        counts = self._pass3(split_of, index)
        self.ledger.close()
        if not any(w.count for w in counts["writers"].values()):
            self._nothing_left()
        clusters = (write_clusters(near, self.kept.where, snippets,
                                   self.reports / "near_duplicates.jsonl")
                    if near is not None else (0, []))
        return self._finish(near, clusters, index, counts)

    def _nothing_left(self) -> None:
        """An empty result is a mistake worth stopping for: say where the rows went."""
        reasons = dict(self.ledger.reject_reasons)
        reasons.update({f"removed by {k}": v for k, v in self.ledger.removed_by_step.items()})
        first = self.ledger.reject_examples[0] if self.ledger.reject_examples else None
        raise DataError(f"no rows left after preparing {self.read:,} input rows",
                        where=first["where"] if first else ", ".join(self.inputs),
                        got=reasons,
                        fix="check the format and fields of the input (first problem: "
                        f"{first['message'] if first else 'none'}); use --format or "
                        "--label-field if detection guessed wrong, or relax the filters")

    def _items(self) -> Iterator[tuple[int, Row | BadRow]]:
        for si, source in enumerate(self.inputs):
            for item in iter_source(source):
                yield si, item

    def _read_ahead(self, stream: Iterator[tuple[int, Row | BadRow]]
                    ) -> tuple[Iterator[tuple[int, Row | BadRow]], list[tuple[int, Row | BadRow]]]:
        """Read ahead up to 1,000 rows (format and tag-scheme detection), then put them back."""
        buffered: list[tuple[int, Row | BadRow]] = []
        for pair in stream:
            buffered.append(pair)
            if len(buffered) >= _DETECT_ROWS:
                break

        def chained() -> Iterator[tuple[int, Row | BadRow]]:
            yield from buffered
            yield from stream

        return chained(), buffered

    def _span_task(self, rows: list[dict[str, Any]]) -> None:
        """NER / QA rows: check them as training reads them. QA questions on one context
        stay in one split (``group_by: context`` unless set) and skip near-deduplication
        (questions on one passage share its text, so they would look alike)."""
        self.spans = SpanChecker(self.fmt, tags_config(self.cfg.token_classification))
        self.spans.detect(rows)
        if self.fmt != "extractive_qa":
            return
        split, dedup = self.cfg.split, self.cfg.dedup
        if split.group_by is None:
            split = split.model_copy(update={"group_by": "context"})
            self.notes.append("questions on one context are kept in one split "
                              "(split.group_by: context)")
        if dedup.near:
            dedup = dedup.model_copy(update={"near": False})
            self.notes.append("near-duplicate detection is off for extractive_qa: questions "
                              "on one context share its text (exact duplicates are removed)")
        self.cfg = self.cfg.model_copy(update={"split": split, "dedup": dedup})

    def _detect(self, buffered: list[tuple[int, Row | BadRow]]) -> str:
        """The majority format of the rows read ahead."""
        rows = [item.data for _, item in buffered if isinstance(item, Row)]
        fmt = majority_format(rows, self.cfg.label_field)
        if fmt is None:
            first = next((item for _, item in buffered if isinstance(item, Row)), None)
            raise DataError("cannot recognise the record format", where=first.where if first
                            else self.inputs[0], got=sorted(first.data) if first else None,
                            fix="records need fields of one format: instruction/output, "
                            "messages, prompt/completion, prompt/chosen/rejected, text(+label), "
                            "tokens/ner_tags, context/question/answers; or name it with --format")
        return fmt

    def _pass1_row(self, si: int, item: Row | BadRow) -> None:
        self.read += 1
        self.sources[si]["rows_read"] += 1
        if isinstance(item, BadRow):
            self.ledger.reject(si, item.where, item.reason, item.message, item.got, item.to_error())
            return
        data, where = item.data, item.where
        problem = (self.spans.check(item) if self.spans is not None
                   else check_row(data, self.fmt, self.cfg.label_field))
        if problem is not None:
            err = DataError(problem.message, where=f"{where} (field '{problem.field}')",
                            got=problem.value, fix=problem_fix(problem.reason, self.fmt,
                                                               self.cfg.label_field,
                                                               problem.value))
            self.ledger.reject(si, where, problem.reason,
                               f"{problem.message} (field '{problem.field}')", problem.value, err)
            return
        group_value = None
        if self.cfg.split.group_by:
            group_value = get_path(data, self.cfg.split.group_by)
            if group_value is None or group_value == "":
                field_name = self.cfg.split.group_by
                err = DataError(f"group field '{field_name}' has no value", where=f"{where} "
                                f"(field '{field_name}')", got=sorted(data),
                                fix="give every row a value for the --group-by field")
                self.ledger.reject(si, where, "missing_group",
                                   f"group field '{field_name}' has no value", None, err)
                return
        data = canonical_roles(data, self.fmt)  # developer → system, as training reads it
        data, reason, detail = self.cleaner.clean_row(data)
        if reason:
            self.ledger.remove(where, "clean", reason, detail=detail)
            return
        if self.scrubber is not None:
            self.scrubber.begin_row()
            data = map_texts(data, self.fmt, self.scrubber.scrub_text)
            self.scrubber.end_row()
        keys = [(name, exact_key(text)) for name, text in iter_texts(data, self.fmt)]
        content = hash64("\x1e".join(f"{name}\x1f{key}" for name, key in keys))
        index = len(self.kept.where)
        label = data.get(self.cfg.label_field) if self.fmt == "classification" else None
        # NER / QA: what the row says about its text (its tags; its answers), as a hash, so
        # the same words or question with other tags or answers counts as a label conflict
        answer = hash64(self.spans.answer_key(data)) if self.spans is not None else None
        if self.exact is not None:
            first = self.exact.check(content, index)
            if first is not None:
                extra: dict[str, Any] = {"duplicate_of": self.kept.where[first]}
                if label is not None and self.labels.code(label) != self.kept.label[first]:
                    self.label_conflicts += 1
                    extra["label_conflict"] = [self.labels.name(self.kept.label[first]),
                                               self.labels.name(self.labels.code(label))]
                if answer is not None and answer != self.kept.answer[first]:
                    self.label_conflicts += 1
                    extra["label_conflict"] = ("the kept row has other "
                                               + ("tags" if self.fmt == "token_classification"
                                                  else "answers"))
                self.ledger.remove(where, "exact_dedup", "exact_duplicate", **extra)
                return
        kept = self.kept
        kept.where.append(si, where)
        kept.content.append(content)
        kept.label.append(self.labels.code(label) if label is not None else -1)
        if answer is not None:
            kept.answer.append(answer)
        if self.stratify_field:
            kept.stratum.append(self.strata.code(get_path(data, self.stratify_field)))
        if group_value is not None:
            # "Who is X?" and "who is x ?" are the same group: compare strings normalised
            key = (exact_key(group_value) if isinstance(group_value, str)
                   else json.dumps(group_value, sort_keys=True, default=str))
            kept.group.append(hash64(key))
        if self.near is not None:
            self.near.add(" ".join(near_from_exact(key) for _, key in keys))
        self.spool.write(data)

    # ------------------------------------------------------ between passes
    def _near_duplicates(self) -> NearDupResult | None:
        if self.near is None:
            return None
        self.progress("near-duplicates", len(self.kept.where))
        result = self.near.find()
        for j in np.nonzero(result.drop)[0].tolist():
            self.ledger.remove(self.kept.where[j], "near_dedup", "near_duplicate",
                               duplicate_of=self.kept.where[int(result.kept_of[j])],
                               similarity=round(float(result.similarity[j]), 3))
        return result

    def _assign(self, near: NearDupResult | None) -> np.ndarray:
        n = len(self.kept.where)
        alive = np.ones(n, dtype=bool) if near is None else ~near.drop
        split_of = np.full(n, -1, dtype=np.int8)
        idx = np.nonzero(alive)[0]
        kept = self.kept
        content = np.frombuffer(kept.content, dtype=np.uint64)[idx] if n else np.empty(0, np.uint64)
        strata = np.frombuffer(kept.stratum, dtype=np.int32)[idx] if len(kept.stratum) else None
        groups = np.frombuffer(kept.group, dtype=np.uint64)[idx] if len(kept.group) else None
        ratios = list(self.cfg.split.ratios().values())
        split_of[idx] = assign_splits(content, ratios, self.cfg.split.seed, strata=strata,
                                      groups=groups)
        return split_of

    # ---------------------------------------------------------------- pass 2
    def _spool_rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        with (self.work / "spool.jsonl").open("r", encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                yield i, json.loads(line)

    def _pass2(self, near: NearDupResult | None,
               split_of: np.ndarray) -> tuple[EvalIndex | None, dict[int, str]]:
        cc = self.cfg.contamination
        wanted: set[int] = set()
        if near is not None and near.drop.any():
            dropped = np.nonzero(near.drop)[0]
            wanted = set(dropped.tolist()) | set(near.kept_of[dropped].tolist())
        index = EvalIndex(cc.ngram, cc.min_exact_words) if cc.enabled else None
        has_eval = bool((split_of >= 1).any()) or bool(self.eval_files)
        snippets: dict[int, str] = {}
        if (index is not None and (split_of >= 1).any()) or wanted:
            for i, data in self._spool_rows():
                if i in wanted:
                    texts = (t for _, t in iter_texts(data, self.fmt))
                    snippets[i] = card_mod.short(" | ".join(texts))
                if index is not None and split_of[i] >= 1:
                    index.add((t for _, t in iter_texts(data, self.fmt)), self.kept.where[i],
                              SPLITS[split_of[i]])
        self.eval_sources = ([index_eval_file(index, f, self.cfg.label_field, self.cfg.strict)
                              for f in self.eval_files] if index is not None else [])
        return (index if has_eval else None), snippets

    # ---------------------------------------------------------------- pass 3
    def _pass3(self, split_of: np.ndarray, index: EvalIndex | None) -> dict[str, Any]:
        names = [s for s, r in self.cfg.split.ratios().items() if r > 0]
        writers = {s: JsonlWriter(self.work / f"{s}.jsonl") for s in names}
        label_counts: dict[str, Counter[str]] = {s: Counter() for s in names}
        schema: dict[str, Counter[str]] = {}
        contam = JsonlWriter(self.reports / "contamination.jsonl")
        flagged: Counter[str] = Counter()
        flagged_kind: Counter[str] = Counter()
        examples: list[dict[str, Any]] = []
        remove = self.cfg.contamination.remove
        batch: list[tuple[int, dict[str, Any]]] = []

        def flush() -> None:
            train = [(i, d) for i, d in batch if split_of[i] == 0]
            hits: dict[int, Hit | None] = {}
            if index is not None and train:
                found = index.check_many([list(iter_texts(d, self.fmt)) for _, d in train])
                hits = {i: h for (i, _), h in zip(train, found, strict=True)}
            for i, data in batch:
                hit = hits.get(i)
                if hit is not None:
                    flagged[hit.eval_source] += 1
                    flagged_kind[hit.kind] += 1
                    record = {"where": self.kept.where[i], "split": "train", **hit.as_dict(),
                              "removed": remove}
                    contam.write(record)
                    if len(examples) < 10:
                        examples.append(record)
                    if remove:
                        self.ledger.remove(self.kept.where[i], "decontaminate",
                                           f"{hit.kind}_overlap", eval_where=hit.eval_where)
                        continue
                split = SPLITS[split_of[i]]
                writers[split].write(data)
                if self.spans is not None:
                    self.spans.count_split(split, data)
                for key, value in data.items():
                    schema.setdefault(key, Counter())[type_name(value)] += 1
                if self.kept.label[i] >= 0:
                    label_counts[split][self.labels.name(self.kept.label[i])] += 1
            batch.clear()

        for i, data in self._spool_rows():
            if split_of[i] < 0:
                continue
            batch.append((i, data))
            if len(batch) >= _BATCH:
                flush()
                self.progress("write", i + 1)
        flush()
        for w in writers.values():
            w.close()
        contam.close()
        return {"writers": writers, "labels": label_counts, "schema": schema,
                "flagged": flagged, "flagged_kind": flagged_kind, "examples": examples}

    # ----------------------------------------------------------------- output
    def _finish(self, near: NearDupResult | None, clusters: tuple[int, list[dict[str, Any]]],
                index: EvalIndex | None, counts: dict[str, Any]) -> dict[str, Any]:
        writers: dict[str, JsonlWriter] = counts["writers"]
        files: dict[str, Path] = {}
        for split, writer in writers.items():
            if self.cfg.output_format == "parquet":
                dest = self.stage / f"{split}.parquet"
                jsonl_to_parquet(writer.path, dest)
            else:
                dest = self.stage / f"{split}.jsonl"
                shutil.move(str(writer.path), dest)
            files[split] = dest
        shutil.rmtree(self.work, ignore_errors=True)
        for src, rejected in zip(self.sources, self.ledger.rejected_per_source, strict=True):
            src.update(rejected=rejected, **describe_source(str(src["path"])))
        ledger = self.ledger
        facts = card_mod.RunFacts(
            cfg=self.cfg, fmt=self.fmt, sources=self.sources, eval_sources=self.eval_sources,
            read=self.read, reject_reasons=dict(ledger.reject_reasons),
            reject_examples=ledger.reject_examples, removed_by_step=dict(ledger.removed_by_step),
            clean=self.cleaner.stats.as_dict(),
            pii=self.scrubber.stats.as_dict() if self.scrubber else None,
            label_conflicts=self.label_conflicts,
            near={"clusters": clusters[0], "largest": clusters[1],
                  "candidate_pairs": near.candidate_pairs, "verified_pairs": near.verified_pairs,
                  "bands": self.near.bands, "rows_per_band": self.near.rows}
            if near is not None and self.near is not None else None,
            contamination=({"eval_rows": index.rows_by_source if index else {},
                            "flagged_by_source": dict(counts["flagged"]),
                            "flagged_by_kind": dict(counts["flagged_kind"]),
                            "examples": counts["examples"]}
                           if self.cfg.contamination.enabled else None),
            split_files=files, split_counts={s: w.count for s, w in writers.items()},
            labels=counts["labels"] if self.fmt == "classification" else None,
            schema={k: dict(v) for k, v in counts["schema"].items()},
            stratify_field=self.stratify_field,
        )
        card = card_mod.build_card(facts)
        if self.spans is not None:
            card[self.fmt] = {**self.spans.report(length_stats), "splits": self.spans.splits(),
                              "notes": self.notes}
        card_mod.write_card(self.stage, card)
        return card
