"""A user's Brevitas network: imported from its reference, its weights loaded, its pixels scaled.

The hardware always takes raw uint8 pixels. A network trained on 0..1 pixels (--input-scale unit)
is wrapped in `PixelInput`, whose constant 1/255 exports as one scalar Mul at the graph input;
FINN's streamlining then folds it into the first thresholds, so no pixel scaling is left in hardware.
Every failure here (a missing file, a factory that raises, weights that do not fit) is one sentence.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

from bnnflow.errors import BnnflowError
from bnnflow.model_ref import (FORMS, ModelRef, check_input_scale, input_affine, parse_model_args, parse_model_ref,
                               portable_ref)

from .packing import load_packed


class PixelScale(nn.Module):
    """x * step: raw pixels to what the network was trained on; `grid_step` tells the tie guard the grid.
    With a per-channel mean and std, (x * step - mean) / std, exported as one Mul and one Add by per-channel
    constants; its grid is then offset per channel (grid_step None)."""

    def __init__(self, step: float, mean=None, std=None):
        super().__init__()
        self.grid_step = float(step)
        self.affine = mean is not None
        if self.affine:
            mean, std = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
            # buffers outside the state_dict: a user's checkpoint never holds them
            self.register_buffer("mul", (step / std).float().reshape(1, -1, 1, 1), persistent=False)
            self.register_buffer("add", (-mean / std).float().reshape(1, -1, 1, 1), persistent=False)
            self.grid_step = None  # an offset lattice per channel: the tie guard cannot read it

    def forward(self, x):
        if self.affine:
            return x * self.mul.to(x.dtype) + self.add.to(x.dtype)
        return x * self.grid_step


class PixelInput(nn.Module):
    """A user's network as bnnflow feeds it: contiguous N x 3 x 32 x 32 raw pixels, scaled when it
    was trained on 0..1 (`step` 1/255; 1: no scaling, and nothing added to the graph), and normalised
    per channel when it was trained on (x - mean) / std."""

    def __init__(self, net: nn.Module, step: float = 1.0, mean=None, std=None):
        super().__init__()
        self.scale = PixelScale(step, mean, std) if step != 1.0 or mean is not None else None
        self.net = net

    def forward(self, x):
        x = x.contiguous()  # bnnflow's batches are channels-last views; user code may .view() them
        return self.net(self.scale(x) if self.scale is not None else x)


@contextlib.contextmanager
def running(ref_text: str, what: str):
    """A user's network failing inside bnnflow (calibration, tie guard, export) is one sentence."""
    try:
        yield
    except BnnflowError:
        raise
    except Exception as exc:
        raise BnnflowError(f"{what} {ref_text} failed ({type(exc).__name__}: {_first_line(exc)}): bnnflow feeds "
                           "it N x 3 x 32 x 32 float pixels (0..255, or 0..1 with --input-scale unit), and it must "
                           "return N x classes logits.") from None


def _import_file(ref: ModelRef):
    path = ref.file.resolve()
    if not path.is_file():
        raise BnnflowError(f"Model file {ref.file} does not exist: name an existing .py file as {FORMS}.")
    # one module name per file content, so an edited file is imported afresh
    name = "bnnflow_user_" + hashlib.sha256(str(path).encode() + path.read_bytes()).hexdigest()[:16]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up there
    sys.path.insert(0, str(path.parent))  # the file may import its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise BnnflowError(f"Importing {ref.file} failed ({type(exc).__name__}: {_first_line(exc)}): fix the "
                           "file so that 'python FILE' runs.") from None
    finally:
        sys.path.remove(str(path.parent))
    return module


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else "no message"
    return text.rstrip(".")[:160]


def _factory(ref: ModelRef):
    if ref.file is not None:
        obj = _import_file(ref)
    else:
        try:
            obj = importlib.import_module(ref.module)
        except Exception as exc:
            raise BnnflowError(f"Cannot import module {ref.module} ({type(exc).__name__}: {_first_line(exc)}): "
                               "install it or run bnnflow where it is importable.") from None
    for part in ref.attr.split("."):
        if not hasattr(obj, part):
            raise BnnflowError(f"{ref.file or ref.module} has no attribute '{ref.attr}': name the function or "
                               "class that builds the network after the ':'.")
        obj = getattr(obj, part)
    if not callable(obj):
        raise BnnflowError(f"{ref.text} is not callable: name a function or class that returns the network.")
    return obj


