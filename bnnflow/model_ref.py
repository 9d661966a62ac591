"""Naming a network: one of bnnflow's own (a zoo name) or the user's, as a Python reference.

A user's network is `path/to/file.py:factory` or `package.module:attr`; the factory (a function
or a class) is called with no arguments, or with the keyword arguments of --model-args JSON.
Its source (the file's path and sha256, or the module name), its arguments and its input
scaling form the `source` of the build identity, so an edited model file is a different build.
Light on purpose (no torch): the CLI parses references before anything heavy is imported.
"""

from __future__ import annotations

import json
import keyword
from dataclasses import dataclass
from pathlib import Path

from bnnflow.catalog import MODEL_NAMES
from bnnflow.digest import file_sha256
from bnnflow.errors import BnnflowError

INPUT_SCALES = {"raw": 1.0, "unit": 1.0 / 255.0}  # what the network expects a pixel to be: 0..255 or 0..1
FORMS = "path/to/file.py:factory or package.module:factory"


def shown(text: str, limit: int = 80) -> str:
    """User text echoed in a one-line message: control characters and line breaks as spaces, cut short."""
    flat = "".join(c if c.isprintable() else " " for c in str(text))
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


def is_user_model(name: str) -> bool:
    return ":" in str(name)


def parse_model_ref(text: str) -> ModelRef | None:
    """None for a zoo name; a ModelRef for a Python reference; anything else is one sentence."""
    text = str(text)
    if text in MODEL_NAMES:
        return None
    if ":" not in text:
        raise BnnflowError(f"Unknown model '{shown(text)}': choose one of {', '.join(MODEL_NAMES)}, or name your own "
                           f"network as {FORMS}.")
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


def check_input_scale(scale: str | None, zoo: bool) -> str:
    scale = scale or "raw"
    if scale not in INPUT_SCALES:
        raise BnnflowError(f"--input-scale must be raw (pixels 0..255) or unit (pixels 0..1), not '{shown(scale)}'.")
    if zoo and scale != "raw":
        raise BnnflowError("bnnflow's own models take raw 0..255 pixels: --input-scale is only for your own "
                           "network.")
    return scale


def user_source(ref: ModelRef, model_args: dict, input_scale: str) -> str:
    """The identity source of a user's network: where it comes from, its arguments, its input scale."""
    parts = [ref.source()]
    if model_args:
        parts.append("args=" + json.dumps(model_args, sort_keys=True, separators=(",", ":")))
    if input_scale != "raw":
        parts.append(f"input={input_scale}")
    return ";".join(parts)


def short_source(source: str) -> str:
    """A source for one-sentence messages: the zoo name, or the reference with a short file hash."""
    if source.startswith("zoo:"):
        return source[len("zoo:"):]
    head, sep, rest = source.partition("@sha256:")
    if not sep:
        return source
    digest, _, tail = rest.partition(";")
    return f"{head} (sha256:{digest[:12]}…{';' + tail if tail else ''})"
