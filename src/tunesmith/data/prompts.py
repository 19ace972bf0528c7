"""Prompts for online RL (``task: grpo``): read, normalised to chat messages, tokenized with
the chat template's generation prompt, checked against the window.

Each row of the prompts file keeps all its fields: the graders read their references from
them (``answer``, ``target``, ...). The prompt is ``grpo.prompt_field`` (a string or a list
of messages) or, for rows in the ``messages`` training format, the messages without a final
assistant turn (that turn is the reference: it stays in the row as ``reference``).

A prompt whose tokens leave fewer than ``grpo.max_new_tokens`` of ``data.max_length`` is
dropped and counted; when none is left the run stops with a DataError saying which limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config.schema import DataConfig, GRPOConfig
from tunesmith.data.pipeline import SplitStats, split_off
from tunesmith.data.readers import read_rows
from tunesmith.errors import DataError
from tunesmith.io import file_sha256


@dataclass
class PromptRow:
    ids: list[int]  # the rendered prompt, generation header included
    row: dict[str, Any]  # the whole record, for the graders
    where: str

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class PromptData:
    train: list[PromptRow]
    validation: list[PromptRow]
    stats: dict[str, SplitStats] = field(default_factory=dict)


def prompt_messages(data: dict[str, Any], name: str, where: str) -> list[dict[str, Any]]:
    """The chat messages of one prompt record (see the module docstring)."""
    if name in data:
        prompt = data[name]
    elif "messages" in data and isinstance(data["messages"], list):
        prompt = list(data["messages"])
        if prompt and isinstance(prompt[-1], dict) and prompt[-1].get("role") == "assistant":
            data.setdefault("reference", prompt.pop().get("content"))
    else:
        raise DataError(f"prompt record has no field `{name}`", where=where, got=sorted(data),
                        fix="set grpo.prompt_field to the field holding the prompt")
    if isinstance(prompt, str) and prompt.strip():
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and prompt and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role")
            for m in prompt):
        return [{"role": m["role"], "content": m["content"]} for m in prompt]
    raise DataError("the prompt must be a non-empty string or a list of messages",
                    where=f"{where} field {name}", got=prompt,
                    fix='e.g. "What is 2+3?" or [{"role": "user", "content": "..."}]')


def encode_prompt(tokenizer: Any, messages: list[dict[str, Any]], system: str | None
                  ) -> list[int]:
    """Token ids of the prompt with the generation header (plain text without a template)."""
    if system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}] + messages
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)  # a BatchEncoding
    return tokenizer("\n".join(m["content"] for m in messages))["input_ids"]


def encode_prompt_file(path: str, gcfg: GRPOConfig, data: DataConfig, tokenizer: Any,
                       limit: int | None = None) -> tuple[list[PromptRow], SplitStats]:
    stats = SplitStats(source=path, sha256=file_sha256(path) if Path(path).is_file() else "")
    rows = read_rows(path, limit=limit)
    stats.rows, stats.format = len(rows), "prompts"
    window = data.max_length - gcfg.max_new_tokens
    if window < 1:
        raise DataError("grpo.max_new_tokens leaves no room for a prompt in data.max_length",
                        where="grpo.max_new_tokens", got=f"{gcfg.max_new_tokens} of "
                        f"{data.max_length}", fix="raise data.max_length or lower "
                        "grpo.max_new_tokens")
    kept = []
    for row in rows:
        record = dict(row.data)
        ids = encode_prompt(tokenizer, prompt_messages(record, gcfg.prompt_field, row.where),
                            data.system_prompt)
        if len(ids) > window:
            stats.dropped_too_long += 1
            continue
        kept.append(PromptRow(ids, record, row.where))
    stats.kept = len(kept)
    if not kept:
        raise DataError("every prompt is longer than the window left for it", where=path,
                        got=f"{stats.dropped_too_long} prompts over {window} tokens "
                        f"(data.max_length {data.max_length} - grpo.max_new_tokens "
                        f"{gcfg.max_new_tokens})", fix="raise data.max_length, lower "
                        "grpo.max_new_tokens, or shorten the prompts")
    return kept, stats


def prepare_prompts(data: DataConfig, gcfg: GRPOConfig, tokenizer: Any, seed: int = 42
                    ) -> PromptData:
    """Tokenized train and validation prompts (``data.validation`` or ``data.val_split``)."""
    if not data.train:
        raise DataError("no prompts given", where="data.train",
                        fix="set data.train: path/to/prompts.jsonl (a `prompt` per row, with "
                        "the fields the graders read)")
    train, tstats = encode_prompt_file(data.train, gcfg, data, tokenizer, data.max_examples)
    stats = {"train": tstats}
    val: list[PromptRow] = []
    if data.validation:
        val, stats["validation"] = encode_prompt_file(data.validation, gcfg, data, tokenizer)
    elif data.val_split > 0:
        train, val = split_off(train, data.val_split, seed)
    return PromptData(train, val, stats)
