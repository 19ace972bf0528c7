"""FSDP2 (PyTorch's ``fully_shard``) for the training engine, on CPUs (gloo) and GPUs.

Asked for with ``ACCELERATE_USE_FSDP=true`` in the environment — what ``accelerate launch``
sets from an FSDP config, or set by hand before ``torchrun``. accelerate's own FSDP path
needs GPUs (on CPUs it silently trains with plain data parallelism), so tunesmith shards the
model itself, the same way on both: each decoder layer (the model's ``_no_split_modules``)
and then the root are ``fully_shard``-ed over all processes, the optimizer is built on the
sharded parameters, and accelerate is not given the model (its DDP wrapper would be wrong
around a sharded one).

Saving gathers: every process takes part in ``get_state_dict(full_state_dict=True,
cpu_offload=True)``, and the main process writes the full, gathered weights (the adapter
for LoRA) and the full optimizer state keyed by parameter name (``optimizer_full.pt``), then
reads them back and compares them with the gathered tensors (``train/verify.py``). Such a
checkpoint does not depend on the number of processes: resuming with another number (2 → 1,
1 → 2, at the same global batch: ``grad_accum x processes``) scatters it again with
``set_state_dict``. ``final/`` is written from the gathered weights put back into the model
as plain tensors (:func:`to_plain`), so it is the same plain checkpoint (LoRA merged, the
adapter in ``final/adapter``) as without FSDP.

Validation (:func:`evaluate`): every forward of a sharded model is a collective (each
layer's parameters are all-gathered), so every process must run the same forwards in the same
order. Every process therefore evaluates the whole validation set, as one process would (the
objective sees a one-process view of the accelerator), and the main process's metrics are
broadcast, so early stopping is decided identically everywhere. The metrics equal a
one-process run's at the same weights; the evaluation takes as long as one process's.
``best/`` is written from the gathered weights in a plain copy of the model
(:func:`plain_copy`) and verified like a checkpoint.

Gradual unfreezing needs nothing of its own: the optimizer holds every parameter from the
start (``train/optim.py``), and FSDP2 copies a sharded parameter's ``requires_grad`` to its
unsharded one at every all-gather and reduce-scatters only the gradients that exist.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

OPTIMIZER_FILE = "optimizer_full.pt"


def requested(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return env.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes")


@contextlib.contextmanager
def hidden_from_accelerate() -> Iterator[None]:
    """Build the Accelerator without ``ACCELERATE_USE_FSDP``: on GPUs accelerate would set up
    its own FSDP around a model tunesmith shards itself (on CPUs it ignores the variable)."""
    value = os.environ.pop("ACCELERATE_USE_FSDP", None)
    try:
        yield
    finally:
        if value is not None:
            os.environ["ACCELERATE_USE_FSDP"] = value


def is_sharded(model: nn.Module) -> bool:
    return any(type(m).__name__.startswith("FSDP") and hasattr(m, "unshard")
               for m in model.modules())


def _fsdp() -> Any:
    # deferred: only FSDP runs need it
    from torch.distributed import fsdp

    return fsdp


def shard(root: nn.Module, model: nn.Module, device: Any) -> None:
    """``fully_shard`` each decoder layer of ``model``, then ``root`` (the objective's module
    that holds it and computes the loss: its forward is the one every step calls, so the
    parameters outside the layers — embeddings, norm, head — are gathered there)."""
    fsdp = _fsdp()
    root.to(device)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    blocks = set(getattr(base, "_no_split_modules", None) or ())
    dist = torch.distributed
    if not dist.is_initialized():  # one process, not started by torchrun: a group of one
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    mesh = None
    if not torch.cuda.is_available():
        # deferred: only FSDP runs need it
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for module in model.modules():
        if type(module).__name__ in blocks:
            fsdp.fully_shard(module, mesh=mesh)
    fsdp.fully_shard(root, mesh=mesh)


def _prefix(root: nn.Module, model: nn.Module) -> str:
    """The name of ``model`` inside ``root`` with a trailing dot ("" when it is the root)."""
    name = next(n for n, m in root.named_modules() if m is model)
    return f"{name}." if name else ""


@contextlib.contextmanager
def accumulate(model: nn.Module, last: bool) -> Iterator[None]:
    """A micro-batch that is not the step's last: no gradient reduce-scatter and no
    resharding after its backward (the gradients accumulate locally, as DDP's ``no_sync``);
    the last one reduces them over all processes. Processes may run different numbers of
    micro-batches (splitting at ``train.max_batch_tokens``): only the last one communicates."""
    model.set_requires_gradient_sync(last)  # type: ignore[operator]
    model.set_reshard_after_backward(last)  # type: ignore[operator]
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)  # type: ignore[operator]
        model.set_reshard_after_backward(True)  # type: ignore[operator]


def as_float(value: Any) -> float:
    """A gradient norm (a DTensor under FSDP) as a number."""
    full = getattr(value, "full_tensor", None)
    return float(full() if callable(full) else value)


def _options(**kw: Any) -> Any:
    # deferred: only FSDP runs need it
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_state(root: nn.Module, model: nn.Module, optimizer: Any | None
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The full state of ``model`` and the optimizer (keyed by ``model``'s parameter names;
    none without ``optimizer``), gathered. Every process must call it; the main process gets
    the tensors (on CPU), the others empty dicts."""
    # deferred: only FSDP runs need it
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        weights, optim = get_model_state_dict(root, options=_options(cpu_offload=True)), {}
    else:
        weights, optim = get_state_dict(root, getattr(optimizer, "optimizer", optimizer),
                                        options=_options(cpu_offload=True))
    pre = _prefix(root, model)
    # a tied parameter (the LM head sharing the embeddings) once, under its first name, as
    # save_pretrained writes it without FSDP
    first: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        first.setdefault(id(p), name)
    tied = {n for n, p in model.named_parameters(remove_duplicate=False) if first[id(p)] != n}
    weights = {k[len(pre):]: v for k, v in weights.items()
               if k.startswith(pre) and k[len(pre):] not in tied}
    if optim:
        optim = {**optim, "state": {k[len(pre):]: v for k, v in optim["state"].items()},
                 "param_groups": [{**g, "params": [p[len(pre):] for p in g["params"]]}
                                  for g in optim["param_groups"]]}
    return weights, optim


def load_full_state(root: nn.Module, model: nn.Module, optimizer: Any,
                    weights: dict[str, torch.Tensor], optim: dict[str, Any]) -> None:
    """Scatter a full (gathered) state of ``model`` and the optimizer onto this process's
    shards (``weights`` may hold only some of the model's tensors: an adapter)."""
    # deferred: only FSDP runs need it
    from torch.distributed.checkpoint.state_dict import set_state_dict

    pre = _prefix(root, model)
    # set_state_dict first creates the optimizer's state for the parameters that require a
    # gradient (a step with zero gradients) and fills in the saved values: exactly those
    # with a saved state must require one, or a parameter unfrozen since (gradual
    # unfreezing) gets a state it never had, and one frozen now loses its saved state
    saved = {id(p) for n, p in model.named_parameters(remove_duplicate=False)
             if n in optim["state"]}  # a tied parameter: under either of its names
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in flags:
        p.requires_grad_(id(p) in saved)
    optim = {**optim, "state": {pre + k: v for k, v in optim["state"].items()},
             "param_groups": [{**g, "params": [pre + p for p in g["params"]]}
                              for g in optim["param_groups"]]}
    try:
        set_state_dict(root, getattr(optimizer, "optimizer", optimizer),
                       model_state_dict={pre + k: v for k, v in weights.items()},
                       optim_state_dict=optim, options=_options(strict=False))
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)