def build_user_network(model: str, model_args: dict | str | None = None, input_scale: str | None = None,
                       variant: str = "default") -> nn.Module:
    """The user's network (random weights as its factory makes them), wrapped for raw pixels if needed."""
    import bnnflow.compat  # noqa: F401  (Brevitas on this torch)

    ref = parse_model_ref(model)
    if variant != "default":
        raise BnnflowError(f"--variant is for bnnflow's own models: {ref.text} is built as its factory makes it "
                           "(pass --model-args for other sizes).")
    args = model_args if isinstance(model_args, dict) else parse_model_args(model_args)
    scale = check_input_scale(input_scale, zoo=False)
    try:
        net = _factory(ref)(**args)
    except BnnflowError:
        raise
    except Exception as exc:
        raise BnnflowError(f"{ref.text}(**{args}) raised {type(exc).__name__} ({_first_line(exc)}): check "
                           "--model-args against the factory's parameters.") from None
    if not isinstance(net, nn.Module):
        raise BnnflowError(f"{ref.text} returned a {type(net).__name__}, not a torch.nn.Module: name the factory "
                           "that returns the Brevitas network.")
    return PixelInput(net, *input_affine(scale)).eval()


def user_spec(req) -> dict:
    """What a checkpoint records to rebuild the network of a request."""
    args = req.model_args if isinstance(req.model_args, dict) else parse_model_args(req.model_args)
    return {"ref": portable_ref(req.model), "model_args": args, "input_scale": check_input_scale(req.input_scale, zoo=False)}


def network_of(spec: dict) -> nn.Module:
    return build_user_network(spec["ref"], spec.get("model_args") or {}, spec.get("input_scale"))


def _state_dict_of(path: Path) -> dict:
    """A plain state_dict, a bnnflow checkpoint, or a dict holding one under 'state_dict'/'model'."""
    if not path.is_file():
        raise BnnflowError(f"Checkpoint {path} does not exist: pass a .pt file holding the network's state_dict.")
    try:
        payload = load_packed(path)  # a plain torch.save file, or a run's packed last.pt
    except Exception as exc:
        raise BnnflowError(f"Checkpoint {path} is corrupt or not a PyTorch file ({type(exc).__name__}): pass "
                           "one written by torch.save(net.state_dict(), FILE).") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            payload = payload[key]
            break
    if not isinstance(payload, dict) or not all(torch.is_tensor(v) for v in payload.values()):
        raise BnnflowError(f"Checkpoint {path} holds no state_dict: save it with torch.save(net.state_dict(), "
                           "FILE).")
    return payload


def load_user_weights(net: nn.Module, path: Path) -> nn.Module:
    """Load a state_dict into the user's network (inside PixelInput when wrapped)."""
    state = _state_dict_of(Path(path))
    wrapped = any(k.startswith("net.") for k in state) and not any(k.startswith("net.") for k in net.net.state_dict())
    target = net if wrapped else net.net  # bnnflow's own model.brevitas.pt holds the wrapper's keys
    try:
        missing, unexpected = target.load_state_dict(state, strict=False)
    except (RuntimeError, TypeError) as exc:
        raise BnnflowError(f"Checkpoint {path} does not fit the network ({_first_line(exc)[:120]}): pass the "
                           "weights of this network with these --model-args.") from None
    missing = [k for k in missing if not k.endswith("scaling_impl.value")]  # scales never calibrated
    if missing or unexpected:
        name = (missing or unexpected)[0]
        what = "lacks" if missing else "has the unknown tensor"
        raise BnnflowError(f"Checkpoint {path} {what} '{name}': pass the weights of this network with these "
                           "--model-args.")
    return net.eval()
