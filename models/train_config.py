"""The training recipe: options, defaults, checks, TrainConfig, and its command-line form.

`bnnflow --help` loads this file on its own (bnnflow/cli.py `_light`), outside the
bnnflow.models package: so nothing heavy and no relative import at module level. The command
itself (bnnflow/commands/train.py) imports the training only when it runs.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from bnnflow.catalog import MODEL_NAMES
from bnnflow.cli_args import DOWNLOAD_HELP, add_user_input_args
from bnnflow.errors import BnnflowError

MODELS = MODEL_NAMES
OPTIMIZERS = ("adam", "sgd", "psi")
DEFAULT_LR = {"adam": 2e-3, "sgd": 0.1, "psi": 2e-3}  # psi: lr of the Adam part
DEFAULT_PSI_LR = 30.0  # angular steps like Adam 2e-3 (steps on the RMS-1 representative, see psi.py)
ENGINES = ("fast", "brevitas")
TEST_EVALS = ("selected", "every")
DEFAULT_VAL_SIZE = 5000  # the last 5,000 training images select best.pt; the test set never does
DEFAULT_TEACHER_WEIGHT, DEFAULT_TEACHER_TEMPERATURE = 0.5, 4.0  # Hinton et al.'s usual distillation mix
# recipe options: None on the command line means "default" for a new run, "as saved" for --resume
RECIPE_DEFAULTS = dict(variant="default", epochs=150, batch_size=128, lr=None, optimizer="adam", psi_lr=DEFAULT_PSI_LR,
                       momentum=0.9, weight_decay=0.0, seed=0, recu=False, tau_start=0.85, tau_end=0.99, subset=None,
                       test_subset=None, val_size=DEFAULT_VAL_SIZE, label_smoothing=0.0, warmup_epochs=0,
                       real_weights_epochs=0, teacher=None, teacher_weight=DEFAULT_TEACHER_WEIGHT,
                       teacher_temperature=DEFAULT_TEACHER_TEMPERATURE)
FIXED_ON_RESUME = ("model", "variant", "batch_size", "lr", "optimizer", "psi_lr", "momentum", "weight_decay", "seed",
                   "recu", "tau_start", "tau_end", "subset", "test_subset", "val_size", "label_smoothing",
                   "warmup_epochs", "real_weights_epochs", "teacher", "teacher_weight", "teacher_temperature",
                   "model_args", "input_scale")
# how each step is computed may change on --resume (same state, other arithmetic): logged per epoch
ENGINE_KEYS = ("engine", "bf16", "compile")
# Compiling the fp32 evaluation graph costs ~10 s here and pays back over a few thousand images
# (`bnnflow train MODEL --benchmark-steps N` times both): a run compiles it when it evaluates at least
# this many images in one process; short runs and tests evaluate eagerly.
EVAL_COMPILE_MIN_IMAGES = 20_000
DEFAULT_BN_IMAGES = 10_000  # models/precise_bn.py says why; here so that --help needs no torch


@dataclass
class TrainConfig:
    model: str
    variant: str = "default"
    epochs: int = 150
    batch_size: int = 128
    lr: float | None = None
    optimizer: str = "adam"
    psi_lr: float = DEFAULT_PSI_LR
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    recu: bool = False
    tau_start: float = 0.85
    tau_end: float = 0.99
    label_smoothing: float = 0.0
    warmup_epochs: int = 0
    real_weights_epochs: int = 0  # two-stage training: real-valued weights (binary activations) first
    teacher: str | None = None  # distillation: a checkpoint whose soft labels join the loss (distill.py)
    teacher_weight: float = DEFAULT_TEACHER_WEIGHT
    teacher_temperature: float = DEFAULT_TEACHER_TEMPERATURE
    model_args: dict | None = None  # a user's network: its factory's keyword arguments
    input_scale: str | None = None  # a user's network: the pixels it takes (bnnflow.model_ref.input_description)
    subset: int | None = None
    test_subset: int | None = None
    val_size: int = DEFAULT_VAL_SIZE
    engine: str = "fast"
    bf16: bool | None = None  # None: on for the fast engine where the CPU/GPU has bf16 units
    compile: bool = True
    shorten: bool = False
    data: str | None = None
    download: bool = False  # fetch the official archive into data's folder when no copy is there
    out: str | None = None
    resume: bool = False
    force: bool = False
    device: str = "auto"
    threads: int | None = None
    stop_after: int | None = None
    progress: bool = True
    test_eval: str = "selected"  # test set on the epochs that become best.pt only, or "every" epoch
    bn_images: int | None = None  # precise batch norm before each evaluation (precise_bn.py); None: the default
    explicit: set = field(default_factory=set)  # options given on the command line

    def recipe(self) -> dict:
        keys = ("model", "variant", "epochs", "batch_size", "lr", "optimizer", "psi_lr", "momentum", "weight_decay",
                "seed", "recu", "tau_start", "tau_end", "subset", "test_subset", "val_size", "label_smoothing",
                "warmup_epochs", "real_weights_epochs", "teacher", "teacher_weight", "teacher_temperature")
        d = {k: getattr(self, k) for k in keys}
        if self.teacher is None:
            d.pop("teacher_weight"), d.pop("teacher_temperature")
        if self.optimizer != "psi":
            d.pop("psi_lr")
        if self.optimizer == "adam":
            d.pop("momentum")
        if not self.recu:
            d.pop("tau_start"), d.pop("tau_end")
        if self.is_user_model:  # how the network is built is part of what is trained
            d.update(model_args=self.model_args or {}, input_scale=self.input_scale or "raw")
        return d

    @property
    def name(self) -> str:
        """'resnete/default', or a user's network as 'file-factory'."""
        from bnnflow.model_ref import network_name

        return network_name(self.model, self.variant)

    @property
    def is_user_model(self) -> bool:
        from bnnflow.model_ref import is_user_model

        return self.model is not None and is_user_model(self.model)


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train", help="train a model from scratch on CIFAR-10 (resumable, deterministic)",
        description="Train a binary network from scratch on CIFAR-10 with the simple recipe of Bethge et al. "
                    "(no pre-training, no scaling factors, straight-through sign, crop+flip augmentation, "
                    "Adam with a cosine schedule), through a fast compiled twin of the Brevitas model by default. "
                    "The last 5,000 training images are held out to select best.pt (for 'bnnflow build "
                    "--checkpoint'); last.pt is for --resume; log.csv, log.json and curve.png log every epoch. "
                    "Your own Brevitas network (FILE.py:factory) trains the same way through Brevitas' forward, "
                    "and its best.pt records how to rebuild it for 'bnnflow evaluate' and 'bnnflow build "
                    "--checkpoint'.")
    p.add_argument("model", nargs="?", help=f"network: {', '.join(MODELS)}, or your own Brevitas network as "
                                            "path/to/file.py:factory or package.module:factory (optional with "
                                            "--resume)")
    _add_recipe_options(p)
    add_user_input_args(p)
    _add_run_options(p)
    return p


