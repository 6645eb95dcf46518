"""Data-parallel training on PyTorch's own engine: torchrun's environment, DDP, the collectives the trainer needs.

``torchrun`` (``torch.distributed.run``) starts one process per rank and tells each one who it is through
environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``); ``vltk train
--nproc N`` is the same launcher called through its Python API (:func:`launch_local`). :func:`setup` turns that
environment into a process group (NCCL on CUDA, gloo on the CPU) and a :class:`DistributedContext`; a process
started without torchrun gets :data:`SINGLE`, and every helper here is then a no-op, so the single-process path
runs the same code.

How a run is split, and why the numbers equal a single-process run's:

* **the global batch** is ``train.batch_size`` whatever the number of ranks: every rank draws the same global
  batch (same permutation, same position) and takes its contiguous ``batch_size / world_size`` slice
  (:func:`local_batch_size` refuses sizes that do not divide). DDP averages the gradients, so with a loss that is
  a mean over equally many elements per rank (BatchNorm aside: each rank normalises with its own slice's
  statistics unless the decoder asks for SyncBN) a step equals the single-process step on the whole batch;
* **losses** are averaged over ranks before they are logged or checked for divergence (:func:`mean_over_ranks`),
  so every rank sees, and decides on, the same number;
* **evaluation** gives each rank a contiguous shard of every domain (:func:`shard`); the task's metric combines
  the shards (confusion matrices are summed, detections gathered in rank order), so every rank ends with the
  single-process result;
* **files** are written by rank 0 only; the others meet it at the collectives around each write
  (:func:`agree`), which also carry a rank's failure to every rank, so no rank waits forever for a dead one.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from vltk.errors import UserError

#: What torchrun sets for every worker; all three are needed to join a process group.
RANK_VARIABLES: tuple[str, ...] = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
#: How long a rank waits at a collective for the others (a rank stuck longer has died or hung).
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)
#: DDP's note when ``find_unused_parameters=True`` finds none: expected here (see :func:`wrap_for_training`).
_NO_UNUSED_WARNING = r".*find_unused_parameters=True was specified in DDP constructor.*"


@dataclass(frozen=True)
class DistributedContext:
    """Who this process is in the run: ``rank`` of ``world_size`` (``local_rank`` on its machine)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run folder and prints; the others stay quiet."""
        return self.rank == 0


#: A process that torchrun did not start: one rank, no process group.
SINGLE = DistributedContext()


class PeerFailure(UserError):
    """Raised on every rank when one rank failed with a :class:`UserError`; ``silent`` on all but rank 0, so the
    message is printed once (rank 0 repeats the failing rank's message)."""

    def __init__(self, message: str, *, silent: bool) -> None:
        super().__init__(message)
        self.silent = silent


def _env_int(name: str) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise UserError(
            f"{name}={value!r} is not a number; start distributed runs with torchrun or `vltk train --nproc N`, "
            "which set RANK, WORLD_SIZE and LOCAL_RANK"
        ) from None


def launched_distributed() -> bool:
    """Whether this process is one of several ranks (torchrun with more than one process)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def setup(device: torch.device) -> tuple[DistributedContext, torch.device]:
    """This process's context and device, joining torchrun's process group when there is one.

    ``device`` is the run's device (``cpu`` or ``cuda``): with CUDA each rank takes GPU ``LOCAL_RANK`` and NCCL,
    on the CPU gloo. Calling it again in a process that already joined reuses the group. Ranks other than 0
    silence their warnings (the same as rank 0's).
    """
    if not launched_distributed():
        return SINGLE, device
    missing = [name for name in (*RANK_VARIABLES, "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise UserError(
            f"WORLD_SIZE is set but {', '.join(missing)} not; start distributed runs with torchrun (`torchrun "
            "--nproc_per_node N -m vltk train ...`) or `vltk train --nproc N`"
        )
    rank, world_size, local_rank = (_env_int(name) for name in RANK_VARIABLES)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"rank {rank} wants GPU {local_rank} but this machine has {torch.cuda.device_count()}; start at "
                "most as many processes per machine as it has GPUs (--nproc / --nproc_per_node)"
            )
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    if rank > 0:  # every rank runs the same code: rank 0's warnings are everyone's, printed once
        warnings.simplefilter("ignore")
    return DistributedContext(rank, world_size, local_rank, dist.get_backend()), device


#: How long the ranks wait for each other before leaving the process group (a rank that is gone is not waited for).
SHUTDOWN_BARRIER_TIMEOUT = datetime.timedelta(seconds=30)


def shutdown() -> None:
    """Leave the process group (at the end of a command), so that the process exits without NCCL's warnings.

    The ranks meet first: a rank that tore its gloo connections down while a peer still had the last collective's
    bytes in flight made that peer's gloo thread call ``std::terminate`` at exit (exit code 134 after a clean run,
    seen under load). The meeting is bounded, and a failed one (a peer already gone) only skips the wait.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=SHUTDOWN_BARRIER_TIMEOUT)
        else:
            dist.barrier()
    except Exception:  # noqa: BLE001 (a peer that already left: nothing to wait for)
        pass
    dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------- splitting


