"""The model pool: every served name mapped to a loaded model, LoRA adapters sharing a base.

A served name points at a causal LM (full model, or a LoRA adapter over a base), a
classifier (``/v1/classify``) or a span model: token classification or extractive QA
(``/v1/extract``). Adapters over the same base weights share one ``PeftModel`` in memory; a
request picks its adapter with ``set_adapter`` (or runs the bare base inside
``disable_adapter()``), under that base's lock, since the active adapter is state of the
shared model. Names not given at startup are looked up in ``<data_dir>/models/<name>/``,
where finished fine-tuning jobs put their run directories, and loaded on first use.

A served name can be an *alias* (``<data_dir>/aliases.json``, written by ``tunesmith
promote``): the request naming it loads the alias's model in its place, so a running server
switches to a promoted model without a restart, under the same name. The previous model's
weights are released unless another name still uses them (a LoRA adapter stays loaded in its
shared base until restart: it is small, and a request may still be using it).

Generation goes through one continuous-batching scheduler per base (serve/api/scheduler.py):
requests for the base and for every adapter over it decode together, each row with its own
adapter, instead of taking the base's lock in turn. The lock is still what adapter loading
and the scheduler's forward calls share.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.device import resolve_precision
from tunesmith.errors import ModelError
from tunesmith.inference.generate import eos_ids
from tunesmith.inference.predict import load_predictor
from tunesmith.inference.spans import load_span_predictor, span_task
from tunesmith.models.artifacts import (
    ADAPTER_CONFIG,
    adapter_base,
    model_kind,
    resolve_artifact,
)
from tunesmith.models.load import load_causal_lm, load_tokenizer
from tunesmith.models.registry import EMBEDDED, resolve_model_dir
from tunesmith.serve.api.aliases import AliasReader
from tunesmith.serve.api.decode import DecodeParams, DecodeResult, Delta
from tunesmith.serve.api.llamacpp import LlamaCppEngine, LlamaCppHandle, check_installed
from tunesmith.serve.api.scheduler import Job, Scheduler
from tunesmith.serve.api.upstream import UpstreamHandle, check_reachable, load_upstream_handle
from tunesmith.serve.paths import list_fine_tuned, resolve_model_name
from tunesmith.serve.settings import Limits, ServeSettings, parse_named

log = logging.getLogger("tunesmith.serve")


@dataclass
class BaseGroup:
    """One set of weights in memory (plus the adapters loaded over it) and its lock."""

    key: str
    model: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    adapters: dict[str, str] = field(default_factory=dict)  # served name → peft adapter name
    limits: Limits = field(default_factory=Limits)
    _scheduler: Scheduler | None = None

    @property
    def scheduler(self) -> Scheduler:
        """This base's continuous-batching scheduler (its thread starts on first use)."""
        if self._scheduler is None:
            self._scheduler = Scheduler(self, self.limits)
        return self._scheduler


@dataclass
class LMHandle:
    """A servable causal LM: its group, adapter (None: the base itself) and tokenizer."""

    name: str
    source: str
    group: BaseGroup
    adapter: str | None
    tokenizer: Any
    context_length: int
    created: int = 0
    kind: str = "lm"

    @contextlib.contextmanager
    def active(self) -> Iterator[Any]:
        """Hold the base's lock with this model's adapter selected; yields the model."""
        with self.group.lock:
            model = self.group.model
            if not hasattr(model, "peft_config"):
                yield model
            elif self.adapter is None:
                with model.disable_adapter():
                    yield model
            else:
                model.set_adapter(self.adapter)
                yield model

    def eos_ids(self) -> list[int]:
        return eos_ids(self.group.model, self.tokenizer)

    def check_capacity(self) -> None:
        """429 now (before a stream starts) when the base's queue is full."""
        self.group.scheduler.check_capacity()

    def job(self, ids: list[int], params: DecodeParams, cancel: threading.Event | None = None,
            stats: dict[str, int] | None = None) -> Job:
        return Job(ids, params, self.adapter, self.tokenizer, set(self.eos_ids()),
                   cancel or threading.Event(), stats if stats is not None else {})

    def stream(self, ids: list[int], params: DecodeParams, cancel: threading.Event,
               stats: dict[str, int]) -> Iterator[Delta]:
        """Decode one prompt in the base's running batch; its deltas as they form."""
        return self.group.scheduler.stream(self.job(ids, params, cancel, stats))

    def generate(self, prompts: list[tuple[list[int], DecodeParams]]) -> list[DecodeResult]:
        """Non-streamed: every prompt submitted at once (they batch with each other too)."""
        sched = self.group.scheduler
        jobs = [self.job(ids, prm) for ids, prm in prompts]
        try:
            for job in jobs:
                sched.submit(job)
            return [collect(sched.stream(job, submitted=True), job) for job in jobs]
        finally:
            for job in jobs:  # an error (or a refused submit) leaves none running
                job.cancel.set()


