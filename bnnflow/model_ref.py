"""Naming a network: one of bnnflow's own (a zoo name) or the user's, as a Python reference or a QONNX file.

A user's network is `path/to/file.py:factory` or `package.module:attr`; the factory (a function
or a class) is called with no arguments, or with the keyword arguments of --model-args JSON.
Or it is `path/to/model.onnx`, a QONNX file exported by Brevitas (export_qonnx), weights included.
Its source (the file's path and sha256, or the module name), its arguments and its input
scaling form the `source` of the build identity, so an edited model file is a different build.
Light on purpose (no torch): the CLI parses references before anything heavy is imported.
"""

from __future__ import annotations

import json
import keyword
import math
from dataclasses import dataclass
from pathlib import Path

from bnnflow.catalog import MODEL_NAMES
from bnnflow.digest import file_sha256
from bnnflow.images import CHANNELS
from bnnflow.errors import BnnflowError

INPUT_SCALES = {"raw": 1.0, "unit": 1.0 / 255.0}  # what the network expects a pixel to be: 0..255 or 0..1
FORMS = "path/to/file.py:factory or package.module:factory"
ONNX_SUFFIX = ".onnx"
USER_KEY = "user_model"  # a checkpoint entry that says how to rebuild a user's network


def shown(text: str, limit: int = 80) -> str:
    """User text echoed in a one-line, one-sentence message, cut short: characters that do not print (line
    breaks, invisible ones) as their escapes, so the user sees them, and a space after a full stop too."""
    flat = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(text)).replace(". ", ".\\x20")
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


def _identifier(word: str) -> bool:
    return word.isidentifier() and not keyword.iskeyword(word)


@dataclass(frozen=True)
class ModelRef:
    """A user's network: `file` (a .py path) or `module` (dotted name), and the attribute to call."""

    text: str
    attr: str
    file: Path | None = None
    module: str | None = None

    @property
    def short_name(self) -> str:
        """A name for folders and messages: 'file-factory' or 'module-factory'."""
        base = self.file.stem if self.file is not None else self.module.rsplit(".", 1)[-1]
        return f"{base}-{self.attr.replace('.', '-')}"

    def source(self) -> str:
        """'file:/abs/net.py:factory@sha256:<hex>' or 'module:pkg.mod:factory'."""
        if self.file is None:
            return f"module:{self.module}:{self.attr}"
        path = self.file.resolve()
        if not path.is_file():
            raise BnnflowError(f"Model file {self.file} does not exist: name an existing .py file as "
                               f"{FORMS}.")
        return f"file:{path}:{self.attr}@sha256:{file_sha256(path)}"


@dataclass(frozen=True)
class OnnxRef:
    """A user's network as a QONNX file (exported by Brevitas): the graph and its weights in one file."""

    text: str
    file: Path
    attr: str = ""
    module: str | None = None

    @property
    def short_name(self) -> str:
        return f"{self.file.stem}-onnx"

    def source(self) -> str:
        """'onnx:/abs/model.onnx@sha256:<hex>'."""
        path = self.file.resolve()
        if not path.is_file():
            raise BnnflowError(f"QONNX file {shown(self.file)} does not exist: name an existing .onnx file exported "
                               "with Brevitas' export_qonnx.")
        return f"onnx:{path}@sha256:{file_sha256(path)}"


def is_onnx_model(name) -> bool:
    return str(name).lower().endswith(ONNX_SUFFIX) and str(name) not in MODEL_NAMES


def is_user_model(name: str) -> bool:
    return ":" in str(name) or is_onnx_model(name)


def parse_model_ref(text: str) -> ModelRef | OnnxRef | None:
    """None for a zoo name; a ModelRef for a Python reference, an OnnxRef for a .onnx file; anything else is
    one sentence."""
    text = str(text)
    if text in MODEL_NAMES:
        return None
    if is_onnx_model(text):  # before the ':' test: a Windows path has one
        if len(text) <= len(ONNX_SUFFIX) or "\n" in text or "\x00" in text:
            raise BnnflowError(f"'{shown(text)}' is not a file name: name your QONNX file as path/to/model.onnx.")
        return OnnxRef(text=text, file=Path(text))
    if ":" not in text:
        raise BnnflowError(f"Unknown model '{shown(text)}': choose one of {', '.join(MODEL_NAMES)}, or name your own "
                           f"network as {FORMS}, or a QONNX file as path/to/model.onnx.")
    left, _, attr = text.rpartition(":")
    if not attr or not all(_identifier(w) for w in attr.split(".")):
        raise BnnflowError(f"Model reference '{shown(text)}' does not end in a Python name after the ':': write it as "
                           f"{FORMS}.")
    if left.endswith(".py") and len(left) > 3 and "\n" not in left and "\x00" not in left:
        return ModelRef(text=text, attr=attr, file=Path(left))
    if left and all(_identifier(w) for w in left.split(".")):
        return ModelRef(text=text, attr=attr, module=left)
    raise BnnflowError(f"Model reference '{shown(text)}' names neither a .py file nor a Python module before the ':': "
                       f"write it as {FORMS}.")


