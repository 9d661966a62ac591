"""bnnflow: 1-bit ResNetE / BinaryDenseNet from Brevitas to FINN dataflow accelerators."""

__version__ = "0.1.0"