def local_batch_size(context: DistributedContext, batch_size: int) -> int:
    """Images per rank and step: the global ``train.batch_size`` divided evenly, or a :class:`UserError`."""
    if batch_size % context.world_size:
        raise UserError(
            f"train.batch_size={batch_size} cannot be split evenly over {context.world_size} processes (the batch "
            f"size is the global batch, shared by all ranks); use a multiple of {context.world_size}, or another "
            "number of processes"
        )
    return batch_size // context.world_size


def shard_bounds(length: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, end)`` of rank's contiguous part of ``length`` items; parts differ by at most one item and, taken
    in rank order, are the items in their original order (what keeps gathered detections in single-process
    order)."""
    return length * rank // world_size, length * (rank + 1) // world_size


def shard(context: DistributedContext, dataset: Dataset) -> Dataset:
    """This rank's contiguous part of an evaluation set (the whole set in a single process)."""
    if not context.is_distributed:
        return dataset
    start, end = shard_bounds(len(dataset), context.rank, context.world_size)
    return Subset(dataset, range(start, end))


def seed_rank(context: DistributedContext, seed: int) -> None:
    """Give ranks other than 0 RNG streams of their own (after the model is built identically everywhere), so
    that dropout and random augmentation do not repeat the same draws on every rank's slice of the batch.
    Rank 0 keeps the single-process stream."""
    if context.rank == 0:
        return
    import random

    import numpy as np

    rank_seed = seed + 1_000_003 * context.rank
    random.seed(rank_seed)
    np.random.seed(rank_seed % 2**32)
    torch.manual_seed(rank_seed)


def rank_rng_state(context: DistributedContext, checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The RNG state this rank resumes with: its own from ``rng_ranks`` when the checkpoint was saved by as many
    ranks, else rank 0 takes the single ``rng`` and the other ranks keep their own streams (``None``)."""
    rank_states = checkpoint.get("rng_ranks")
    if rank_states is not None and len(rank_states) == context.world_size:
        return rank_states[context.rank]
    return checkpoint.get("rng") if context.rank == 0 else None


# ---------------------------------------------------------------------------------------------------- collectives


def _on_backend(context: DistributedContext, tensor: torch.Tensor) -> torch.Tensor:
    """NCCL reduces only GPU tensors; gloo CPU ones."""
    if context.backend == "nccl":
        return tensor.to(torch.device("cuda", torch.cuda.current_device()))
    return tensor.cpu()


def all_reduce_sum_(context: DistributedContext, tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (a confusion matrix: the matrix of all shards together)."""
    if not context.is_distributed:
        return tensor
    import torch.distributed as dist

    staged = _on_backend(context, tensor)
    dist.all_reduce(staged, op=dist.ReduceOp.SUM)
    if staged is not tensor:
        tensor.copy_(staged)
    return tensor


def mean_over_ranks(context: DistributedContext, values: dict[str, torch.Tensor]) -> dict[str, float]:
    """The mean over ranks of each scalar (the logged loss terms), as floats; one collective for all of them.

    Every rank computes the same terms (same model), so the names line up.
    """
    names = list(values)
    if not context.is_distributed:
        return {name: float(values[name].detach()) for name in names}
    import torch.distributed as dist

    stacked = torch.stack([values[name].detach().reshape(()).to(torch.float64) for name in names])
    stacked = _on_backend(context, stacked)
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    return {name: float(value) for name, value in zip(names, (stacked / context.world_size).tolist(), strict=True)}


def requested_stop(context: DistributedContext, signum: int | None) -> int | None:
    """The stop signal of any rank (the largest signal number when several ranks got one), so that all ranks
    stop at the same step boundary; ``None`` when no rank was asked to stop."""
    if not context.is_distributed:
        return signum
    import torch.distributed as dist

    flag = _on_backend(context, torch.tensor([signum or 0], dtype=torch.int64))
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) or None