def parse_model_args(text: str | None) -> dict:
    """--model-args: a JSON object of keyword arguments for the factory."""
    if text is None or text == "":
        return {}
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise BnnflowError("--model-args must be a JSON object of keyword arguments for the factory, "
                           "like '{\"pretrained\": false}'.")
    bad = [k for k in value if not _identifier(k)]
    if bad:
        raise BnnflowError(f"--model-args key '{shown(bad[0])}' is not a Python keyword-argument name.")
    return value


def parse_channels(text: str | None, flag: str) -> tuple[float, ...] | None:
    """--input-mean / --input-std: one number per channel, comma-separated ('0.49,0.48,0.45')."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(v) for v in values):
        raise BnnflowError(f"{flag} must be one number per input channel, separated by commas (like "
                           f"0.49,0.48,0.45), not '{shown(text)}'.")
    if flag == "--input-std" and min(values) <= 0:
        raise BnnflowError(f"--input-std must be positive for every channel, not '{shown(text)}'.")
    return values


def input_description(scale: str | None, mean: str | None = None, std: str | None = None) -> str | None:
    """The pixels a network was trained on as one string: 'unit', or 'unit;mean=a,b,c;std=d,e,f' (mean and std
    per channel, in the units --input-scale gives, as torchvision's Normalize takes them)."""
    if mean is None and std is None:
        return scale
    if (mean is None) != (std is None):
        raise BnnflowError("--input-mean and --input-std go together: give both, one number per channel each.")
    m, s = parse_channels(mean, "--input-mean"), parse_channels(std, "--input-std")
    if len(m) != len(s):
        raise BnnflowError(f"--input-mean has {len(m)} channels and --input-std {len(s)}: give one number per "
                           "channel in each.")
    if len(m) not in (1, CHANNELS):
        raise BnnflowError(f"--input-mean and --input-std have {len(m)} numbers, but the network takes "
                           f"{CHANNELS}-channel images: give {CHANNELS} (or one for all channels).")
    join = lambda vs: ",".join(repr(v) for v in vs)  # noqa: E731  (shortest text that reads back exactly)
    return f"{scale or 'raw'};mean={join(m)};std={join(s)}"


def input_affine(text: str | None) -> tuple[float, tuple[float, ...] | None, tuple[float, ...] | None]:
    """(pixel step, mean or None, std or None) of an input description (see input_description)."""
    scale, *rest = (text or "raw").split(";")
    parts = dict(p.split("=", 1) for p in rest if "=" in p)
    mean, std = parse_channels(parts.get("mean"), "--input-mean"), parse_channels(parts.get("std"), "--input-std")
    return INPUT_SCALES[scale], mean, std


def check_input_scale(scale: str | None, zoo: bool) -> str:
    scale = scale or "raw"
    name, *rest = scale.split(";")
    if name not in INPUT_SCALES:
        raise BnnflowError(f"--input-scale must be raw (pixels 0..255) or unit (pixels 0..1), not '{shown(name)}'.")
    if zoo and scale != "raw":
        flag = "--input-mean/--input-std are" if rest else "--input-scale is"
        raise BnnflowError(f"bnnflow's own models take raw 0..255 pixels: {flag} only for your own network.")
    if rest:
        parts = dict(p.split("=", 1) for p in rest if "=" in p)
        scale = input_description(name, parts.get("mean"), parts.get("std"))
    return scale


def user_source(ref: ModelRef | OnnxRef, model_args: dict, input_scale: str) -> str:
    """The identity source of a user's network: where it comes from, its arguments, its input scale."""
    parts = [ref.source()]
    if model_args:
        parts.append("args=" + json.dumps(model_args, sort_keys=True, separators=(",", ":")))
    if input_scale != "raw":
        parts.append(f"input={input_scale}")
    return ";".join(parts)


def portable_ref(text: str) -> str:
    """A FILE.py:factory reference with the file's absolute path, so it works from any directory; others as given."""
    ref = parse_model_ref(text) if is_user_model(text) else None
    return f"{ref.file.resolve()}:{ref.attr}" if isinstance(ref, ModelRef) and ref.file is not None else text


def network_name(model: str, variant: str, sep: str = "/") -> str:
    """A network in messages, tables and folder names: 'resnete/default', or a user's as 'file-factory'."""
    return parse_model_ref(model).short_name if is_user_model(model) else f"{model}{sep}{variant}"


def short_source(source: str) -> str:
    """A source for one-sentence messages: the zoo name, or the reference with a short file hash."""
    if source.startswith("zoo:"):
        return source[len("zoo:"):]
    head, sep, rest = source.partition("@sha256:")
    if not sep:
        return source
    digest, _, tail = rest.partition(";")
    return f"{head} (sha256:{digest[:12]}…{';' + tail if tail else ''})"
