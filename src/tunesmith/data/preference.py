"""Preference pairs for DPO: read, normalise, tokenize with the chat template and label masks.

Accepted records:

* ``prompt`` / ``chosen`` / ``rejected`` (field names configurable under ``dpo:``). The
  prompt is a string or a list of chat messages; each response is a string, one assistant
  message or a list of messages. String prompt + string responses are raw text (as TRL):
  prompt tokens are masked, the response and EOS are trained. Anything with messages goes
  through the chat template: earlier assistant turns of the prompt are masked, only the
  final response is scored.
* OpenAI's preference fine-tuning format: ``input.messages`` with ``preferred_output`` and
  ``non_preferred_output`` (lists of assistant messages).

Both sides are encoded by :class:`tunesmith.data.templates.Encoder` and pass the same
template / label-mask checks as SFT data, so the scored tokens are exactly the response
(and its closing EOS).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config.schema import DataConfig, DPOConfig
from tunesmith.data.formats import Example, check_messages
from tunesmith.data.pipeline import SplitStats, split_off
from tunesmith.data.readers import Row, read_rows
from tunesmith.data.templates import (
    IGNORE,
    Encoded,
    Encoder,
    check_encoded,
    raise_on_failures,
    too_long_fix,
)
from tunesmith.errors import DataError
from tunesmith.io import file_sha256

OPENAI_FIELDS = ("input", "preferred_output", "non_preferred_output")


@dataclass
class PrefEncoded:
    chosen: Encoded
    rejected: Encoded
    where: str

    def __len__(self) -> int:
        return max(len(self.chosen.input_ids), len(self.rejected.input_ids))


@dataclass
class PrefData:
    train: list[PrefEncoded]
    validation: list[PrefEncoded]
    stats: dict[str, SplitStats] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """Hash of every token id and label of both splits (keys the reference cache)."""
        h = hashlib.sha256()
        for split in (self.train, self.validation):
            h.update(b"|split|")
            for p in split:
                for enc in (p.chosen, p.rejected):
                    h.update(repr((enc.input_ids, enc.labels)).encode())
        return h.hexdigest()[:24]


def detect_preference_format(row: Row, dcfg: DPOConfig) -> str:
    """``openai`` or ``pairs``; a DataError naming the fields otherwise."""
    keys = set(row.data)
    if all(k in keys for k in OPENAI_FIELDS):
        return "openai"
    needed = (dcfg.prompt_field, dcfg.chosen_field, dcfg.rejected_field)
    if all(k in keys for k in needed):
        return "pairs"
    raise DataError("cannot read this record as a preference pair", where=row.where,
                    got=sorted(keys), fix=f"records need `{needed[0]}`, `{needed[1]}` and "
                    f"`{needed[2]}` (names set by dpo.prompt_field/chosen_field/rejected_field),"
                    " or OpenAI's `input`, `preferred_output`, `non_preferred_output`")


def to_pair(row: Row, fmt: str, dcfg: DPOConfig, system_prompt: str | None = None
            ) -> tuple[Example, Example]:
    """The (chosen, rejected) examples of one record."""
    d = row.data
    if fmt == "openai":
        inp = d["input"]
        if not isinstance(inp, dict) or "messages" not in inp:
            raise DataError("`input` must be an object with `messages`",
                            where=f"{row.where} field input", got=inp,
                            fix='write "input": {"messages": [{"role": "user", ...}]}')
        prompt, chosen, rejected = inp["messages"], d["preferred_output"], \
            d["non_preferred_output"]
        names = ("input.messages", "preferred_output", "non_preferred_output")
    else:
        names = (dcfg.prompt_field, dcfg.chosen_field, dcfg.rejected_field)
        for key in names:
            if key not in d:
                raise DataError(f"preference record is missing the field `{key}`",
                                where=row.where, got=sorted(d),
                                fix=f"give every record `{'`, `'.join(names)}`")
        prompt, chosen, rejected = (d[k] for k in names)
    if _as_text(chosen) == _as_text(rejected):
        raise DataError("chosen and rejected responses are identical, so the pair teaches "
                        "nothing", where=f"{row.where} field {names[1]}", got=chosen,
                        fix="remove the record or fix one of the responses")
    if all(isinstance(x, str) for x in (prompt, chosen, rejected)):
        for name, value in zip(names[1:], (chosen, rejected)):
            if not value.strip():
                raise DataError("response is empty", where=f"{row.where} field {name}",
                                got=value, fix="give both responses text")
        return (Example("completion", row.where, prompt=prompt, completion=chosen),
                Example("completion", row.where, prompt=prompt, completion=rejected))
    context = _prompt_messages(prompt, row.where, names[0], system_prompt)
    return (_chat(context, chosen, row.where, names[1]),
            _chat(context, rejected, row.where, names[2]))


def response_example(prompt: Any, response: Any, where: str, names: tuple[str, str],
                     system_prompt: str | None = None) -> Example:
    """One (prompt, response) record as an Example, read as one side of a pair is: raw text
    when both are strings, else through the chat template (KTO's unpaired rows)."""
    if isinstance(prompt, str) and isinstance(response, str):
        if not response.strip():
            raise DataError("response is empty", where=f"{where} field {names[1]}",
                            got=response, fix="give the response text, or drop the record")
        return Example("completion", where, prompt=prompt, completion=response)
    context = _prompt_messages(prompt, where, names[0], system_prompt)
    return _chat(context, response, where, names[1])


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value.strip()
    return repr(value)


def _prompt_messages(prompt: Any, where: str, name: str, system_prompt: str | None
                     ) -> list[dict[str, Any]]:
    if isinstance(prompt, str):
        msgs = [{"role": "user", "content": prompt}]
    else:
        if not isinstance(prompt, list) or not prompt:
            raise DataError("the prompt must be a string or a non-empty list of messages",
                            where=f"{where} field {name}", got=prompt,
                            fix='e.g. [{"role": "user", "content": "..."}]')
        # the prompt's own assistant turns are context: checked, never scored
        msgs = [dict(m, weight=0) if isinstance(m, dict) and m.get("role") == "assistant"
                else m for m in prompt]
    if system_prompt and msgs[0].get("role") != "system":
        msgs = [{"role": "system", "content": system_prompt}] + msgs
    return msgs


def _chat(context: list[dict[str, Any]], response: Any, where: str, name: str) -> Example:
    if isinstance(response, str):
        reply = [{"role": "assistant", "content": response}]
    elif isinstance(response, dict):
        reply = [response]
    else:
        reply = response
    if not isinstance(reply, list) or not reply or any(
            not isinstance(m, dict) or m.get("role") != "assistant" for m in reply):
        raise DataError("a response must be text, an assistant message or a list of them",
                        where=f"{where} field {name}", got=response,
                        fix='e.g. "Sure." or [{"role": "assistant", "content": "Sure."}]')
    msgs = check_messages(context + [{"role": "assistant", "content": m.get("content"),
                                       "weight": 1} for m in reply], where, name)
    return Example("chat", where, messages=msgs)


def encode_preference_file(path: str, dcfg: DPOConfig, data: DataConfig, encoder: Encoder,
                           limit: int | None = None) -> tuple[list[PrefEncoded], SplitStats]:
    """Tokenize every pair of a file; pairs whose prompt fills ``max_length`` are dropped."""
    digest = file_sha256(path) if Path(path).is_file() else ""
    stats = SplitStats(source=path, sha256=digest)
    rows = read_rows(path, limit=limit)
    stats.rows = len(rows)
    fmt = detect_preference_format(rows[0], dcfg)
    stats.format = "openai_preference" if fmt == "openai" else "preference"
    pairs, bad = [], []
    for row in rows:
        try:
            pairs.append(to_pair(row, fmt, dcfg, data.system_prompt))
        except DataError as exc:
            bad.append(exc)
    if bad:
        first = bad[0]
        raise DataError(f"{len(bad)} of {len(rows)} preference records are invalid; the "
                        f"first: {first.what}", where=first.where, got=first.got, fix=first.fix)
    encoded = [(encoder.encode(c), encoder.encode(r)) for c, r in pairs]
    raise_on_failures(check_encoded([e for pair in encoded for e in pair], encoder), path)
    kept = []
    for c, r in encoded:
        fc, fr = encoder.fit(c), encoder.fit(r)
        if fc is None or fr is None:
            stats.dropped_too_long += 1
            continue
        stats.truncated += int(fc.truncated or fr.truncated)
        for e in (fc, fr):
            trained = sum(1 for t in e.labels if t != IGNORE)
            stats.trained_tokens += trained
            stats.masked_tokens += len(e.labels) - trained
        kept.append(PrefEncoded(fc, fr, c.where))
    stats.kept = len(kept)
    if not kept:
        raise DataError("no preference pair is left after applying data.max_length",
                        where=path, got=f"{stats.dropped_too_long} pairs too long",
                        fix=too_long_fix("data.max_length", data.max_length,
                                         data.truncation))
    return kept, stats


def prepare_preference(data: DataConfig, dcfg: DPOConfig, tokenizer: Any, seed: int = 42
                       ) -> PrefData:
    """Tokenized train and validation pairs (``data.validation`` or ``data.val_split``)."""
    if not data.train:
        raise DataError("no training data given", where="data.train",
                        fix="set data.train: path/to/pairs.jsonl (prompt/chosen/rejected)")
    encoder = Encoder(tokenizer, data.max_length, False, data.truncation)
    train, tstats = encode_preference_file(data.train, dcfg, data, encoder, data.max_examples)
    stats = {"train": tstats}
    val: list[PrefEncoded] = []
    if data.validation:
        val, stats["validation"] = encode_preference_file(data.validation, dcfg, data, encoder)
    elif data.val_split > 0:
        train, val = split_off(train, data.val_split, seed)
    return PrefData(train, val, stats)
