"""Model registry: names, width/depth variants, and what each variant costs in weights."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from bnnflow.catalog import MODEL_TITLES  # noqa: F401  (re-exported)
from bnnflow.errors import BnnflowError

from .cnv import CNV
from .densenet import BinaryDenseNet
from .resnete import ResNetE


@dataclass(frozen=True)
class Variant:
    builder: type
    params: dict = field(default_factory=dict)
    note: str = ""


# The "default" variant of each model is sized for the PYNQ-Z2 (xc7z020: 4.9 Mbit BRAM, 53k LUT).
MODELS: dict[str, dict[str, Variant]] = {
    "resnete": {
        "tiny": Variant(ResNetE, dict(widths=(16, 32, 64), blocks=(2, 2, 2)), "smoke-test size"),
        "small": Variant(ResNetE, dict(widths=(16, 32, 64), blocks=(4, 4, 4))),
        "default": Variant(ResNetE, dict(widths=(32, 64, 128), blocks=(4, 4, 4)), "PYNQ-Z2 default"),
        "wide": Variant(ResNetE, dict(widths=(48, 96, 192), blocks=(4, 4, 4))),
    },
    "densenet": {
        "tiny": Variant(BinaryDenseNet, dict(stem=32, growth=16, blocks=(2, 2, 2)), "smoke-test size"),
        "small": Variant(BinaryDenseNet, dict(stem=32, growth=16, blocks=(4, 4, 4))),
        "default": Variant(BinaryDenseNet, dict(stem=64, growth=32, blocks=(4, 4, 4)), "PYNQ-Z2 default"),
        "wide": Variant(BinaryDenseNet, dict(stem=64, growth=48, blocks=(4, 4, 4))),
    },
    "cnv": {
        "tiny": Variant(CNV, dict(convs=(16, 16, "P", 32, 32, "P", 64, 64), fcs=(128, 128)), "smoke-test size"),
        "small": Variant(CNV, dict(convs=(32, 32, "P", 64, 64, "P", 128, 128), fcs=(256, 256))),
        "default": Variant(CNV, dict(), "FINN's CNV-W1A1"),
    },
}



def get_variant(model: str, variant: str = "default") -> Variant:
    if model not in MODELS:
        raise BnnflowError(f"Unknown model '{model}': choose one of {', '.join(MODELS)}.")
    if variant not in MODELS[model]:
        raise BnnflowError(
            f"Unknown variant '{variant}' of {model}: choose one of {', '.join(MODELS[model])}."
        )
    return MODELS[model][variant]


def build_model(model: str, variant: str = "default") -> nn.Module:
    v = get_variant(model, variant)
    return v.builder(**v.params)


def weight_summary(net: nn.Module) -> dict:
    """Count binary weights and the bits of all quantized weights (what the hardware stores)."""
    binary, other_bits = 0, 0
    for module in net.modules():
        if not hasattr(module, "quant_weight"):
            continue
        qw = module.quant_weight()
        n = module.weight.numel()
        bits = int(qw.bit_width.item())
        if bits == 1:
            binary += n
        else:
            other_bits += n * bits
    return {"binary_weights": binary, "binary_mbit": binary / 1e6, "total_mbit": (binary + other_bits) / 1e6}
