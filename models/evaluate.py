"""`bnnflow evaluate`: the test top-1 of a checkpoint, in PyTorch and on the FINN hardware graph.

Brevitas: top-1 on the full CIFAR-10 test set (10,000 images).  Hardware: the checkpoint is
built to FINN's estimate step (`build_flows.build.run_build`), and the specialised, folded
dataflow graph is executed functionally (`build_flows.verify.run_finn_graph`) on the first
--hw-images test images; its integer logits and top-1 must equal Brevitas' image for image.

Like train.py, nothing heavy is imported at module level (`bnnflow --help` loads the parser).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bnnflow.errors import BnnflowError

DEFAULT_HW_IMAGES = 100


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate", help="test top-1 of a checkpoint: Brevitas on all 10,000 images, the FINN graph image for image",
        description="Top-1 of a trained checkpoint on the full CIFAR-10 test set with Brevitas, then the same "
                    "checkpoint built to FINN's estimate step and its folded hardware graph executed on "
                    "--hw-images test images: the hardware must agree with Brevitas on every image.")
    p.add_argument("checkpoint", type=Path, help="best.pt written by 'bnnflow train' (or any bnnflow checkpoint)")
    p.add_argument("--hw-images", type=int, default=DEFAULT_HW_IMAGES,
                   help="test images for the hardware graph, 0 to skip the build; default: %(default)s")
    p.add_argument("--board", default="pynq-z2", help="target board of the build; default: %(default)s")
    p.add_argument("--build", type=Path, help="build folder; default: build/eval-MODEL-VARIANT-BOARD-SHA "
                                              "(reused when it holds this checkpoint)")
    p.add_argument("--force", action="store_true", help="rebuild even if the build folder exists")
    p.add_argument("--data", type=Path, help="CIFAR-10 copy: .npz, cifar-10-batches-py folder, or its parent")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="for the Brevitas pass")
    p.add_argument("--threads", type=int, help="CPU threads for torch; default: all cores")
    p.add_argument("--report", type=Path, help="also write the result as JSON here")
    return p


def brevitas_top1(net, x_uint8, y, device, batch: int = 500):
    """(top-1, float logits N x 10 as numpy) of `net` on uint8 N x 32 x 32 x 3 images."""
    import numpy as np
    import torch

    from .data import to_model_input

    net = net.to(device).eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x_uint8), batch):
            outs.append(net(to_model_input(x_uint8[i:i + batch]).to(device)).float().cpu().numpy())
    logits = np.concatenate(outs)
    return float(np.mean(logits.argmax(1) == y)), logits


def hardware_build(checkpoint: Path, payload: dict, sha: str, board: str, build: Path | None, force: bool, console):
    """A build of `checkpoint` that reached the estimate step: reuse, resume or make one."""
    from bnnflow.build_flows import flow
    from bnnflow.build_flows.build import BuildRequest, run_build
    from bnnflow.build_flows.verify import FOLDED_STEP

    out = Path(build or Path("build") / f"eval-{payload['model']}-{payload['variant']}-{board}-{sha[:12]}").resolve()
    state = flow.BuildState(out)
    same = state.data.get("checkpoint_sha256") == sha
    resume = False
    if out.exists() and any(out.iterdir()) and not force:
        if not same:
            raise BnnflowError(f"Build folder {out} holds another network than {checkpoint}: pass --force to rebuild "
                               "it, or another --build.")
        if FOLDED_STEP in state.done:
            console.print(f"Reusing the build in {out}.")
            return out
        resume = bool(state.done)
    req = BuildRequest(model=payload["model"], variant=payload["variant"], board=board, checkpoint=checkpoint,
                       out=out, resume=resume, stop_after=FOLDED_STEP, force=force or (out.exists() and not resume))
    run_build(req, console)
    if FOLDED_STEP not in flow.BuildState(out).done:
        raise BnnflowError(f"The build in {out} stopped before '{FOLDED_STEP}': see {out / 'build.log'}.")
    return out


def hardware_compare(out: Path, brevitas_logits, x_uint8, y) -> dict:
    """Folded FINN graph vs Brevitas on the same images: identical top-1 and integer logits counts."""
    import numpy as np
    from qonnx.core.modelwrapper import ModelWrapper

    from bnnflow.build_flows import flow
    from bnnflow.build_flows.verify import STREAMLINED_STEP, _affine, folded_model_and_input, run_finn_graph, to_integer_domain

    n = len(x_uint8)
    a, b = _affine(ModelWrapper(str(flow.intermediate_path(out, STREAMLINED_STEP))))
    ref, worst = to_integer_domain(brevitas_logits, a, b)
    x = np.ascontiguousarray(x_uint8.transpose(0, 3, 1, 2)).astype(np.float32)
    child, xf = folded_model_and_input(out, x)
    hw = np.rint(run_finn_graph(child, xf)).astype(np.int64)
    ref_top1, hw_top1 = ref.argmax(1), hw.argmax(1)
    return {"images": n, "same_top1": int(np.sum(ref_top1 == hw_top1)),
            "identical_integer_logits": int(np.sum(np.all(ref == hw, axis=1))),
            "brevitas_top1": float(np.mean(ref_top1 == y)), "hardware_top1": float(np.mean(hw_top1 == y)),
            "brevitas_max_distance_to_integer": worst, "build": str(out)}


def evaluate_checkpoint(checkpoint: Path, hw_images: int = DEFAULT_HW_IMAGES, board: str = "pynq-z2",
                        build: Path | None = None, force: bool = False, data: Path | None = None,
                        device: str = "auto", console=None) -> dict:
    import numpy as np
    from rich.console import Console

    from .checkpoint import file_sha256, load_checkpoint, read_checkpoint
    from .data import load_cifar10
    from .train import pick_device

    console = console or Console(quiet=True)
    if hw_images < 0:
        raise BnnflowError(f"--hw-images must be 0 (skip the hardware) or more, got {hw_images}.")
    raw = read_checkpoint(checkpoint)
    if any(".parametrizations." in k for k in raw["state_dict"]):
        raise BnnflowError(f"{checkpoint} holds ReCU/PSI latent training weights (a last.pt): evaluate the best.pt "
                           "of the same run, which holds the weights the hardware uses.")
    del raw
    net, payload = load_checkpoint(checkpoint)
    x, y = load_cifar10(data, "test")
    if hw_images > len(x):
        raise BnnflowError(f"--hw-images {hw_images} is more than the {len(x)} test images available.")
    with console.status(f"Brevitas: {len(x)} test images..."):
        top1, logits = brevitas_top1(net, x, y, pick_device(device))
    meta = payload.get("meta", {})
    result = {"checkpoint": str(checkpoint), "model": payload["model"], "variant": payload["variant"],
              "test_images": int(len(x)), "brevitas_top1": top1, "recorded_test_top1": meta.get("test_top1"),
              "hardware": None}
    console.print(f"{payload['model']}/{payload['variant']}: Brevitas top-1 {top1:.2%} on {len(x)} CIFAR-10 test "
                  "images" + (f" (recorded at training: {meta['test_top1']:.2%} on {meta.get('test_images')})"
                              if meta.get("test_top1") is not None else ""))
    if hw_images:
        sha = file_sha256(checkpoint)
        out = hardware_build(Path(checkpoint), payload, sha, board, build, force, console)
        with console.status(f"FINN folded graph: {hw_images} test images..."):
            hw = hardware_compare(out, logits[:hw_images], x[:hw_images], y[:hw_images])
        result["hardware"] = hw
        ok = hw["same_top1"] == hw_images
        console.print(f"FINN hardware graph ({board}): top-1 {hw['hardware_top1']:.2%} on the first {hw_images} "
                      f"images (Brevitas {hw['brevitas_top1']:.2%}); "
                      f"[{'green' if ok else 'red'}]same top-1 on {hw['same_top1']}/{hw_images}[/], "
                      f"identical integer logits on {hw['identical_integer_logits']}/{hw_images}.")
    result["agree"] = result["hardware"] is None or result["hardware"]["same_top1"] == hw_images
    return result


def cmd_evaluate(args) -> int:
    import os

    import torch
    from rich.console import Console

    from bnnflow.atomic import write_json

    if args.threads is not None:
        if args.threads < 1:
            raise BnnflowError(f"--threads must be at least 1, got {args.threads}.")
        torch.set_num_threads(args.threads)
    else:
        torch.set_num_threads(os.cpu_count() or 1)
    console = Console(highlight=False)
    result = evaluate_checkpoint(args.checkpoint, args.hw_images, args.board, args.build, args.force, args.data,
                                 args.device, console)
    if args.report:
        write_json(args.report, result)
    if not result["agree"]:
        console.print("[red]The hardware graph disagrees with Brevitas on some images.[/]")
        return 1
    return 0
