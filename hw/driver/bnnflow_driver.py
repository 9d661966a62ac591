"""bnnflow's driver for a FINN CIFAR-10 accelerator on the PYNQ-Z2, and its off-board twin.

    from bnnflow_driver import BnnflowAccelerator
    accel = BnnflowAccelerator("/home/xilinx/jupyter_notebooks/cnv-tiny-pynq-z2")
    labels = accel.classify(images)          # uint8 N x 32 x 32 x 3 (RGB, NHWC) -> N class indices
    accel.throughput_test()                  # images/s, latency, DMA bandwidth

Two backends, one API:

* "board": PYNQ loads the bitfile (`pynq.Overlay`), the driver allocates DMA buffers
  (`pynq.allocate`), packs the images into the accelerator's folded input stream, starts the
  output and input IODMAs (FINN's zynq-iodma register map) and unpacks the class indices the
  accelerator writes back. Needs only PYNQ and numpy: no torch, FINN or qonnx on the board.
* "functional model (no board)": where `pynq` cannot be imported or the package holds no
  bitfile, the same bytes are handed to the functional model of the design's final hardware
  graph (bnnflow.build_flows.functional, which needs bnnflow's Python environment), which
  unpacks them as the hardware does, computes every layer bit-exactly and packs the result.
  Predictions agree with the board's image for image; only the speed differs.

The package folder (made by `bnnflow deploy`) holds io_shape.json, which describes the
accelerator's input and output streams (FINN's io_shape_dict keys, so finn-plus-driver's
FINNDMAOverlay can read it too, plus bnnflow's: classes, top-k, clock, file names).
Bad input raises ValueError with one sentence.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

if __package__:
    from . import packing
else:  # loaded from a deployment folder as a top-level module: packing.py lies beside it
    _spec = importlib.util.spec_from_file_location("bnnflow_packing", Path(__file__).with_name("packing.py"))
    packing = importlib.util.module_from_spec(_spec)
    sys.modules.setdefault("bnnflow_packing", packing)
    _spec.loader.exec_module(packing)

BOARD = "board"
OFF_BOARD = "functional model (no board)"
IO_SHAPE_FILE = "io_shape.json"
_BACKEND_NAMES = {"auto": "auto", "board": BOARD, "functional": OFF_BOARD, "off-board": OFF_BOARD,
                  OFF_BOARD: OFF_BOARD}

# FINN's IODMA (HLS, AXI-Lite control) registers
AP_CTRL, ADDR_LO, ADDR_HI, NUM_REPS = 0x00, 0x10, 0x14, 0x1C
AP_START, AP_DONE, AP_IDLE = 0x1, 0x2, 0x4


def _import_pynq():
    """The pynq module, or None where it is not installed (any machine but the board)."""
    try:
        import pynq
    except ImportError:
        return None
    return pynq


def clock_from_hwh(hwh: Path) -> float | None:
    """Output frequency (MHz) of the design's clocking wizard (finn-plus shells have one), if any."""
    if not hwh.is_file():
        return None
    try:
        for module in ET.parse(hwh).getroot().iter("MODULE"):
            if module.get("INSTANCE") == "clk_wiz_0":
                params = {p.get("NAME"): p.get("VALUE") for p in module.iter("PARAMETER")}
                value = params.get("CLKOUT1_OUT_FREQ") or params.get("CLKOUT1_REQUESTED_OUT_FREQ")
                return float(value) if value else None
    except (ET.ParseError, ValueError):
        return None
    return None


