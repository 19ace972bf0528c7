"""The process group a launcher promised, checked against the one that formed.

``accelerate launch``, ``torchrun`` and the Kubernetes operators (Kubeflow's PyTorchJob runs
torchrun in every pod) describe the job in environment variables: ``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``, and for the operators ``PET_NNODES`` and
``PET_NPROC_PER_NODE``. accelerate reads the same variables to form the process group
(gloo on CPUs, NCCL on GPUs). What goes wrong silently is a job that asked for N processes
and trained in each of them alone — every pod a full, separate run at world size 1. So when
the environment asks for more than one process and the group that formed has another size,
training stops before the first step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from tunesmith.errors import TrainingError

LAUNCH = "torchrun --nnodes N --nproc_per_node P -m tunesmith train CONFIG"


def expected_world_size(env: Mapping[str, str] | None = None) -> int | None:
    """How many processes the environment asks for (None: it does not say)."""
    env = os.environ if env is None else env
    for var in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if env.get(var, "").isdigit():
            return int(env[var])
    return None


def check_world_size(accelerator: Any, env: Mapping[str, str] | None = None) -> None:
    """Raise when the environment asked for N > 1 processes but the group has another size,
    or when an operator started this pod as one of several nodes without a launcher."""
    env = os.environ if env is None else env
    want = expected_world_size(env)
    got = accelerator.num_processes
    if want is not None and want > 1 and got != want:
        raise TrainingError(
            f"the environment asks for {want} processes but the process group has {got}",
            where=f"WORLD_SIZE={want}, RANK={env.get('RANK')}, "
            f"MASTER_ADDR={env.get('MASTER_ADDR')}",
            got=f"{got} process(es)", fix="start every process with a launcher that sets "
            f"RANK, LOCAL_RANK and MASTER_ADDR/MASTER_PORT consistently: {LAUNCH} (or "
            "accelerate launch); unset WORLD_SIZE to train in one process")
    nodes = env.get("PET_NNODES", "")
    if got == 1 and "LOCAL_RANK" not in env and nodes.split(":")[-1].isdigit() and int(
            nodes.split(":")[-1]) > 1:
        raise TrainingError(
            f"this pod is one of {nodes} nodes (PET_NNODES) but was not started by torchrun: "
            "it would train alone, as a separate run", where="PET_NNODES",
            got=nodes, fix=f"make the container command {LAUNCH} (Kubeflow's PyTorchJob "
            "passes its PET_* settings to torchrun)")


def is_main_rank(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process is rank 0 (the one that owns the run directory). accelerate sets
    ``RANK`` for every process of a group, as torchrun does; a lone process has none."""
    env = os.environ if env is None else env
    rank = env.get("RANK", "0")
    return not rank.isdigit() or int(rank) == 0