def all_gather_objects(context: DistributedContext, value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order."""
    if not context.is_distributed:
        return [value]
    import torch.distributed as dist

    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def barrier(context: DistributedContext) -> None:
    if context.is_distributed:
        import torch.distributed as dist

        dist.barrier()


def agree(context: DistributedContext, failure: BaseException | None) -> None:
    """Meet the other ranks and share whether each succeeded: when any rank failed with a :class:`UserError`,
    every rank raises it (rank 0 prints it, naming the rank when it is not its own; the others stay silent).

    Single process: re-raises ``failure``. Other exceptions are re-raised on their own rank after the others were
    told, so they stop too instead of waiting at the next collective.
    """
    if not context.is_distributed:
        if failure is not None:
            raise failure
        return
    if failure is not None and not isinstance(failure, UserError):
        message = f"{type(failure).__name__}: {failure}"
    else:
        message = None if failure is None else str(failure)
    outcomes = all_gather_objects(context, message)
    if failure is not None and not isinstance(failure, UserError):
        raise failure
    failed = [(rank, text) for rank, text in enumerate(outcomes) if text is not None]
    if not failed:
        return
    if failure is not None and context.is_main:
        raise failure
    rank, text = failed[0]
    shown = text if rank == 0 else f"(rank {rank}) {text}"
    raise PeerFailure(shown, silent=not context.is_main)


def on_main(context: DistributedContext, write: Callable[[], None]) -> None:
    """Run ``write`` (files of the run folder) on rank 0 while the other ranks wait for it; a failure of the write
    reaches every rank (:func:`agree`)."""
    failure: BaseException | None = None
    if context.is_main:
        try:
            write()
        except BaseException as error:  # noqa: BLE001 (shared with the other ranks, then re-raised)
            failure = error
    agree(context, failure)


# ---------------------------------------------------------------------------------------------------- the model


class _LossForward(nn.Module):
    """``forward`` = the model's ``loss``: DDP hooks the gradients of what runs through its ``forward``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.loss(*args, **kwargs)


class DistributedLoss:
    """What the task's ``batch_losses`` sees as the model in a DDP run: ``loss(...)`` runs through DDP, so the
    backward pass averages the gradients over ranks. ``ddp`` is the wrapper (``no_sync()`` for accumulation)."""

    def __init__(self, ddp: nn.parallel.DistributedDataParallel) -> None:
        self.ddp = ddp

    def loss(self, *args: Any, **kwargs: Any) -> Any:
        return self.ddp(*args, **kwargs)

    def no_sync(self) -> contextlib.AbstractContextManager[None]:
        """Skip the gradient all-reduce (micro-steps of gradient accumulation before the last one)."""
        return self.ddp.no_sync()


def wrap_for_training(
    model: nn.Module, context: DistributedContext, device: torch.device, *, static_graph: bool = False
) -> Any:
    """``model`` itself in a single process; a :class:`DistributedLoss` around DDP otherwise.

    Frozen parameters (``requires_grad=False``) are left out by DDP itself. Parameters that train but take no
    part in a step's loss would stop DDP with "expected to have finished reduction in the prior iteration", and
    every vltk model has some: a backbone's image-text projection and final norm outside ``forward_features``,
    an adapter's decoder queries when the decoder ignores queries (Rein + FPN), a prompter branch a
    configuration switches off. So ``find_unused_parameters`` is on; it walks the autograd graph once per step.
    ``static_graph=True`` is DDP's alternative for a graph that never changes between steps (the set of used
    parameters found once); ``benchmarks/ddp_scaling.py`` measures both. The buffers (BatchNorm statistics)
    follow rank 0's at every forward, as DDP does by default.
    """
    if not context.is_distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    warnings.filterwarnings("ignore", message=_NO_UNUSED_WARNING)
    ddp = DistributedDataParallel(
        _LossForward(model), device_ids=device_ids, find_unused_parameters=not static_graph, static_graph=static_graph
    )
    return DistributedLoss(ddp)


def convert_sync_batchnorm(model: nn.Module, context: DistributedContext, device: torch.device) -> nn.Module:
    """SyncBatchNorm for a decoder that asks for it (``decoder.sync_bn``, e.g. ``fpn`` with ``norm=syncbn``).

    In a single process nothing changes (one process has the whole batch). Over several CUDA ranks the decoder's
    BatchNorm layers become ``nn.SyncBatchNorm`` (statistics over the global batch). PyTorch implements
    SyncBatchNorm for GPUs only, so several CPU (gloo) ranks are refused with a :class:`UserError`.
    """
    decoder = getattr(model, "decoder", None)
    if not context.is_distributed or not getattr(decoder, "sync_bn", False):
        return model
    if device.type != "cuda":
        raise UserError(
            "the decoder asks for SyncBatchNorm (norm=syncbn), which PyTorch supports on CUDA GPUs only, not on "
            "several CPU (gloo) processes; set decoder.norm=bn (per-process statistics) or decoder.norm=gn, or "
            "train on GPUs"
        )
    model.decoder = nn.SyncBatchNorm.convert_sync_batchnorm(decoder)
    return model


# ---------------------------------------------------------------------------------------------------- launching


def _quiet_launcher_logs() -> None:
    """Silence torchrun's own log lines ("Sending process ... closing signal", "failed (exitcode: 2)") below
    CRITICAL; ``LOGLEVEL=INFO vltk train --nproc N`` shows them again."""
    import logging

    prefixes = ("torch.distributed.elastic", "torch.distributed.run", "torch.distributed.launcher")
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(prefixes):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def launch_local(nproc: int, arguments: Sequence[str]) -> int:
    """Run ``python -m vltk <arguments>`` as ``nproc`` ranks on this machine through torchrun's launcher
    (as ``--standalone``: a local rendezvous on a free port) and return the exit code to exit with.

    A worker that fails gives its own exit code (2 for a :class:`UserError`, 130/143 after a signal); a signal to
    the launcher is passed on to the workers, which stop at the next step boundary with ``last.pt`` saved.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, get_args_parser

    rendezvous = [  # what torchrun's --standalone sets: a c10d store on a free local port
        "--nnodes=1",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=localhost:0",
        f"--rdzv-id={uuid.uuid4()}",
        "--master-port=29500",  # torchrun's default; only the static rendezvous reads it
    ]
    parsed = get_args_parser().parse_args([*rendezvous, f"--nproc-per-node={nproc}", "--module", "vltk", *arguments])
    config, command, command_arguments = config_from_args(parsed)
    if "LOGLEVEL" not in os.environ:  # the workers say what went wrong; the launcher's log lines only repeat it
        _quiet_launcher_logs()
    try:
        elastic_launch(config, command)(*command_arguments)
    except ChildFailedError as error:
        _, failure = error.get_first_failure()
        code = failure.exitcode
        return code if code > 0 else 128 - code  # a negative exit code is the signal that killed the worker
    except SignalException as error:
        return 128 + int(error.sigval)
    return 0


__all__ = [
    "COLLECTIVE_TIMEOUT",
    "RANK_VARIABLES",
    "SINGLE",
    "DistributedContext",
    "DistributedLoss",
    "PeerFailure",
    "agree",
    "all_gather_objects",
    "all_reduce_sum_",
    "barrier",
    "convert_sync_batchnorm",
    "launch_local",
    "launched_distributed",
    "local_batch_size",
    "mean_over_ranks",
    "on_main",
    "rank_rng_state",
    "requested_stop",
    "seed_rank",
    "setup",
    "shard",
    "shard_bounds",
    "shutdown",
    "wrap_for_training",
]