class _BoardBackend:
    """The FPGA through PYNQ: overlay, DMA buffers and the IODMA register protocol."""

    name = BOARD

    def __init__(self, accel: BnnflowAccelerator, pynq, bitfile: Path, download: bool, timeout_s: float):
        self.pynq = pynq
        self.timeout_s = timeout_s
        self.overlay = pynq.Overlay(str(bitfile), download=download)
        io = accel.io
        self.fclk_mhz = float(io.get("fclk_mhz") or 100.0)
        try:
            from pynq.ps import Clocks
        except ImportError:
            Clocks = None
        wizard = clock_from_hwh(bitfile.with_suffix(".hwh"))
        if Clocks is not None:
            # finn-plus shells feed a clocking wizard from a fixed 100 MHz FCLK0; older ones run on FCLK0
            Clocks.fclk0_mhz = 100.0 if wizard else self.fclk_mhz
        if wizard:
            self.fclk_mhz = wizard
        names = {"idma": (io.get("idma_names") or ["idma0"])[0], "odma": (io.get("odma_names") or ["odma0"])[0]}
        self.dma = {}
        for role, name in names.items():
            try:
                self.dma[role] = getattr(self.overlay, name)
            except AttributeError:
                raise RuntimeError(f"The bitfile {bitfile.name} has no DMA called {name}, so it is not the "
                                   f"accelerator {IO_SHAPE_FILE} describes: deploy the matching build.") from None

    def allocate(self, shape) -> np.ndarray:
        # cacheable buffers pack and unpack faster on the ARM; flush()/invalidate() keep them coherent
        return self.pynq.allocate(shape=tuple(shape), dtype=np.uint8, cacheable=True)

    def run(self, accel: BnnflowAccelerator, n: int) -> None:
        idma, odma = self.dma["idma"], self.dma["odma"]
        accel.ibuf.flush()
        if not odma.read(AP_CTRL) & AP_IDLE:
            raise RuntimeError("The output DMA is still busy from an earlier run: reload the overlay "
                               "(create the BnnflowAccelerator again).")
        # the output DMA first, so it is ready for the first result; then the input DMA
        for dma, buf in ((odma, accel.obuf), (idma, accel.ibuf)):
            addr = int(buf.device_address)
            dma.write(ADDR_LO, addr & 0xFFFFFFFF)
            dma.write(ADDR_HI, (addr >> 32) & 0xFFFFFFFF)
            dma.write(NUM_REPS, n)
            dma.write(AP_CTRL, AP_START)
        deadline = time.perf_counter() + self.timeout_s
        while not odma.read(AP_CTRL) & AP_DONE:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"The accelerator did not finish {n} images within {self.timeout_s:g} s: "
                                   "check that the bitfile matches this package and reload it.")
        accel.obuf.invalidate()

    def close(self, accel: BnnflowAccelerator) -> None:
        for buf in (accel.ibuf, accel.obuf):
            free = getattr(buf, "freebuffer", None)
            if free is not None:
                free()


class _FunctionalBackend:
    """No board: the bytes go through the functional model of the design's final hardware graph."""

    name = OFF_BOARD
    fclk_mhz = None

    def __init__(self, accel: BnnflowAccelerator):
        graph = accel.package / accel.io.get("graph", "hw_graph.onnx")
        if not graph.is_file():
            raise FileNotFoundError(f"{graph} is missing, and without a board the driver runs that hardware graph: "
                                    "re-create the package with 'bnnflow deploy'.")
        try:
            from bnnflow import compat
        except ImportError:
            raise RuntimeError("Without a board the driver runs the design's functional model, which needs "
                               "bnnflow's Python environment: start Python or Jupyter from the repository's "
                               ".venv, or run on the board.") from None
        compat.finn_ready()
        from qonnx.core.modelwrapper import ModelWrapper

        from bnnflow.build_flows.functional import FunctionalModel

        self.model = FunctionalModel(ModelWrapper(str(graph)))
        self.output = self.model.outputs[0]

    def allocate(self, shape) -> np.ndarray:
        return np.zeros(tuple(shape), dtype=np.uint8)

    def run(self, accel: BnnflowAccelerator, n: int) -> None:
        # what the accelerator does with the streamed bytes: unfold, compute, fold and pack the result
        x = accel.unpack_input(accel.ibuf[:n])
        y = self.model(x)[self.output]
        accel.obuf[:n] = accel.pack_output(y)

    def close(self, accel: BnnflowAccelerator) -> None:
        pass