def _add_recipe_options(p: argparse.ArgumentParser) -> None:
    """What is trained: fixed for the life of a run (--resume refuses changes, except --epochs)."""
    p.add_argument("--variant", help="width/depth variant (see 'bnnflow models'); default: default")
    p.add_argument("--epochs", type=int, help=f"training epochs; default: {RECIPE_DEFAULTS['epochs']} (with --resume: "
                                              "extends the run, stretching the rest of the cosine schedule)")
    p.add_argument("--batch-size", type=int, help=f"default: {RECIPE_DEFAULTS['batch_size']}")
    p.add_argument("--lr", type=float, help="peak learning rate of the cosine schedule; default: 2e-3 (adam, "
                                            "and the Adam part of psi), 0.1 (sgd)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="adam (default); sgd (momentum); psi: SGD on the PSI "
                                                           "manifold for weights feeding a sign or a batch norm, "
                                                           "Adam for the rest")
    p.add_argument("--psi-lr", type=float, help=f"learning rate of the PSI part; default: {DEFAULT_PSI_LR}")
    p.add_argument("--momentum", type=float, help="momentum of sgd and psi; default: 0.9")
    p.add_argument("--weight-decay", type=float, help="L2 on conv/linear weights outside PSI; default: 0")
    p.add_argument("--recu", action=argparse.BooleanOptionalAction, default=None,
                   help="ReCU: weight standardisation and rectified clamp of binary latent weights (off by default)")
    p.add_argument("--tau-start", type=float, help="ReCU's tau at the first epoch; default: 0.85")
    p.add_argument("--tau-end", type=float, help="ReCU's tau at the last epoch; default: 0.99")
    p.add_argument("--label-smoothing", type=float, help="label smoothing of the training loss; default: 0")
    p.add_argument("--warmup-epochs", type=int, help="linear learning-rate warm-up before the cosine decay; default: 0")
    p.add_argument("--real-weights-epochs", type=int, metavar="N",
                   help="two-stage training: the first N epochs train real-valued weights under binary activations "
                        "(fast engine), the rest the binary network, which is what is evaluated and exported "
                        "throughout; default: 0")
    p.add_argument("--teacher", metavar="CKPT",
                   help="distillation: a trained checkpoint (e.g. models/checkpoints/resnete-default.pt) labels "
                        "every training image once; the loss mixes its softened labels with the true ones")
    p.add_argument("--teacher-weight", type=float,
                   help=f"share of the teacher's term in the loss, 0..1; default: {DEFAULT_TEACHER_WEIGHT}")
    p.add_argument("--teacher-temperature", type=float,
                   help=f"softmax temperature of the distillation term; default: {DEFAULT_TEACHER_TEMPERATURE}")
    p.add_argument("--seed", type=int, help="seed of weights, shuffling and augmentation; default: 0")
    p.add_argument("--subset", type=int, help="train on the first N training images (quick runs)")
    p.add_argument("--test-subset", type=int, help="evaluate on the first N test images (default: all 10,000)")
    p.add_argument("--val-size", type=int, help=f"hold out the last N training images to select best.pt "
                                                f"(never the test set); default: {DEFAULT_VAL_SIZE}; 0: best.pt is "
                                                "the last epoch")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """How and where it runs: engine, data, run folder, device; free to change on --resume."""
    p.add_argument("--engine", choices=ENGINES, help="fast (default): a compiled plain-PyTorch twin that shares "
                                                     "the Brevitas model's weights and equals its forward in fp32; "
                                                     "brevitas: Brevitas' own forward (slow on CPUs)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast for the fast engine's training steps (evaluation stays fp32); default: on "
                        "where the CPU has AMX/AVX512-BF16 or on a GPU")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the fast engine's forward (default: on; ~1 min to compile on 2 cores), and "
                        f"its fp32 evaluation in runs that evaluate {EVAL_COMPILE_MIN_IMAGES:,}+ images")
    p.add_argument("--shorten", action="store_true",
                   help="with --resume and a smaller --epochs: end the run early on the shortened schedule")
    p.add_argument("--benchmark-steps", type=int, metavar="N",
                   help="time N training steps of the Brevitas forward and of the fast engine side by side on "
                        "the same batches, print images/s and the ratio, and exit (nothing is written)")
    p.add_argument("--data", type=Path, help="CIFAR-10 copy: folder with cifar10_{train,test}.npz or "
                                             "cifar-10-batches-py, or the train .npz (test beside it)")
    p.add_argument("--download", action="store_true", help=DOWNLOAD_HELP)
    p.add_argument("--out", type=Path, help="run folder; default: runs/MODEL-VARIANT[-recu][-psi]-sSEED")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where last.pt ended")
    p.add_argument("--force", action="store_true", help="replace an existing run folder")
    p.add_argument("--stop-after-epoch", dest="stop_after", type=int, metavar="EPOCH",
                   help="stop once this many epochs are done (the schedule still spans --epochs; --resume goes on)")
    p.add_argument("--stop-after", dest="stop_after", type=int, help=argparse.SUPPRESS)  # old spelling, one release
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto (cuda if available)")
    p.add_argument("--threads", type=int, help="CPU threads for torch; default: all cores")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per epoch)")
    p.add_argument("--bn-images", type=int, metavar="N",
                   help="before each evaluation, re-estimate the batch-norm statistics as the plain average over "
                        "the same N augmented training images (precise BN; training steps are unchanged), instead "
                        "of the running averages of the last batches, which make a binary network's validation "
                        f"top-1 swing by points between epochs; default: {DEFAULT_BN_IMAGES:,}; 0: off")
    p.add_argument("--test-eval", choices=TEST_EVALS, default="selected",
                   help="when the test set is evaluated: selected (default) only on the epochs that become "
                        "best.pt, whose test top-1 is what gets reported (it never selects anything, and this "
                        "saves about a third of a CPU epoch), or every epoch for a full test curve")