class _OneProcess:
    """An accelerator seen as a single process (``process_index`` 0 of 1): an objective's
    ``evaluate`` then runs every validation batch and reduces nothing."""

    process_index = 0
    num_processes = 1

    def __init__(self, acc: Any) -> None:
        self._acc = acc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._acc, name)


def evaluate(run: Callable[[Any], dict[str, float]], acc: Any) -> dict[str, float]:
    """``run(acc)`` (an objective's evaluation) on every process over the whole validation
    set, in the same order (see the module docstring); the main process's metrics, the same
    on every process."""
    metrics = run(_OneProcess(acc))
    if acc.num_processes > 1:
        box = [metrics]
        torch.distributed.broadcast_object_list(box, src=0)
        metrics = box[0]
    return metrics


def plain_copy(model: nn.Module, full: Mapping[str, torch.Tensor]) -> nn.Module:
    """A plain (unsharded) copy of the sharded ``model`` holding the gathered tensors
    ``full``, for writing ``best/`` on the main process while ``model`` trains on. The
    parameters, buffers, FSDP's per-module state and its hooks (which hold process groups)
    are shared with the copy, not copied; FSDP refuses ``deepcopy`` of its modules, so they
    are copied as their plain classes (``model``'s own are put back at once);
    :func:`to_plain` then replaces the copy's parameters and removes its FSDP state and
    hooks."""
    fsdp = _fsdp()
    memo: dict[int, Any] = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    classes: dict[nn.Module, type] = {}
    for module in model.modules():
        for attr, value in vars(module).items():
            if attr.startswith("__composable_api_state_key"):
                memo[id(value)] = value
            elif attr.endswith("hooks") and isinstance(value, dict):
                memo.update((id(h), h) for h in value.values() if _is_fsdp_hook(h))
        if isinstance(module, fsdp.FSDPModule):
            classes[module] = type(module)
    try:
        for module, cls in classes.items():
            module.__class__ = _plain_class(cls)
        dup = copy.deepcopy(model, memo)
    finally:
        for module, cls in classes.items():
            module.__class__ = cls
    return to_plain(dup, full)