@dataclass
class ClassifierHandle:
    name: str
    source: str
    predictor: Any
    created: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    kind: str = "classifier"


@dataclass
class SpanHandle(ClassifierHandle):
    """An entity (``token_classification``) or answer (``extractive_qa``) model; its kind
    is the task. One forward pass at a time under its lock, like a classifier."""

    kind: str = "token_classification"


Handle = LMHandle | ClassifierHandle | SpanHandle | UpstreamHandle | LlamaCppHandle
# each kind of handle: what it is and the route serving it (a request to another names it)
ENDPOINTS = {"lm": ("text-generation model", "/v1/chat/completions or /v1/completions"),
             "classifier": ("classifier", "/v1/classify"),
             "token_classification": ("entity (token-classification) model", "/v1/extract"),
             "extractive_qa": ("question-answering model", "/v1/extract")}
ENGINES = ("builtin", "llamacpp", "upstream")


def check_engine(settings: ServeSettings) -> None:
    """A clear error, with the fix, when ``settings.engine`` cannot run here."""
    if settings.engine not in ENGINES:
        raise ModelError("unknown --engine", where="--engine", got=settings.engine,
                         fix="use builtin, llamacpp or upstream")
    if settings.engine == "upstream":
        if not settings.upstream_url:
            raise ModelError("--engine upstream needs the server's URL", where="--engine",
                             fix="add --upstream-url http://HOST:PORT (an OpenAI-compatible "
                             "server: vllm serve, llama-server, another tunesmith serve)")
        check_reachable(settings.upstream_url)
    if settings.engine == "llamacpp":
        check_installed()


def served_name(spec: str) -> str:
    """Default served name: an embedded or hub name as given, a directory by its run name."""
    if spec in EMBEDDED:
        return spec
    path = Path(spec).expanduser()
    if not path.exists():
        return spec
    path = path.resolve()
    if path.name in ("final", "best"):
        path = path.parent
    elif path.name.startswith("step-") and path.parent.name == "checkpoints":
        path = path.parent.parent
    return path.name


def _context_length(model: Any) -> int:
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def collect(deltas: Iterator[Delta], job: Job) -> DecodeResult:
    """The full text and finish reason of every choice of ``job`` from its deltas."""
    n = job.params.n
    texts, reasons = [""] * n, ["length"] * n
    for d in deltas:
        texts[d.index] += d.text
        reasons[d.index] = d.finish_reason or reasons[d.index]
    return DecodeResult(texts, reasons, job.stats.get("completion_tokens", 0))