def config_from_args(args) -> TrainConfig:
    """The config of the parsed flags; `explicit` records those given, which --resume may not change."""
    explicit = set()
    values = {}
    for key, default in RECIPE_DEFAULTS.items():
        v = getattr(args, key, None)
        if v is None:
            values[key] = default
        else:
            values[key] = v
            explicit.add(key)
    from bnnflow.model_ref import portable_ref  # a FILE.py:factory run resumes from any directory

    model, user = args.model, _user_network_args(args)
    if model is not None:
        explicit.add("model")
        model = portable_ref(model)
    explicit.update(k for k, v in user.items() if v is not None)
    explicit.update(k for k in ENGINE_KEYS if getattr(args, k, None) is not None)
    return TrainConfig(model=model, **user, data=str(args.data) if args.data else None, download=args.download,
                       out=str(args.out) if args.out else None, resume=args.resume, force=args.force,
                       device=args.device, threads=args.threads, stop_after=args.stop_after,
                       progress=not args.no_progress, test_eval=args.test_eval, explicit=explicit, engine=args.engine or "fast",
                       bf16=args.bf16, compile=True if args.compile is None else args.compile,
                       shorten=args.shorten, bn_images=args.bn_images, **values)


def _user_network_args(args) -> dict:
    """--model-args and the input scaling flags as TrainConfig fields (None where not given)."""
    from bnnflow.model_ref import input_description, parse_model_args

    text = getattr(args, "model_args", None)
    scale = input_description(getattr(args, "input_scale", None), getattr(args, "input_mean", None),
                              getattr(args, "input_std", None))
    return {"model_args": parse_model_args(text) if text is not None else None, "input_scale": scale}


