"""Brevitas models, quantizers, CIFAR-10 data, training and export."""

import bnnflow.compat  # noqa: F401  (torch 2.13 / Brevitas 0.13 shim, before any Brevitas use)