class ModelPool:
    """Served names → handles; loads at startup (``add``) or lazily from the models dir."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.handles: dict[str, Handle] = {}
        self.groups: dict[str, BaseGroup] = {}
        self._load_lock = threading.RLock()
        self.aliases = AliasReader()
        self._promoted: dict[str, str] = {}  # served name → alias source now loaded for it
        self._given: dict[str, tuple[str, bool]] = {}  # name → (spec, adapter_only) as added
        self._adapter_ids = itertools.count()
        self._dtype = settings.dtype
        if self._dtype == "auto":
            self._dtype = "bfloat16" if resolve_precision("auto") == "bf16" else "float32"
        check_engine(settings)
        self.llamacpp = LlamaCppEngine(settings.extra.get("gguf_quant", "q8_0"),
                                       settings.max_queue) \
            if settings.engine == "llamacpp" else None

    # -- loading -------------------------------------------------------------------------
    def load_settings_models(self) -> None:
        """Load what the command line named: models (``NAME=PATH`` allowed) and adapters."""
        for spec in self.settings.models:
            name, path = parse_named(spec, "MODEL")
            self.add(name or served_name(path), path)
        for name, path in self.settings.adapters.items():
            self.add(name, path, adapter_only=True)

    def add(self, name: str, spec: str, adapter_only: bool = False) -> Handle:
        """Load ``spec`` (embedded name, checkpoint, run dir, hub id) and serve it as ``name``."""
        with self._load_lock:
            if name in self.handles:
                raise ModelError("two served models have the same name", where="serve",
                                 got=name, fix="give one of them another name with NAME=PATH")
            alias = self.aliases.get(self.settings.data_dir, name)  # promoted since: load that
            source = alias.get("source") if alias else None
            handle = self._build(name, source or spec, adapter_only and source is None)
            self.handles[name] = handle
            self._given[name] = (spec, adapter_only)
            if source is not None:
                self._promoted[name] = source
            log.info("serving %s (%s) from %s", name, handle.kind, handle.source)
            return handle

    def _build(self, name: str, spec: str, adapter_only: bool = False) -> Handle:
        """A handle for ``spec`` served as ``name`` (weights shared with loaded groups)."""
        with self._load_lock:
            src = resolve_artifact(spec)
            if adapter_only and isinstance(src, Path) and \
                    (src / "adapter" / ADAPTER_CONFIG).exists():
                src = src / "adapter"  # a LoRA run's final/: merged weights, adapter/ beside
            created = int(time.time())
            upstream = self.settings.engine == "upstream"
            task = span_task(spec) if isinstance(src, Path) else None
            if task is not None:  # before model_kind: span runs carry the classifier sidecar
                precision = "bf16" if self._dtype == "bfloat16" else "fp32"
                handle: Handle = SpanHandle(name, str(src), load_span_predictor(
                    str(spec), precision=precision), created, kind=task)
            elif isinstance(src, Path) and model_kind(src) == "classifier":
                handle = ClassifierHandle(name, str(src), load_predictor(str(spec)), created)
            elif upstream:  # tokenizer only: the upstream server holds the weights
                handle = load_upstream_handle(name, spec, str(self.settings.upstream_url),
                                              created)
            elif self.llamacpp is not None:  # the run's GGUF (and GGUF LoRA) in llama.cpp
                handle = self.llamacpp.handle(name, src, created)
            elif isinstance(src, Path) and (src / "adapter_config.json").exists():
                handle = self._add_adapter(name, src, created)
            elif adapter_only:
                raise ModelError("--adapter needs a LoRA run or adapter directory", where=name,
                                 got=str(src), fix="pass a run trained with method.type: lora, "
                                 "or serve a full model as a positional MODEL")
            else:
                key = str(Path(src).resolve()) if isinstance(src, Path) else str(src)
                group = self.groups.get(key)
                if group is None:
                    group = BaseGroup(key, load_causal_lm(src, dtype=self._dtype).eval(),
                                      limits=self.settings.limits())
                    self.groups[key] = group
                handle = LMHandle(name, str(src), group, None, load_tokenizer(src),
                                  _context_length(group.model), created)
            return handle

    def _add_adapter(self, name: str, src: Path, created: int) -> LMHandle:
        # deferred: peft is heavy and only this path needs it
        from peft import PeftModel

        base_src = resolve_model_dir(adapter_base(src))
        key = str(Path(base_src).resolve()) if isinstance(base_src, Path) else str(base_src)
        group = self.groups.get(key)
        if group is None:
            group = BaseGroup(key, load_causal_lm(base_src, dtype=self._dtype).eval(),
                              limits=self.settings.limits())
            self.groups[key] = group
        adapter = f"a{next(self._adapter_ids)}"  # unique even after a swap drops one
        with group.lock:  # a request may be generating with this model right now
            if hasattr(group.model, "peft_config"):
                group.model.load_adapter(str(src), adapter_name=adapter)
            else:
                group.model = PeftModel.from_pretrained(group.model, str(src),
                                                        adapter_name=adapter).eval()
            group.adapters[name] = adapter
        try:
            tok = load_tokenizer(src)
        except ModelError:  # an adapter saved without tokenizer files uses the base's
            tok = load_tokenizer(base_src)
        return LMHandle(name, str(src), group, adapter, tok, _context_length(group.model),
                        created)

    # -- lookup --------------------------------------------------------------------------
    def job_model_dir(self, name: str) -> Path | None:
        """A finished job's model (``ft:...``) or checkpoint (``ft:...:ckpt-step-N``) by name.

        Only names inside ``<data_dir>/models/`` resolve (serve/paths.py, shared with the
        jobs API), so a request can never load an arbitrary path.
        """
        return resolve_model_name(self.settings.data_dir, name)

    def get(self, name: str) -> Handle | None:
        """The handle serving ``name``, loading a finished job's model on first use.

        An alias (``tunesmith promote``) wins over everything else; when it names another
        model than the one loaded for ``name``, that model is loaded and swapped in now.
        """
        alias = self.aliases.get(self.settings.data_dir, name)
        if alias is not None or name in self._promoted:
            source = alias.get("source") if alias else None
            if source != self._promoted.get(name) or name not in self.handles:
                return self._swap(name)
        handle = self.handles.get(name)
        if handle is not None:
            return handle
        path = self.job_model_dir(name)
        spec = str(path) if path is not None else self._given_spec(name)
        if spec is None:
            return None
        with self._load_lock:
            if name in self.handles:
                return self.handles[name]
            return self.add(name, spec)

    def _given_spec(self, name: str) -> str | None:
        """The command line's model served as ``name`` when it was not loaded at startup
        (``settings.preload`` off): it loads on first use."""
        for spec in self.settings.models:
            served, path = parse_named(spec, "MODEL")
            if (served or served_name(path)) == name:
                return path
        return None

    def _swap(self, name: str) -> Handle | None:
        """Serve ``source`` as ``name`` (None: the alias is gone, back to what was given)."""
        with self._load_lock:
            alias = self.aliases.get(self.settings.data_dir, name)  # may have changed since
            source = alias.get("source") if alias else None
            if name in self.handles and self._promoted.get(name) == source:
                return self.handles[name]  # another request swapped it meanwhile
            if source is not None:
                try:
                    new: Handle | None = self._build(name, source)
                except (ModelError, OSError) as exc:
                    if name not in self.handles:
                        raise
                    log.error("alias %s → %s cannot be loaded, still serving %s: %s", name,
                              source, self.handles[name].source, exc)
                    return self.handles[name]  # retried on the next request
            elif name in self._given:
                new = self._build(name, *self._given[name])
            else:
                path = self.job_model_dir(name)
                new = self._build(name, str(path)) if path is not None else None
            old = self.handles.pop(name, None)
            if new is not None:
                self.handles[name] = new
                log.info("serving %s from %s (alias %s)", name, new.source,
                         "set" if source else "removed")
            if source is None:
                self._promoted.pop(name, None)
            else:
                self._promoted[name] = source
            self._release(old)
            return new

    def _release(self, old: Handle | None) -> None:
        """Drop ``old``'s base weights from the pool when no served name uses them any more."""
        if isinstance(old, LlamaCppHandle) and self.llamacpp is not None:
            self.llamacpp.release(old, self.handles.values())
        if not isinstance(old, LMHandle):
            return
        if old.adapter is not None and old.group.adapters.get(old.name) == old.adapter:
            del old.group.adapters[old.name]  # the weights stay: a request may be using them
        in_use = any(getattr(h, "group", None) is old.group for h in self.handles.values())
        if not in_use and self.groups.get(old.group.key) is old.group:
            del self.groups[old.group.key]

    def listing(self) -> list[dict[str, Any]]:
        """OpenAI model objects: loaded models, aliases, then finished job models not loaded."""
        aliases = self.aliases.all(self.settings.data_dir)
        rows = [{"id": h.name, "object": "model", "created": h.created,
                 "owned_by": "tunesmith", "kind": h.kind,
                 "base": getattr(h, "group", None) and h.group.key}
                for h in self.handles.values()]
        for row in rows:
            if row["id"] in aliases:
                row["promoted"] = _promotion(aliases[row["id"]])
        listed = {r["id"] for r in rows}
        for name, alias in aliases.items():
            if name not in listed:
                listed.add(name)
                rows.append({"id": name, "object": "model",
                             "created": int(alias.get("created") or 0),
                             "owned_by": "tunesmith", "kind": alias.get("kind", "lm"),
                             "base": None, "promoted": _promotion(alias)})
        for info in list_fine_tuned(self.settings.data_dir):
            if info.get("id") and info["id"] not in listed:
                listed.add(info["id"])
                rows.append({"id": info["id"], "object": "model",
                             "created": int(info.get("created") or 0),
                             "owned_by": "tunesmith-fine-tuning", "kind": "lm",
                             "base": info.get("base")})
        root = self.settings.models_dir  # run dirs placed there by hand (no model info)
        for path in sorted(root.glob("*/final")) if root.is_dir() else []:
            name = path.parent.name
            if name not in listed and self.job_model_dir(name):
                rows.append({"id": name, "object": "model",
                             "created": int(path.stat().st_mtime),
                             "owned_by": "tunesmith-fine-tuning", "kind": "lm", "base": None})
        return rows


def _promotion(alias: dict[str, Any]) -> dict[str, Any]:
    """What ``/v1/models`` says about an alias: the model now served and why."""
    keys = ("target", "over", "metric", "candidate_value", "current_value", "ci95", "time")
    return {k: alias[k] for k in keys if k in alias}