def _check_user_network(cfg: TrainConfig) -> None:
    """A user's network trains through Brevitas' own forward (the fast twin knows bnnflow's models only)."""
    from bnnflow.model_ref import check_input_scale, is_onnx_model, shown

    if is_onnx_model(cfg.model):
        raise BnnflowError(f"{shown(cfg.model)} is an exported graph, which cannot be trained: train the Brevitas "
                           "network it was exported from (path/to/file.py:factory).")
    if cfg.variant != "default":
        raise BnnflowError("--variant is for bnnflow's own models: pass --model-args for other sizes of your network.")
    check_input_scale(cfg.input_scale, zoo=False)
    if cfg.engine == "fast":
        if "engine" in cfg.explicit:
            raise BnnflowError("--engine fast trains bnnflow's own models only (its twin mirrors their layers): "
                               "train your network with --engine brevitas.")
        cfg.engine = "brevitas"


def check_config(cfg: TrainConfig) -> None:
    """One sentence for the first impossible option, before any data is loaded or file written."""
    from .zoo import get_variant

    if cfg.model is None:
        raise BnnflowError(f"Name the model to train ({', '.join(MODELS)}), or pass --resume with --out RUN_FOLDER.")
    if cfg.is_user_model:
        _check_user_network(cfg)
    else:
        if cfg.model_args is not None or cfg.input_scale is not None:
            raise BnnflowError("--model-args and --input-scale/--input-mean/--input-std are for your own network: "
                               "bnnflow's own models take --variant and raw pixels.")
        get_variant(cfg.model, cfg.variant)
    if cfg.epochs < 1:
        raise BnnflowError(f"--epochs must be at least 1, got {cfg.epochs}.")
    if cfg.batch_size < 2:
        raise BnnflowError(f"--batch-size must be at least 2 (batch norm needs two images per batch), got "
                           f"{cfg.batch_size}.")
    if not 0 <= cfg.label_smoothing < 1:
        raise BnnflowError(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}.")
    if not 0 <= cfg.warmup_epochs < cfg.epochs:
        raise BnnflowError(f"--warmup-epochs must be from 0 to --epochs - 1 ({cfg.epochs - 1}), got {cfg.warmup_epochs}.")
    if not 0 <= cfg.real_weights_epochs < cfg.epochs:
        raise BnnflowError(f"--real-weights-epochs must be from 0 to --epochs - 1 ({cfg.epochs - 1}), got "
                           f"{cfg.real_weights_epochs}.")
    if cfg.real_weights_epochs and cfg.engine != "fast":
        raise BnnflowError("--real-weights-epochs needs the fast engine (its twin computes the real-weight stage; "
                           "Brevitas' forward always binarises the weights).")
    if not 0 <= cfg.teacher_weight <= 1:
        raise BnnflowError(f"--teacher-weight must be in [0, 1], got {cfg.teacher_weight}.")
    if not cfg.teacher_temperature > 0:
        raise BnnflowError(f"--teacher-temperature must be positive, got {cfg.teacher_temperature}.")
    if cfg.teacher is not None and not Path(cfg.teacher).is_file():
        raise BnnflowError(f"The teacher checkpoint {cfg.teacher} does not exist: pass a best.pt or "
                           "models/checkpoints/MODEL-default.pt.")
    if cfg.val_size < 0:
        raise BnnflowError(f"--val-size must be 0 or more images, got {cfg.val_size}.")
    if cfg.engine not in ENGINES:
        raise BnnflowError(f"Unknown engine '{cfg.engine}': choose one of {', '.join(ENGINES)}.")
    for name, v in (("lr", cfg.lr), ("psi-lr", cfg.psi_lr)):
        if v is not None and not v > 0:
            raise BnnflowError(f"--{name} must be positive, got {v}.")
    if not 0 <= cfg.momentum < 1:
        raise BnnflowError(f"--momentum must be in [0, 1), got {cfg.momentum}.")
    if cfg.weight_decay < 0:
        raise BnnflowError(f"--weight-decay must not be negative, got {cfg.weight_decay}.")
    if cfg.recu and not 0.5 < cfg.tau_start <= cfg.tau_end < 1:
        raise BnnflowError(f"ReCU needs 0.5 < --tau-start <= --tau-end < 1, got {cfg.tau_start} and {cfg.tau_end}.")
    for name, v in (("subset", cfg.subset), ("test-subset", cfg.test_subset)):
        if v is not None and v < 2:
            raise BnnflowError(f"--{name} must be at least 2 images, got {v}.")
    if cfg.stop_after is not None and cfg.stop_after < 1:
        raise BnnflowError(f"--stop-after-epoch must be at least 1, got {cfg.stop_after}.")
    if cfg.bn_images is not None and cfg.bn_images < 0:
        raise BnnflowError(f"--bn-images must be 0 (off) or more images, got {cfg.bn_images}.")
    if cfg.threads is not None and cfg.threads < 1:
        raise BnnflowError(f"--threads must be at least 1, got {cfg.threads}.")