class BnnflowAccelerator:
    """A deployed bnnflow CIFAR-10 classifier: on the board's FPGA, or its functional model without one.

    package: the folder `bnnflow deploy` made (default: the folder of this file).
    batch_size: images per DMA run; the buffers hold this many (classify() splits larger sets).
    backend: "auto" (the board where pynq imports and the package has a bitfile, else the
        functional model), "board" or "functional".
    """

    def __init__(self, package: str | os.PathLike | None = None, batch_size: int = 100, backend: str = "auto",
                 download: bool = True, timeout_s: float = 10.0, quiet: bool = False):
        self.package = Path(package).expanduser().resolve() if package is not None else Path(__file__).resolve().parent
        io_path = self.package / IO_SHAPE_FILE
        if not io_path.is_file():
            raise FileNotFoundError(f"{io_path} is missing: pass the folder made by 'bnnflow deploy' as package.")
        self.io = json.loads(io_path.read_text())
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}.")
        self.batch_size = int(batch_size)
        self.idt = packing.datatype(self.io["idt"][0])
        self.odt = packing.datatype(self.io["odt"][0])
        self.ishape_normal = tuple(self.io["ishape_normal"][0][1:])  # the hardware graph's input
        self.channels_first = self.io.get("input_layout") == "NCHW"  # an FC net streams its pixels C, H, W
        s = self.ishape_normal
        self.image_shape = (s[1], s[2], s[0]) if self.channels_first else s  # what classify() takes: H x W x C
        self.ishape_folded = tuple(self.io["ishape_folded"][0][1:])
        self.ishape_packed = tuple(self.io["ishape_packed"][0][1:])
        self.oshape_normal = tuple(self.io["oshape_normal"][0][1:])
        self.oshape_folded = tuple(self.io["oshape_folded"][0][1:])
        self.oshape_packed = tuple(self.io["oshape_packed"][0][1:])
        self.topk = int(self.io.get("topk", self.oshape_normal[-1]))
        self.classes = list(self.io.get("classes") or [])
        self.model = self.io.get("model", "?")

        kind = _BACKEND_NAMES.get(backend)
        if kind is None:
            raise ValueError(f"Unknown backend {backend!r}: use 'auto', 'board' or 'functional'.")
        bitfile = self.package / self.io["bitfile"] if self.io.get("bitfile") else None
        pynq = _import_pynq() if kind in ("auto", BOARD) else None
        has_bit = bitfile is not None and bitfile.is_file()
        if kind == BOARD and not (pynq and has_bit):
            why = ("pynq cannot be imported here" if pynq is None
                   else "the package has no bitfile (built without Vivado)")
            raise RuntimeError(f"The board backend is not available because {why}: use backend='functional' "
                               "or run on the PYNQ board with a package that has a bitfile.")
        if kind == BOARD or (kind == "auto" and pynq is not None and has_bit):
            self._backend = _BoardBackend(self, pynq, bitfile, download, timeout_s)
            self.reason = f"bitfile {bitfile.name} loaded through PYNQ"
        else:
            self._backend = _FunctionalBackend(self)
            self.reason = ("the package has no bitfile (built without Vivado)" if not has_bit and pynq is not None
                           else "backend='functional' was asked for" if kind == OFF_BOARD
                           else "pynq is not installed here (not a PYNQ board)")
        self.backend = self._backend.name
        self.fclk_mhz = self._backend.fclk_mhz
        self.ibuf = self._backend.allocate((self.batch_size,) + self.ishape_packed)
        self.obuf = self._backend.allocate((self.batch_size,) + self.oshape_packed)
        if not quiet:
            print(self.describe())

    # ------------------------------------------------------------------ description
    def describe(self) -> str:
        what = f"{self.io.get('model', '?')}/{self.io.get('variant', '?')}"
        if self.backend == BOARD:
            where = f"backend: board ({self.reason}, {self.fclk_mhz:g} MHz)"
        else:
            where = (f"backend: {OFF_BOARD}, because {self.reason}: the final hardware graph runs on this CPU, "
                     "with the board's results image for image but not its speed")
        return f"bnnflow accelerator {what}, {where}; buffers for {self.batch_size} images."

    def __repr__(self) -> str:
        return f"<BnnflowAccelerator {self.io.get('model')}/{self.io.get('variant')} backend={self.backend!r}>"

    # ------------------------------------------------------------------ packing
    def check_images(self, images) -> np.ndarray:
        """uint8 N x H x W x C (or one H x W x C image) as a contiguous array, else one clear ValueError."""
        if not isinstance(images, np.ndarray):
            raise ValueError(f"images must be a numpy array of uint8 pixels, not {type(images).__name__}.")
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 pixels (0..255, as loaded from the dataset), not {images.dtype}: "
                             "do not normalise them, the accelerator takes raw pixels.")
        h, w, c = self.image_shape
        if images.shape == (h, w, c):
            images = images[None]
        if images.ndim != 4 or images.shape[1:] != (h, w, c):
            hint = " (channels first? use images.transpose(0, 2, 3, 1))" if images.shape[1:] == (c, h, w) else ""
            raise ValueError(f"images must have shape N x {h} x {w} x {c} (RGB, channels last), not "
                             f"{tuple(images.shape)}{hint}.")
        if len(images) == 0:
            raise ValueError("images is empty: pass at least one image.")
        return np.ascontiguousarray(images)

    def pack_input(self, images: np.ndarray) -> np.ndarray:
        """N checked images -> N x packed input words (uint8), as the input DMA streams them."""
        if self.channels_first:
            images = images.transpose(0, 3, 1, 2)
        folded = images.reshape((len(images),) + self.ishape_folded)
        return packing.pack(folded, self.idt, reverse_inner=True, reverse_endian=True)

    def unpack_input(self, packed: np.ndarray) -> np.ndarray:
        n = len(packed)
        vals = packing.unpack(packed, self.idt, (n,) + self.ishape_folded, reverse_inner=True, reverse_endian=True)
        return vals.reshape((n,) + self.ishape_normal)

    def pack_output(self, values: np.ndarray) -> np.ndarray:
        n = len(values)
        folded = np.asarray(values).reshape((n,) + self.oshape_folded)
        return packing.pack(folded, self.odt, reverse_inner=True, reverse_endian=True)

    def unpack_output(self, packed: np.ndarray) -> np.ndarray:
        """N x packed output words -> N x K class indices (best first)."""
        n = len(packed)
        vals = packing.unpack(packed, self.odt, (n,) + self.oshape_folded, reverse_inner=True, reverse_endian=True)
        return vals.reshape((n,) + self.oshape_normal)

    # ------------------------------------------------------------------ running
    def execute_on_buffers(self, n: int | None = None) -> None:
        """One accelerator run on the first n images already packed into self.ibuf."""
        n = self.batch_size if n is None else int(n)
        if not 1 <= n <= self.batch_size:
            raise ValueError(f"A run takes 1 to {self.batch_size} images (the buffer size), not {n}.")
        self._backend.run(self, n)

    def execute(self, images) -> np.ndarray:
        """At most batch_size images through the accelerator: N x K class indices, best first."""
        x = self.check_images(images)
        n = len(x)
        if n > self.batch_size:
            raise ValueError(f"{n} images do not fit the buffers for {self.batch_size}: use classify(), which splits "
                             "them, or create the accelerator with a larger batch_size.")
        self.ibuf[:n] = self.pack_input(x)
        self.execute_on_buffers(n)
        return self.unpack_output(np.asarray(self.obuf[:n]))

    def classify(self, images, topk: bool = False):
        """Class indices of the images (uint8 N x 32 x 32 x 3, any N), batch_size images per run.

        Returns the top-1 class of each image (an int for a single H x W x C image), or with
        topk=True the N x K indices the accelerator outputs, best first. The hardware outputs
        indices only (FINN's LabelSelect), no scores.
        """
        single = isinstance(images, np.ndarray) and images.shape == self.image_shape
        x = self.check_images(images)
        out = np.empty((len(x),) + self.oshape_normal, dtype=np.int64)
        for i in range(0, len(x), self.batch_size):
            out[i:i + self.batch_size] = self.execute(x[i:i + self.batch_size])
        out = out.reshape(len(x), -1)
        result = out if topk else out[:, 0]
        return (int(result[0]) if not topk else result[0]) if single else result

    def class_names(self, indices) -> list[str]:
        if not self.classes:
            return [str(int(i)) for i in np.ravel(indices)]
        return [self.classes[int(i)] for i in np.ravel(indices)]

    def throughput_test(self, batch_size: int | None = None, seed: int = 0) -> dict:
        """Time one full-buffer run and one single-image run, plus the CPU's packing and unpacking.

        On the board the numbers are the FPGA's; off board they are the functional model's
        speed on this CPU (the design's estimated FPS is reported beside it).
        """
        n = self.batch_size if batch_size is None else int(batch_size)
        if not 1 <= n <= self.batch_size:
            raise ValueError(f"batch_size must be 1 to {self.batch_size} (the buffer size), not {n}.")
        images = np.random.default_rng(seed).integers(0, 256, (n,) + self.image_shape, dtype=np.uint8)
        t0 = time.perf_counter()
        packed = self.pack_input(images)
        t_pack = time.perf_counter() - t0
        self.ibuf[:n] = packed
        t0 = time.perf_counter()
        self.execute_on_buffers(n)
        t_run = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.unpack_output(np.asarray(self.obuf[:n]))
        t_unpack = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.execute_on_buffers(1)
        t_one = time.perf_counter() - t0
        in_bytes = n * int(np.prod(self.ishape_packed))
        out_bytes = n * int(np.prod(self.oshape_packed))
        return {
            "backend": self.backend,
            "measured_on": "the FPGA" if self.backend == BOARD else "this CPU (functional model, not hardware speed)",
            "batch_size": n,
            "runtime_ms": t_run * 1e3,
            "images_per_s": n / t_run,
            "latency_ms": t_one * 1e3,
            "pack_input_ms": t_pack * 1e3,
            "unpack_output_ms": t_unpack * 1e3,
            "dram_in_MBps": in_bytes / t_run / 1e6,
            "dram_out_MBps": out_bytes / t_run / 1e6,
            "fclk_mhz": self.fclk_mhz,
            "estimated_fps": self.io.get("estimated_fps"),
            "estimated_latency_ms": self.io.get("estimated_latency_ms"),
        }

    def close(self) -> None:
        self._backend.close(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
