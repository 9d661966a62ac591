"""Target boards: the FPGA part, clock and resource budget a design must fit.

Adding a board is one entry in BOARDS; `finn_board` is the name FINN's Zynq/Alveo build
flows use for its board files.
"""

from __future__ import annotations

from dataclasses import dataclass

from bnnflow.errors import BnnflowError


@dataclass(frozen=True)
class Board:
    name: str
    finn_board: str
    part: str
    clock_mhz: float
    lut: int
    ff: int
    bram36: int
    dsp: int
    uram: int = 0
    shell_reserve: float = 0.10  # share kept free for the Zynq shell, DMA and interconnect
    default_target_fps: int = 1000
    # Caps on the accelerator's estimated share of the WHOLE device (used by `bnnflow fold` and
    # `fits`); for LUT and BRAM they replace shell_reserve, whose room they already leave.
    lut_max: float = 0.85
    bram_max: float = 0.95

    @property
    def clock_ns(self) -> float:
        return 1000.0 / self.clock_mhz

    @property
    def bram18(self) -> int:
        return 2 * self.bram36

    def budget(self, lut_max: float | None = None, bram_max: float | None = None) -> dict[str, float]:
        """Resources available to the accelerator: LUT/BRAM up to lut_max/bram_max of the device,
        DSP/URAM after the shell's share."""
        lut_max = self.lut_max if lut_max is None else lut_max
        bram_max = self.bram_max if bram_max is None else bram_max
        for name, value in (("LUT", lut_max), ("BRAM", bram_max)):
            if not 0.0 < value <= 1.0:
                raise BnnflowError(f"The {name} limit must be a share of the device in (0, 1], not {value}.")
        keep = 1.0 - self.shell_reserve
        return {"LUT": self.lut * lut_max, "BRAM_18K": self.bram18 * bram_max, "DSP": self.dsp * keep,
                "URAM": self.uram * keep}


BOARDS: dict[str, Board] = {
    "pynq-z2": Board("pynq-z2", "Pynq-Z2", "xc7z020clg400-1", 100.0, 53_200, 106_400, 140, 220),
    "pynq-z1": Board("pynq-z1", "Pynq-Z1", "xc7z020clg400-1", 100.0, 53_200, 106_400, 140, 220),
    "ultra96": Board("ultra96", "Ultra96", "xczu3eg-sbva484-1-e", 100.0, 70_560, 141_120, 216, 360),
    "zcu104": Board("zcu104", "ZCU104", "xczu7ev-ffvc1156-2-e", 100.0, 230_400, 460_800, 312, 1_728, 96),
}

DEFAULT_BOARD = "pynq-z2"


def get_board(name: str) -> Board:
    key = name.lower()
    if key not in BOARDS:
        raise BnnflowError(f"Unknown board '{name}': choose one of {', '.join(BOARDS)}.")
    return BOARDS[key]
