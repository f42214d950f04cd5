"""Multi-process training on ``torch.distributed``: one process per device, launched by ``torchrun``.

Single-process runs use the same code with a world of one, so there is one training loop.

How a global batch is shared, such that N processes compute what one process computes:

* The data order is ``DistributedSampler``'s epoch permutation (seeded by seed + epoch, the same
  for every world size). Global batch ``t`` is positions ``[t*G, (t+1)*G)`` of it; rank ``r``
  loads the positions ``p`` with ``p % R == r``.
* With ``A`` gradient-accumulation steps a rank splits its batch again, ``local[a::A]``, so
  every global batch is cut into ``S = R*A`` shards, shard ``s = r + R*a`` holding the positions
  ``p`` with ``p % S == s``. Two runs with the same ``S`` see identical shards, whichever
  ``(R, A)`` produced them.
* Each shard's loss is a mean over the shard, scaled by ``1/A``; DDP averages over ranks, so the
  gradient is the mean over all shards, i.e. the global-batch mean.
* The Gumbel noise of shard ``s`` at step ``t`` comes from a generator seeded by
  ``(seed, phase, t, s)``, so it too is independent of the process that draws it.
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import os
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, default_collate


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that logs, prints and writes checkpoints."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "cpu", timeout_minutes: float = 30.0) -> torch.device:
    """Join the process group ``torchrun`` describes in the environment (no-op for one process).

    NCCL for CUDA devices, gloo for the CPU. Each process drives ``cuda:LOCAL_RANK``.

    Args:
        device: the configured device, "cpu" or "cuda[:i]" (the index is ignored under torchrun).

    Returns:
        The device this process trains on.
    """
    want_cuda = torch.device(device).type == "cuda"
    if want_cuda and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but CUDA is not available")
    if not launched_by_torchrun():
        return torch.device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        torch.cuda.set_device(local_rank)
    if not is_distributed():
        dist.init_process_group("nccl" if want_cuda else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return torch.device("cuda", local_rank) if want_cuda else torch.device("cpu")


def resolve_device(device: str) -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` under torchrun, else the configured one."""
    if is_distributed() and torch.device(device).type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(device)


def shutdown() -> None:
    """Leave the process group. DDP wrappers that are no longer used but not yet collected keep
    gloo work objects alive; freed during interpreter teardown instead, they abort the process
    ("terminate called without an active exception") after a finished run, so collect them while
    the interpreter is whole."""
    if is_distributed():
        gc.collect()
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def wrap(module: nn.Module, device: torch.device, *, find_unused_parameters: bool = False) -> nn.Module:
    """``DistributedDataParallel(module)`` in a multi-process run, the module itself otherwise.

    ``find_unused_parameters`` stays off but where a loss leaves parameters out by design (the
    reconstruction start, which keeps every tubelet, leaves the keep predictors out): every
    parameter of the anonymizer and the recognizers takes part in every other training loss
    (the keep predictors through the straight-through estimator), and DDP says so loudly if
    that ever stops being true.
    """
    if not is_distributed():
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=find_unused_parameters)


def unwrap(module: nn.Module) -> nn.Module:
    """The bare module under DDP and ``torch.compile`` wrappers (for state dicts)."""
    module = getattr(module, "_orig_mod", module)
    return module.module if isinstance(module, DistributedDataParallel) else module


def all_reduce_mean(values: Tensor) -> Tensor:
    """Mean over ranks of a small float tensor (the step's loss values), the same on every rank."""
    if is_distributed():
        reduced = values.to(_collective_device(), copy=True)
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        values = (reduced / world_size()).to(values.device)
    return values


def gather_rows(tensor: Tensor) -> Tensor:
    """Concatenate along dim 0 the tensors of all ranks, in rank order (lengths may differ by rank).

    Every rank gets the result, on the input's device; the collective itself runs where the
    backend needs it (CUDA under NCCL, CPU under gloo).
    """
    if not is_distributed():
        return tensor
    work = tensor.to(_collective_device())
    length = torch.tensor([work.shape[0]], device=work.device, dtype=torch.int64)
    lengths = [torch.zeros_like(length) for _ in range(world_size())]
    dist.all_gather(lengths, length)
    lengths = [int(n) for n in lengths]
    longest = max(lengths)
    padded = work.new_zeros((longest, *work.shape[1:]))
    padded[: work.shape[0]] = work
    parts = [torch.empty_like(padded) for _ in lengths]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, lengths)]).to(tensor.device)


