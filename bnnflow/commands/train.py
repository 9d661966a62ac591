"""`bnnflow train` (its flags live with the recipe in models/train_config.py)."""

from __future__ import annotations


def cmd_train(args) -> int:
    from rich.console import Console

    from bnnflow.models.train import train
    from bnnflow.models.train_config import config_from_args

    console = Console(highlight=False)
    if args.benchmark_steps is not None:
        from bnnflow.models.train_speed import benchmark

        benchmark(config_from_args(args), args.benchmark_steps, console)
        return 0
    result = train(config_from_args(args), console)
    return 0 if result is not None else 1


COMMANDS = {"train": cmd_train}
