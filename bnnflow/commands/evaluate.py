"""`bnnflow evaluate`: a checkpoint's test top-1 in PyTorch, and its FINN hardware graph image for image.

Brevitas: top-1 on the full CIFAR-10 test set (models/evaluate.py). Hardware: the checkpoint is
built to FINN's estimate step (build.ensure_build) and the folded dataflow graph is executed
functionally on the first --hw-images test images (verify.compare_with_brevitas); its integer
logits and top-1 must equal, image for image, those of the weights the build exported in float64
(verify's reference: float32 can round an exact .5 tie the other way).
"""

from __future__ import annotations

from pathlib import Path

from bnnflow.cli_args import add_board_arg, add_data_args, hidden_alias
from bnnflow.errors import BnnflowError
from bnnflow.outputs import OutCheck

DEFAULT_HW_IMAGES = 100


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="test top-1 of a checkpoint: Brevitas on all 10,000 images, the FINN graph image for image",
        description="Top-1 of a trained checkpoint on the full CIFAR-10 test set with Brevitas, then the same "
                    "checkpoint built to FINN's estimate step and its folded hardware graph executed on "
                    "--hw-images test images: the hardware must agree with Brevitas on every image.")
    p.add_argument("checkpoint", type=Path, help="best.pt written by 'bnnflow train' (or any bnnflow checkpoint)")
    p.add_argument("--hw-images", type=int, default=DEFAULT_HW_IMAGES,
                   help="test images for the hardware graph, 0 to skip the build; default: %(default)s")
    add_board_arg(p)
    p.add_argument("--build", type=Path, metavar="DIR", help="build folder; default: build/eval-MODEL-VARIANT-BOARD-SHA "
                                                             "(reused when it holds this checkpoint)")
    p.add_argument("--force", action="store_true", help="rebuild even if the build folder exists")
    add_data_args(p)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="for the Brevitas pass")
    p.add_argument("--threads", type=int, help="CPU threads for torch; default: all cores")
    p.add_argument("--out", type=Path, help="also write the result as JSON here")
    p.set_defaults(check_outputs=OutCheck("evaluation"))
    hidden_alias(p, "--report", "out", type=Path)


def hardware_build(checkpoint: Path, payload: dict, sha: str, board: str, build: Path | None, force: bool,
                   console) -> Path:
    """A build of `checkpoint` that reached the estimate step: reused, continued or made."""
    from bnnflow.build_flows import flow
    from bnnflow.build_flows.build import ensure_build
    from bnnflow.build_flows.identity import BuildRequest

    user = _user_spec(payload)
    if user is not None:  # a user's network trained by 'bnnflow train': built from its reference
        network = dict(model=user["ref"], model_args=user.get("model_args") or None,
                       input_scale=user.get("input_scale"))
    else:
        network = dict(model=payload["model"], variant=payload["variant"])
    from bnnflow.model_ref import network_name  # imports numpy: not at module level, the CLI stays light

    name = network_name(payload["model"], payload["variant"], "-")
    out = Path(build or Path("build") / f"eval-{name}-{board}-{sha[:12]}")
    req = BuildRequest(**network, board=board, checkpoint=checkpoint, out=out, force=force)
    out, reused, _ = ensure_build(req, flow.FOLDED_STEP, console)
    if reused:
        console.print(f"Reusing the build in {out}.")
    if flow.FOLDED_STEP not in flow.BuildState(out).done:
        raise BnnflowError(f"The build in {out} stopped before '{flow.FOLDED_STEP}': see {out / 'build.log'}.")
    return out


def _user_spec(payload: dict) -> dict | None:
    """How to rebuild a user's network, for a checkpoint 'bnnflow train' wrote for one; None for a zoo model."""
    from bnnflow.model_ref import USER_KEY

    spec = payload.get(USER_KEY)
    return spec if isinstance(spec, dict) else None


def evaluate_checkpoint(checkpoint: Path, hw_images: int = DEFAULT_HW_IMAGES, board: str = "pynq-z2",
                        build: Path | None = None, force: bool = False, data: Path | None = None,
                        device: str = "auto", console=None, download: bool = False) -> dict:
    from rich.console import Console

    from bnnflow.build_flows.verify import compare_with_brevitas
    from bnnflow.digest import file_sha256
    from bnnflow.models.checkpoint import load_checkpoint, read_checkpoint, refuse_latent_weights
    from bnnflow.models.data import load_cifar10
    from bnnflow.models.evaluate import brevitas_top1
    from bnnflow.model_ref import network_name
    from bnnflow.models.train import pick_device

    console = console or Console(quiet=True)
    if hw_images < 0:
        raise BnnflowError(f"--hw-images must be 0 (skip the hardware) or more, got {hw_images}.")
    refuse_latent_weights(read_checkpoint(checkpoint), checkpoint)
    net, payload = load_checkpoint(checkpoint)
    x, y = load_cifar10(data, "test", download=download)
    if hw_images > len(x):
        raise BnnflowError(f"--hw-images {hw_images} is more than the {len(x)} test images available.")
    with console.status(f"Brevitas: {len(x)} test images..."):
        top1, logits = brevitas_top1(net, x, y, pick_device(device))
    meta = payload.get("meta", {})
    result = {"checkpoint": str(checkpoint), "model": payload["model"], "variant": payload["variant"],
              "test_images": int(len(x)), "brevitas_top1": top1, "recorded_test_top1": meta.get("test_top1"),
              "hardware": None}
    console.print(f"{network_name(payload['model'], payload['variant'])}: Brevitas top-1 {top1:.2%} on {len(x)} CIFAR-10 test "
                  "images" + (f" (recorded at training: {meta['test_top1']:.2%} on {meta.get('test_images')})"
                              if meta.get("test_top1") is not None else ""))
    if hw_images:
        out = hardware_build(Path(checkpoint), payload, file_sha256(checkpoint), board, build, force, console)
        with console.status(f"FINN folded graph: {hw_images} test images..."):
            hw = compare_with_brevitas(out, x[:hw_images], y[:hw_images], logits[:hw_images])
        result["hardware"] = hw
        ok = hw["same_top1"] == hw["identical_integer_logits"] == hw_images
        console.print(f"FINN hardware graph ({board}): top-1 {hw['hardware_top1']:.2%} on the first {hw_images} "
                      f"images (Brevitas {hw['brevitas_top1']:.2%}); "
                      f"[{'green' if ok else 'red'}]same top-1 on {hw['same_top1']}/{hw_images}[/], "
                      f"identical integer logits on {hw['identical_integer_logits']}/{hw_images} "
                      f"(reference: the build's weights in float64; same top-1 as the checkpoint in float32 on "
                      f"{hw['same_top1_as_checkpoint_float32']}/{hw_images}).")
    hw = result["hardware"]
    result["agree"] = hw is None or hw["same_top1"] == hw["identical_integer_logits"] == hw_images
    return result


def cmd_evaluate(args) -> int:
    from rich.console import Console

    from bnnflow.atomic import write_json
    from bnnflow.cores import set_torch_threads

    set_torch_threads(args.threads)
    console = Console(highlight=False)
    result = evaluate_checkpoint(args.checkpoint, args.hw_images, args.board, args.build, args.force, args.data,
                                 args.device, console, args.download)
    if args.out:
        write_json(args.out, result)
    if not result["agree"]:
        console.print("[red]The hardware graph disagrees with Brevitas on some images.[/]")
        return 1
    return 0


COMMANDS = {"evaluate": cmd_evaluate}
