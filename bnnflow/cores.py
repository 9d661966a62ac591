"""How many CPU cores this process may use."""

from __future__ import annotations

import os

from bnnflow.errors import BnnflowError


def usable_cores() -> int:
    """The cores this process may run on (taskset, a cpuset, a batch job's share), not all the machine's:
    torch and worker pools sized to os.cpu_count() oversubscribe a pinned process."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def set_torch_threads(threads: int | None) -> None:
    """A command's --threads, or all the cores this process may use."""
    import torch

    if threads is not None and threads < 1:
        raise BnnflowError(f"--threads must be at least 1, got {threads}.")
    torch.set_num_threads(threads or usable_cores())
