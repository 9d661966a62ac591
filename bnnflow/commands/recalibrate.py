"""`bnnflow recalibrate`: a checkpoint with precise batch-norm statistics (models/recalibrate.py)."""

from __future__ import annotations

from pathlib import Path

from bnnflow.cli_args import add_data_args
from bnnflow.outputs import OutCheck


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "recalibrate", help="re-estimate a trained checkpoint's batch-norm statistics over its training images",
        description="Write a copy of a checkpoint from 'bnnflow train' whose batch-norm running statistics are "
                    "re-estimated as the plain average over its own training images, augmented as in training "
                    "(precise BN, as 'bnnflow train' does before every evaluation: see its --bn-images), and print "
                    "the validation and test top-1 before and after: keep the new file if validation says so. "
                    "Only the batch-norm statistics change.")
    p.add_argument("checkpoint", type=Path, help="best.pt (or last.pt) written by 'bnnflow train'")
    p.add_argument("--out", type=Path, required=True, help="the new checkpoint (an existing checkpoint there is "
                                                           "replaced; the one read never is)")
    p.set_defaults(check_outputs=OutCheck("checkpoint"))
    p.add_argument("--bn-images", type=int, metavar="N",
                   help="training images to average over; default: all of the run's training split")
    add_data_args(p)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto")
    p.add_argument("--threads", type=int, help="CPU threads for torch; default: all cores")


def cmd_recalibrate(args) -> int:
    from rich.console import Console

    from bnnflow.cores import set_torch_threads
    from bnnflow.models.recalibrate import recalibrate

    set_torch_threads(args.threads)
    recalibrate(args.checkpoint, args.out, args.bn_images, args.data, args.device, Console(highlight=False),
                args.download)
    return 0


COMMANDS = {"recalibrate": cmd_recalibrate}
