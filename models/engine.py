"""One training step of a Brevitas model, computed by Brevitas or by the fast twin (fast.py).

Both engines update the same Parameters, optimiser state and batch-norm statistics, so a run can
switch engine on --resume.  The fast engine runs Brevitas until the activation scales have
collected their statistics (a few steps for a shared stream quantiser, 300 for a per-layer
one), then the twin: compiled once, bf16 autocast where the hardware has bf16 units, images
in channels_last.  Evaluation is always fp32 (the twin's fp32 forward equals Brevitas'), compiled
too where that gives the eager twin's logits bit for bit (checked on the first batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import update_bn

from . import fast, precise_bn
from .distill import distillation_loss


def bf16_default(device: torch.device) -> bool:
    """bf16 pays on CUDA and on CPUs with AMX/AVX512-BF16; elsewhere it emulates and is slower."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return _cpu_flag("amx_bf16") or _cpu_flag("avx512_bf16")


def _cpu_flag(flag: str) -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(flag in line.split() for line in f if line.startswith("flags"))
    except OSError:
        return False


class Engine:
    """forward + loss + backward + optimiser steps for one batch."""

    def __init__(self, net, logit_scale, opts, device: torch.device, kind: str = "fast", bf16: bool = False,
                 compile: bool = True, label_smoothing: float = 0.0, parallel=None):
        self.net, self.logit_scale, self.opts, self.device = net, logit_scale, opts, device
        self.parallel = parallel  # train_ddp.DataParallel under torchrun, else None
        self.label_smoothing = label_smoothing
        self.kind, self.bf16, self.compile = kind, bf16 and kind == "fast", compile and kind == "fast"
        self._twin = self._compiled = None
        # evaluation through the compiled twin: the train loop turns it on where it pays
        # (train_config.EVAL_COMPILE_MIN_IMAGES)
        self.compile_eval = False
        self._eval_compiled_exact = None  # unknown until the first evaluation batch through the twin
        self._binary = fast.binary_latent_weights(net)
        # two-stage training: the train loop sets this for the first stage's epochs; Brevitas' own forward
        # (the statistics phase) and every evaluation stay binary
        self.real_weights = False
        self.teacher_weight, self.teacher_temperature = 0.0, 1.0  # distillation (distill.py), set by the run

    def uses_twin(self) -> bool:
        return self.kind == "fast" and not fast.stats_pending(self.net)

    def twin(self):
        if self._twin is None:  # after any state_dict load: Brevitas rebuilds scale Parameters on load
            self._twin = fast.make_twin(self.net)
            # static shapes (batches are whole): a shape seen twice never recompiles as dynamic, where
            # inductor failed on the convolution backward of ReCU runs
            self._compiled = torch.compile(self._twin, dynamic=False) if self.compile else self._twin
        return self._twin

    def forward(self, xb: torch.Tensor) -> torch.Tensor:
        if not self.uses_twin():
            return self.net(xb)
        fast.set_real_weights(self.twin(), self.real_weights)
        fast.clamp_binary_weights(self._binary)  # Brevitas does this in place at every forward
        xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self._compiled(xb).float()

    def step(self, xb: torch.Tensor, yb: torch.Tensor, soft: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """`soft`: a teacher's class probabilities for the batch (distillation), else None."""
        if self.parallel is not None:  # under torchrun: this rank's share of the batch (train_ddp.py)
            return self.parallel.step(self, xb, yb, soft)
        return self.local_step(xb, yb, soft)

    def loss(self, scaled: torch.Tensor, yb: torch.Tensor, soft: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss of logits times the learnt logit scale."""
        if soft is None:
            return F.cross_entropy(scaled, yb, label_smoothing=self.label_smoothing)
        return distillation_loss(scaled, yb, soft, self.teacher_weight, self.teacher_temperature,
                                 self.label_smoothing)

    def local_step(self, xb: torch.Tensor, yb: torch.Tensor, soft: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.forward(xb)
        loss = self.loss(logits * self.logit_scale.exp(), yb, soft)
        for opt in self.opts:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in self.opts:
            opt.step()
        return loss.detach(), logits.detach()

    def reestimate_bn(self, batches) -> bool:
        """Precise batch-norm statistics over `batches` (precise_bn.py) through the fp32 forward that evaluation
        uses, in training mode (compiled where evaluation is). Not while Brevitas still collects activation-scale
        statistics: its training forward would advance them, and with them the run."""
        if fast.stats_pending(self.net):
            return False
        module = self.net
        if self.uses_twin():
            fast.clamp_binary_weights(self._binary)
            module = self.twin()
            fast.set_real_weights(module, False)
            if self.compile and self.compile_eval:
                precise_bn.reestimate(module, batches, self._bn_forward())
                return True
        update_bn(batches, module)
        return True

    def _bn_forward(self):
        """The compiled twin for batches of the first batch's size, the eager twin for a last, smaller one
        (its shape would compile again): 2.2x the eager pass for BinaryDenseNet default here, statistics
        within float32 rounding of it (nearer float64's, measured)."""
        size = None

        def forward(xb: torch.Tensor) -> torch.Tensor:
            nonlocal size
            size = size or len(xb)
            graph = self._compiled if len(xb) == size else self._twin
            return graph(xb.contiguous(memory_format=torch.channels_last))
        return forward

    def eval_forward(self, xb: torch.Tensor) -> torch.Tensor:
        """fp32, eval mode set by the caller: the twin once it exists, else Brevitas. With compile_eval, the
        compiled twin (1.7x faster for ResNetE default here) is used only after it gave the eager twin's
        logits bit for bit on the first batch; otherwise the run evaluates eagerly."""
        if not self.uses_twin():
            return self.net(xb)
        fast.clamp_binary_weights(self._binary)
        twin = self.twin()
        fast.set_real_weights(twin, False)
        if not (self.compile and self.compile_eval) or self._eval_compiled_exact is False:
            return twin(xb)
        if self._eval_compiled_exact is None:
            eager = twin(xb)
            self._eval_compiled_exact = torch.equal(self._compiled(xb), eager)
            return eager
        return self._compiled(xb)