def _plain_class(cls: type) -> type:
    """The class FSDP derived ``cls`` (``FSDP<Name>``) from."""
    fsdp = _fsdp()
    return next(c for c in cls.__bases__ if not issubclass(c, fsdp.FSDPModule))


def to_plain(model: nn.Module, full: Mapping[str, torch.Tensor]) -> nn.Module:
    """The model with its sharded parameters replaced by the gathered full tensors and its
    FSDP classes, state and hooks removed: for writing ``final/`` on the main process after
    training (the model does not train again), or ``best/`` from a copy
    (:func:`plain_copy`). Tied parameters stay tied."""
    fsdp = _fsdp()
    new: dict[int, nn.Parameter] = {}
    for name, p in list(model.named_parameters(remove_duplicate=False)):
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        if id(p) not in new:
            if name not in full:
                raise KeyError(f"{name} is missing from the gathered state")
            new[id(p)] = nn.Parameter(full[name].detach().clone(),
                                      requires_grad=p.requires_grad)
        owner._parameters[attr] = new[id(p)]
    for module in model.modules():
        if isinstance(module, fsdp.FSDPModule):
            module.__class__ = _plain_class(type(module))
        for attr, hooks in list(vars(module).items()):  # FSDP's state and hooks hold
            if attr.startswith("__composable_api_state_key"):  # process groups
                delattr(module, attr)
            elif attr.endswith("hooks") and isinstance(hooks, dict):
                for key in [k for k, h in hooks.items() if _is_fsdp_hook(h)]:
                    del hooks[key]
    return model


def _is_fsdp_hook(hook: Any) -> bool:
    hook = getattr(hook, "hook", hook)  # a load-state-dict pre-hook, wrapped by torch
    fn = getattr(hook, "func", None) or getattr(hook, "__func__", None) or hook
    owner = getattr(hook, "__self__", None)
    names = [getattr(fn, "__module__", "") or "", type(owner).__module__ if owner else ""]
    return any(n.startswith("torch.distributed") for n in names)