def shard_range(length: int) -> range:
    """This rank's contiguous block of ``range(length)`` (for work whose results are gathered back
    in order: transforming a dataset, testing)."""
    r, n = rank(), world_size()
    return range(length * r // n, length * (r + 1) // n)


class ResumableBatches:
    """Per-epoch index batches of this rank's share of the data, resumable at any batch.

    Args:
        length: dataset size.
        global_batch: G, videos per optimizer step summed over ranks; must be a multiple of R*A.
        accumulation: A, gradient-accumulation steps per optimizer step (only checked here).
        seed: seeds the epoch permutation (``DistributedSampler`` adds the epoch).
    """

    def __init__(self, length: int, global_batch: int, accumulation: int, seed: int):
        shards = world_size() * accumulation
        if global_batch % shards:
            raise ValueError(
                f"batch_size ({global_batch}) must be divisible by world size x grad_accum_steps "
                f"({world_size()} x {accumulation} = {shards})")
        if length < global_batch:
            raise ValueError(f"the training set has {length} videos, fewer than one batch of {global_batch}")
        self.length, self.global_batch, self.seed = length, global_batch, seed
        self.local_batch = global_batch // world_size()

    def __len__(self) -> int:
        """Optimizer steps per epoch (the last partial global batch is dropped)."""
        return self.length // self.global_batch

    def epoch(self, epoch: int, start: int = 0) -> list[list[int]]:
        """The index batches of ``epoch`` for this rank, from batch ``start`` on."""
        sampler = DistributedSampler(range(self.length), num_replicas=world_size(), rank=rank(), shuffle=True,
                                     seed=self.seed, drop_last=True)
        sampler.set_epoch(epoch)
        batches = list(BatchSampler(sampler, self.local_batch, drop_last=True))[: len(self)]
        return batches[start:]


def make_loader(dataset: Dataset, batches: Sequence[Sequence[int]], num_workers: int = 0) -> DataLoader:
    """A DataLoader over explicit index batches. Real datasets collate with their ``collate_fn``,
    which leaves out unreadable videos and returns None for a batch without any: the loop sees
    that None (see :func:`usable_on_all_ranks`), so its batch position stays exact."""
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                      collate_fn=getattr(dataset, "collate_fn", None) or default_collate)


def usable_on_all_ranks(batch: Sequence[Tensor] | None, accumulation: int) -> bool:
    """Whether every rank has at least one video per micro-batch. Unreadable videos can leave a
    rank with nothing; all ranks then skip the step together (a rank that skipped alone would
    leave the others waiting in DDP's all-reduce)."""
    usable = batch is not None and len(batch[0]) >= accumulation
    if not is_distributed():
        return usable
    flag = torch.tensor([float(usable)], device=_collective_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def sync_gradients(last: bool, modules: Sequence[nn.Module]) -> contextlib.AbstractContextManager:
    """Inside, DDP's gradient all-reduce is suppressed (``no_sync``) unless ``last``: with gradient
    accumulation, gradients are exchanged once, in the backward of the last micro-batch."""
    stack = contextlib.ExitStack()
    if not last:
        for module in modules:
            module = getattr(module, "_orig_mod", module)
            if isinstance(module, DistributedDataParallel):
                stack.enter_context(module.no_sync())
    return stack


def micro_batches(batch: Sequence[Tensor], accumulation: int, modules: Sequence[nn.Module]
                  ) -> Iterator[tuple[int, list[Tensor]]]:
    """Split a rank's batch into ``accumulation`` interleaved micro-batches ``batch[a::A]``,
    each yielded inside :func:`sync_gradients` (run forward and backward in the loop body).

    Yields:
        ``(a, micro_batch)``.
    """
    for a in range(accumulation):
        with sync_gradients(a == accumulation - 1, modules):
            yield a, [t[a::accumulation] for t in batch]


def shard_generator(seed: int, phase: int, step: int, micro: int) -> torch.Generator:
    """The Gumbel-noise generator of shard ``s = rank + R*micro`` at optimizer step ``step``.

    A fixed arithmetic mix (not ``hash()``, which Python salts per process) keeps it the same in
    every process and every run.
    """
    shard = rank() + world_size() * micro
    mixed = ((seed * 1_000_003 + phase) * 998_244_353 + step) * 65_537 + shard
    return torch.Generator().manual_seed(mixed % (2**63 - 1))
