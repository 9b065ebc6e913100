"""Processes of one evaluation: one per GPU under ``torchrun``, or one or more on CPU.

The processes share no tensors, only files; the process group (gloo, which runs on any machine,
unlike the NCCL backend VLMEvalKit hard-codes) serves barriers only.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Processes:
    """rank / world_size / local_rank of this process (0 / 1 / 0 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_ok(self, ok: bool) -> bool:
        """Wait for every process and tell whether all of them reported ``ok`` (a barrier that
        carries failures, so that no process waits forever for one that gave up)."""
        if self.world_size == 1:
            return ok
        flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def device(self) -> str:
        """This process's device: its own GPU when there are GPUs, else the CPU."""
        if not torch.cuda.is_available():
            return "cpu"
        count = torch.cuda.device_count()
        if self.local_rank >= count:
            raise RuntimeError(
                f"process {self.local_rank} of this machine has no GPU: {count} visible; start at most {count} "
                "processes per machine (torchrun --nproc-per-node)."
            )
        torch.cuda.set_device(self.local_rank)
        return f"cuda:{self.local_rank}"


def start(timeout_s: float = 7 * 24 * 3600.0) -> Processes:
    """Join the process group torchrun set up (``WORLD_SIZE`` > 1), or run alone.

    The timeout bounds how long a barrier waits for the slowest process (a dataset's inference).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    processes = Processes(int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout_s))
    return processes


def stop() -> None:
    """Leave the process group."""
    if dist.is_initialized():
        dist.destroy_process_group()
