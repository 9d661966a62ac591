"""The prepared GPU job: train the three default models at once on one lent GPU, bring results back.

A lent GPU machine (the `device` tool of a working session) gets a copy of the repo and at most
64 MiB besides, reaches no network and has its own Python with CUDA PyTorch but no Brevitas.
So the job travels in pieces prepared here:

  python -m bnnflow.models.gpu_job prepare            # -> .gpu/part1..4 (CIFAR-10 shards), .gpu/whl
  device run, carry .gpu/partK:  python3 models/gpu_job.py stash --part .gpu/partK    (K = 1..3)
  device run, carry .gpu/part4 .gpu/whl:  sh models/gpu_job.sh                        (trains, 10 min)
  python -m bnnflow.models.gpu_job collect FILES_AT    # -> models/runs/MODEL-default-gpu/

`run` (what gpu_job.sh calls) starts one `bnnflow train` per model as parallel processes on the
one GPU: data and augmentation on the GPU, batch 512 with the Adam learning rate scaled by
sqrt(512/128), bf16, compiled. The epoch count is set from a timed first epoch so all three end
within the time budget, and each finished run folder comes back as one tar under $OUT.
The same commands run on a CPU in miniature (tests/test_gpu_job.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

DEFAULT_MODELS = ("resnete", "cnv", "densenet")
GPU_BATCH = 512
BASE_BATCH, BASE_LR = 128, 2e-3
PARTS = 4
WHEELS = ("brevitas==0.13.0", "dependencies==2.0.1", "unfoldNd==0.2.3")


def prepare(dest: Path, data: Path) -> None:
    """Split CIFAR-10 into parts that each travel under the 64 MiB limit, and fetch the wheels."""
    split_data(dest, data)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "-d", str(dest / "whl"), *WHEELS], check=True)


def split_data(dest: Path, data: Path) -> None:
    import numpy as np

    dest.mkdir(parents=True, exist_ok=True)
    with np.load(data / "cifar10_train.npz") as d:
        x, y = d["x"], d["y"]
    with np.load(data / "cifar10_test.npz") as d:
        xt, yt = d["x"], d["y"]
    bounds = np.linspace(0, len(x), PARTS, dtype=int)  # parts 1..3: train thirds; part 4: test
    for k in range(PARTS - 1):
        part = dest / f"part{k + 1}"
        part.mkdir(exist_ok=True)
        np.savez(part / f"train{k}.npz", x=x[bounds[k]:bounds[k + 1]], y=y[bounds[k]:bounds[k + 1]])
    (dest / f"part{PARTS}").mkdir(exist_ok=True)
    np.savez(dest / f"part{PARTS}" / "test.npz", x=xt, y=yt)


def stash(part: Path, store: Path) -> None:
    """On the device: keep one carried part in `store` for the call that trains."""
    store.mkdir(parents=True, exist_ok=True)
    for f in part.glob("*.npz"):
        (store / f.name).write_bytes(f.read_bytes())


def assemble(store: Path) -> Path:
    """The stashed parts as one cifar10_{train,test}.npz folder (what `bnnflow train --data` reads)."""
    import numpy as np

    parts = sorted(store.glob("train*.npz"))
    if len(parts) != PARTS - 1 or not (store / "test.npz").is_file():
        raise SystemExit(f"gpu_job: {store} holds {len(parts)} of {PARTS - 1} training parts and "
                         f"{'a' if (store / 'test.npz').is_file() else 'no'} test part: stash every part first.")
    loaded = [np.load(p) for p in parts]
    out = store / "cifar10"
    out.mkdir(exist_ok=True)
    np.savez(out / "cifar10_train.npz", x=np.concatenate([d["x"] for d in loaded]),
             y=np.concatenate([d["y"] for d in loaded]))
    (out / "cifar10_test.npz").write_bytes((store / "test.npz").read_bytes())
    return out


def train_command(model: str, variant: str, epochs: int, out: Path, data: Path, device: str, batch: int,
                  extra: list[str]) -> list[str]:
    lr = BASE_LR * math.sqrt(batch / BASE_BATCH)  # Adam: square-root scaling with the batch
    return [sys.executable, "-m", "bnnflow.cli", "train", model, "--variant", variant, "--epochs", str(epochs),
            "--batch-size", str(batch), "--lr", f"{lr:.6g}", "--device", device, "--data", str(data),
            "--out", str(out), "--no-progress", "--force", *extra]


def run_parallel(cmds: dict[str, list[str]], logs: Path) -> dict[str, int]:
    logs.mkdir(parents=True, exist_ok=True)
    procs = {m: subprocess.Popen(c, stdout=open(logs / f"{m}.log", "w"), stderr=subprocess.STDOUT)
             for m, c in cmds.items()}
    return {m: p.wait() for m, p in procs.items()}


def run(args) -> int:
    data = assemble(args.store) if args.store else args.data
    work = Path(args.work)
    models = args.models.split(",")
    extra = args.extra.split() if args.extra else []
    epochs = args.epochs
    if epochs is None:  # time one epoch of all models side by side, then fit the schedule to the budget
        t0 = time.time()
        run_parallel({m: train_command(m, args.variant, 1, work / f"probe-{m}", data, args.device, args.batch, extra)
                      for m in models}, work / "logs-probe")
        per_epoch = time.time() - t0
        epochs = max(1, int(args.minutes * 60 / per_epoch) - 1)  # the probe's compile time pays for slack
        print(f"gpu_job: one epoch of {len(models)} models in parallel took {per_epoch:.0f} s: {epochs} epochs fit "
              f"in {args.minutes} min", flush=True)
    codes = run_parallel({m: train_command(m, args.variant, epochs, work / f"{m}-{args.variant}-gpu", data, args.device,
                                           args.batch, extra) for m in models}, work / "logs")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for m in models:
        with tarfile.open(out / f"{m}-{args.variant}-gpu.tar", "w") as tar:
            run_dir = work / f"{m}-{args.variant}-gpu"
            if run_dir.is_dir():
                tar.add(run_dir, arcname=run_dir.name)
            tar.add(work / "logs" / f"{m}.log", arcname=f"{run_dir.name}/train.log")
    (out / "gpu_job.json").write_text(json.dumps({"epochs": epochs, "exit_codes": codes, "batch": args.batch}))
    print(f"gpu_job: exit codes {codes}; results in {out}", flush=True)
    return 0 if all(c == 0 for c in codes.values()) else 1


def collect(files: Path, dest: Path) -> list[Path]:
    """Here: unpack the returned tars into run folders (then `bnnflow runs` / `evaluate`)."""
    dest.mkdir(parents=True, exist_ok=True)
    folders = []
    for tar_path in sorted(files.glob("*-gpu.tar")):
        with tarfile.open(tar_path) as tar:
            tar.extractall(dest, filter="data")
            folders.append(dest / tar.getnames()[0].split("/")[0])
    return folders


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="gpu_job", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="here: data parts and wheels into .gpu/")
    p.add_argument("--dest", type=Path, default=Path(".gpu"))
    p.add_argument("--data", type=Path, default=Path(os.environ.get("BNNFLOW_DATA", "../shared/data")))
    p = sub.add_parser("stash", help="device: keep a carried data part for the training call")
    p.add_argument("--part", type=Path, required=True)
    p.add_argument("--store", type=Path, default=Path("/root/bnnflow-cifar"))
    p = sub.add_parser("run", help="device: train the models in parallel and tar the run folders into --out")
    p.add_argument("--store", type=Path, help="folder of stashed parts (assembled into a CIFAR-10 copy)")
    p.add_argument("--data", type=Path, help="a CIFAR-10 copy instead of --store")
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
    p.add_argument("--work", default="/tmp/bnnflow-gpu-runs")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS))
    p.add_argument("--variant", default="default")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=GPU_BATCH)
    p.add_argument("--epochs", type=int, help="default: as many as fit in --minutes after a timed epoch")
    p.add_argument("--minutes", type=float, default=9.0)
    p.add_argument("--extra", help="more 'bnnflow train' options, e.g. '--subset 512'")
    p = sub.add_parser("collect", help="here: unpack the returned tars into run folders")
    p.add_argument("files", type=Path)
    p.add_argument("--dest", type=Path, default=Path("models/runs"))
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        prepare(args.dest, args.data)
    elif args.cmd == "stash":
        stash(args.part, args.store)
    elif args.cmd == "run":
        if not args.store and not args.data:
            ap.error("run needs --store or --data")
        return run(args)
    else:
        for f in collect(args.files, args.dest):
            print(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
