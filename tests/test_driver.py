"""The board driver: numpy packing bit-identical to FINN's, clear errors, and the PYNQ code path.

The board is replaced by a fake `pynq` module: Overlay exposes the two IODMAs as register
files, allocate() returns buffers whose device side changes only on flush()/invalidate(),
and starting the input DMA makes the "hardware" compute on the streamed bytes: either a toy
accelerator, a fixed random linear map of the packed input bytes (so pixel order, channel
order, word width and the packing flags all change its answer), or the real design (unpack
with FINN's own functions, the functional model of the final hardware graph); the result is
packed into the output buffer with FINN's packer, in the layout of the hardware's output words.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnnflow import compat

compat.finn_ready()

from finn.util.data_packing import finnpy_to_packed_bytearray, packed_bytearray_to_finnpy  # noqa: E402
from qonnx.core.datatype import DataType  # noqa: E402
from qonnx.util.basic import gen_finn_dt_tensor  # noqa: E402

from bnnflow.hw.driver import bnnflow_driver as drv  # noqa: E402
from bnnflow.hw.driver import packing  # noqa: E402

from conftest import one_sentence  # noqa: E402

DRIVER_DIR = Path(drv.__file__).resolve().parent
DTYPES = [f"UINT{b}" for b in (1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 17, 24, 32)] + \
         [f"INT{b}" for b in (2, 3, 4, 8, 9, 16, 23, 32)] + ["BINARY", "BIPOLAR", "TERNARY"]


# ---------------------------------------------------------------------------- packing vs FINN


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(DTYPES), shape=st.lists(st.integers(1, 6), min_size=1, max_size=4),
       reverse_inner=st.booleans(), reverse_endian=st.booleans(), native=st.booleans(), seed=st.integers(0, 2**31))
def test_pack_and_unpack_match_finn(name, shape, reverse_inner, reverse_endian, native, seed):
    dt = DataType[name]
    np.random.seed(seed % 2**32)
    x = gen_finn_dt_tensor(dt, tuple(shape))  # float32 container, FINN's usual input
    if native and dt.bitwidth() <= 8 and name not in ("BIPOLAR", "TERNARY"):
        x = x.astype(np.int8 if dt.signed() else np.uint8)  # FINN's whole-byte fast path
    ours = packing.pack(x, name, reverse_inner, reverse_endian)
    finn = np.ascontiguousarray(finnpy_to_packed_bytearray(x, dt, reverse_inner, reverse_endian))
    assert ours.dtype == np.uint8 and ours.shape == finn.shape
    assert ours.tobytes() == finn.tobytes()
    assert ours.shape == packing.packed_shape(shape, name)
    back = packing.unpack(ours, name, tuple(shape), reverse_inner, reverse_endian)
    finn_back = np.asarray(packed_bytearray_to_finnpy(finn, dt, tuple(shape), reverse_inner, reverse_endian))
    assert np.array_equal(back, x.astype(np.int64))
    assert np.array_equal(back, finn_back.reshape(shape))


def test_real_images_pack_like_finn_for_every_simd(cifar_test):
    x = cifar_test[0][:64]
    for simd, (ri, re) in itertools.product((1, 3), itertools.product((False, True), repeat=2)):
        folded = x.reshape(len(x), 32, 32, 3 // simd, simd)
        ours = packing.pack(folded, "UINT8", ri, re)
        finn = np.ascontiguousarray(finnpy_to_packed_bytearray(folded.astype(np.float32), DataType["UINT8"], ri, re))
        assert ours.tobytes() == finn.tobytes()
        assert np.array_equal(packing.unpack(ours, "UINT8", folded.shape, ri, re), folded)


def test_packed_shape_is_finns_driver_shape():
    """FINN's get_driver_shapes packs a dummy folded tensor; packed_shape must give the same shape."""
    for name, folded in [("UINT8", (1, 32, 32, 1, 3)), ("UINT8", (1, 32, 32, 3, 1)), ("UINT4", (1, 10, 1)),
                         ("UINT4", (1, 5, 3)), ("BINARY", (1, 8, 8, 2, 27)), ("INT9", (1, 7, 5))]:
        dummy = gen_finn_dt_tensor(DataType[name], folded)
        assert packing.packed_shape(folded, name) == finnpy_to_packed_bytearray(dummy, DataType[name]).shape


def test_datatype_names_and_errors():
    assert packing.datatype("DataType['UINT8']") == packing.Datatype("UINT8")
    assert packing.datatype(DataType["INT4"]).min == -8
    for bad in ("FLOAT32", "FIXED<8,4>", "UINT0", "INT1", "UINT65"):
        with pytest.raises(ValueError) as e:
            packing.datatype(bad)
        one_sentence(e.value)
    with pytest.raises(ValueError, match="does not fit datatype UINT2") as e:
        packing.pack(np.array([1, 4]), "UINT2")
    one_sentence(e.value)
    with pytest.raises(ValueError, match="does not fit"):
        packing.pack(np.array([0.5]), "UINT8")
    with pytest.raises(ValueError, match="does not fit"):
        packing.pack(np.array([0]), "BIPOLAR")
    with pytest.raises(ValueError, match="uint8") as e:
        packing.unpack(np.zeros(3, np.int32), "UINT8")
    one_sentence(e.value)
    with pytest.raises(ValueError, match="need 40 bits") as e:
        packing.unpack(np.zeros((2, 4), np.uint8), "UINT8", (2, 5))
    one_sentence(e.value)


def test_packing_module_needs_only_numpy():
    src = (DRIVER_DIR / "packing.py").read_text() + (DRIVER_DIR / "bnnflow_driver.py").read_text()
    imports = {line.split()[1].split(".")[0] for line in src.splitlines()
               if line.startswith(("import ", "from ")) and not line.startswith("from .")}
    assert imports <= {"__future__", "importlib", "json", "math", "os", "re", "sys", "time", "xml", "pathlib",
                       "numpy"}, imports


# ---------------------------------------------------------------------------- a fake board


class FakeBuffer(np.ndarray):
    """A pynq buffer: the device sees its contents only after flush(), the CPU sees the device's after invalidate()."""

    def __new__(cls, shape, board):
        buf = np.zeros(shape, np.uint8).view(cls)
        buf.board, buf.on_device = board, np.zeros(shape, np.uint8)
        buf.device_address = board.next_address
        board.next_address += 0x100000
        board.buffers[buf.device_address] = buf
        return buf

    def __array_finalize__(self, obj):
        pass

    def flush(self):
        self.board.log.append(("flush", self.device_address))
        self.on_device[...] = np.asarray(self)

    def invalidate(self):
        self.board.log.append(("invalidate", self.device_address))
        np.asarray(self)[...] = self.on_device

    def freebuffer(self):
        self.board.log.append(("free", self.device_address))


class FakeDMA:
    def __init__(self, board, name):
        self.board, self.name, self.regs = board, name, {drv.AP_CTRL: drv.AP_IDLE}

    def read(self, reg):
        self.board.log.append(("read", self.name, reg))
        value = self.regs.get(reg, 0)
        if reg == drv.AP_CTRL and value & drv.AP_DONE:
            self.regs[reg] = drv.AP_IDLE  # ap_done clears on read
        return value

    def write(self, reg, value):
        self.board.log.append(("write", self.name, reg, value))
        self.regs[reg] = value
        if reg == drv.AP_CTRL and value & drv.AP_START:
            self.regs[reg] = 0  # busy
            if self.name == "idma0":
                self.board.run()


class FakeBoard:
    """The accelerator behind the DMAs: computes on the streamed bytes, packs the result with FINN's packer.

    compute: images (unpacked with FINN's functions) -> output values, or None for the toy
    accelerator, which sees only the raw bytes (`toy_accelerator`).
    """

    def __init__(self, io: dict, compute=None, finish: bool = True):
        self.io, self.compute, self.finish = io, compute, finish
        self.log, self.buffers, self.next_address = [], {}, 0x1_2000_0000  # above 4 GiB: tests ADDR_HI
        self.streamed = []  # the input bytes of every run, as the input DMA read them
        self.idma, self.odma = FakeDMA(self, "idma0"), FakeDMA(self, "odma0")
        self.loaded = None

    def run(self):
        odma, idma = self.odma.regs, self.idma.regs
        assert odma.get(drv.AP_CTRL) == 0, "the output DMA must be started before the input DMA"
        n = idma[drv.NUM_REPS]
        assert odma[drv.NUM_REPS] == n
        ibuf = self.buffers[idma[drv.ADDR_LO] | idma[drv.ADDR_HI] << 32]
        obuf = self.buffers[odma[drv.ADDR_LO] | odma[drv.ADDR_HI] << 32]
        folded = (n,) + tuple(self.io["ishape_folded"][0][1:])
        idt, odt = DataType[self.io["idt"][0][10:-2]], DataType[self.io["odt"][0][10:-2]]
        raw = np.array(ibuf.on_device[:n])
        self.streamed.append(raw)
        if self.compute is None:
            y = toy_accelerator(raw, self.io["oshape_normal"][0][-1])
        else:
            x = packed_bytearray_to_finnpy(np.ascontiguousarray(raw), idt, folded, True, True)
            y = self.compute(np.asarray(x).reshape((n,) + tuple(self.io["ishape_normal"][0][1:])))
        ofolded = (n,) + tuple(self.io["oshape_folded"][0][1:])
        obuf.on_device[:n] = finnpy_to_packed_bytearray(np.asarray(y, np.float32).reshape(ofolded), odt, True, True)
        self.log.append(("computed", n))
        if self.finish:
            odma[drv.AP_CTRL] = drv.AP_DONE | drv.AP_IDLE
            idma[drv.AP_CTRL] = drv.AP_DONE | drv.AP_IDLE

    def module(self) -> types.ModuleType:
        board = self
        pynq = types.ModuleType("pynq")

        class Overlay:
            def __init__(self, bitfile, download=True):
                board.loaded = (bitfile, download)
                self.idma0, self.odma0 = board.idma, board.odma

        def allocate(shape, dtype=np.uint8, cacheable=False, **kw):
            assert dtype == np.uint8 and cacheable
            return FakeBuffer(shape, board)

        pynq.Overlay, pynq.allocate = Overlay, allocate
        ps = types.ModuleType("pynq.ps")
        ps.Clocks = types.SimpleNamespace(fclk0_mhz=50.0)
        pynq.ps = ps
        return pynq


def toy_io(simd: int = 3, k: int = 1, odt: str = "UINT8", per_word: int = 1) -> dict:
    """A package's io_shape.json: SIMD input channels per word; K class indices of type odt, per_word per word."""
    ifold, ofold = [1, 32, 32, 3 // simd, simd], [1, k // per_word, per_word]

    def packed(shape, dt):  # FINN's packed shape: whole bytes per word
        return list(finnpy_to_packed_bytearray(np.zeros(shape, np.float32), DataType[dt]).shape)
    return {
        "idt": ["DataType['UINT8']"], "odt": [f"DataType['{odt}']"],
        "ishape_normal": [[1, 32, 32, 3]], "ishape_folded": [ifold], "ishape_packed": [packed(ifold, "UINT8")],
        "oshape_normal": [[1, k]], "oshape_folded": [ofold], "oshape_packed": [packed(ofold, odt)],
        "idma_names": ["idma0"], "odma_names": ["odma0"], "num_inputs": 1, "num_outputs": 1,
        "model": "toy", "variant": "x", "topk": k, "classes": [f"c{i}" for i in range(10)],
        "fclk_mhz": 100.0, "bitfile": "finn-accel.bit", "graph": "hw_graph.onnx",
    }


_TOY_MAP = np.random.default_rng(15).integers(-1000, 1001, size=(10, 32 * 32 * 3))


def toy_accelerator(streamed: np.ndarray, k: int) -> np.ndarray:
    """The toy hardware: a fixed random linear map of the streamed input bytes -> 10 scores -> top-k classes.

    Every byte has its own weights, so a byte in another place (pixel order, BGR, a flipped packing
    flag, another word width) changes the scores."""
    scores = streamed.reshape(len(streamed), -1).astype(np.int64) @ _TOY_MAP.T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def finn_stream(images: np.ndarray, io: dict) -> np.ndarray:
    """The bytes the input DMA must stream for `images`: FINN's packer on FINN's folded input shape."""
    folded = images.reshape((len(images),) + tuple(io["ishape_folded"][0][1:])).astype(np.float32)
    return np.ascontiguousarray(finnpy_to_packed_bytearray(folded, DataType[io["idt"][0][10:-2]], True, True))


def toy_labels(x: np.ndarray, k: int = 1, io: dict | None = None) -> np.ndarray:
    """What the toy accelerator answers for images x, computed from FINN's packing of them (not the driver's)."""
    return toy_accelerator(finn_stream(x, io or toy_io(k=k)), k)


def write_package(folder: Path, io: dict, hwh_clock: float | None = 100.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "io_shape.json").write_text(json.dumps(io))
    (folder / "finn-accel.bit").write_bytes(b"\0" * 16)
    if hwh_clock is not None:
        (folder / "finn-accel.hwh").write_text(
            f'<EDKSYSTEM><MODULES><MODULE INSTANCE="clk_wiz_0"><PARAMETERS>'
            f'<PARAMETER NAME="CLKOUT1_OUT_FREQ" VALUE="{hwh_clock}"/></PARAMETERS></MODULE></MODULES></EDKSYSTEM>')
    return folder


@pytest.fixture
def fake_board(monkeypatch):
    def make(io, compute=None, finish=True):
        board = FakeBoard(io, compute, finish)
        monkeypatch.setitem(sys.modules, "pynq", board.module())
        monkeypatch.setitem(sys.modules, "pynq.ps", sys.modules["pynq"].ps)
        return board
    return make


@pytest.mark.parametrize("simd, k, odt, per_word", [(3, 1, "UINT8", 1), (1, 1, "UINT8", 1), (3, 3, "UINT8", 1),
                                                    (3, 3, "UINT4", 3), (1, 4, "UINT4", 2)])
def test_board_path_buffers_and_dma_sequence(tmp_path, fake_board, cifar_test, simd, k, odt, per_word):
    io = toy_io(simd, k, odt, per_word)
    board = fake_board(io)  # the toy accelerator: a random linear map of the streamed bytes
    pkg = write_package(tmp_path / "pkg", io, hwh_clock=125.0)
    accel = drv.BnnflowAccelerator(pkg, batch_size=32, quiet=True)
    assert accel.backend == "board" and board.loaded == (str(pkg / "finn-accel.bit"), True)
    assert accel.fclk_mhz == 125.0 and sys.modules["pynq"].ps.Clocks.fclk0_mhz == 100.0
    assert accel.ibuf.shape == (32, 32, 32, 3 // simd, simd) and accel.obuf.shape == (32, *io["oshape_packed"][0][1:])
    x, _ = cifar_test
    images = x[:70]
    expected = toy_labels(images, k, io)
    # the answers differ between images, and in the wrong byte order they would differ from these
    assert len(np.unique(expected[:, 0])) >= 5
    assert not np.array_equal(expected, toy_labels(images[..., ::-1], k, io))
    board.log.clear()
    top = accel.classify(images, topk=True)
    # the bytes the input DMA streamed are FINN's packing of the images, run by run
    assert np.array_equal(np.concatenate(board.streamed[-3:]), finn_stream(images, io))
    assert top.shape == (70, k) and np.array_equal(top, expected)
    assert np.array_equal(accel.classify(images), expected[:, 0])
    assert accel.classify(images[5]) == expected[5, 0]
    # the first run of the classify() above: 32 images, exactly FINN's zynq-iodma protocol
    ia, oa = accel.ibuf.device_address, accel.obuf.device_address
    first = board.log[:board.log.index(("computed", 32)) + 1]
    assert first == [
        ("flush", ia),
        ("read", "odma0", drv.AP_CTRL),
        ("write", "odma0", drv.ADDR_LO, oa & 0xFFFFFFFF), ("write", "odma0", drv.ADDR_HI, oa >> 32),
        ("write", "odma0", drv.NUM_REPS, 32), ("write", "odma0", drv.AP_CTRL, 1),
        ("write", "idma0", drv.ADDR_LO, ia & 0xFFFFFFFF), ("write", "idma0", drv.ADDR_HI, ia >> 32),
        ("write", "idma0", drv.NUM_REPS, 32), ("write", "idma0", drv.AP_CTRL, 1),
        ("computed", 32),
    ]
    rest = board.log[len(first):]
    assert rest[:2] == [("read", "odma0", drv.AP_CTRL), ("invalidate", oa)]
    runs = [e[1] for e in board.log if e[0] == "computed"]
    assert runs[:3] == [32, 32, 6]  # 70 images in buffer-sized runs
    speed = accel.throughput_test()
    assert speed["backend"] == "board" and speed["batch_size"] == 32 and speed["images_per_s"] > 0
    assert speed["fclk_mhz"] == 125.0 and speed["latency_ms"] > 0
    accel.close()
    assert ("free", ia) in board.log and ("free", oa) in board.log


def test_board_errors_are_one_sentence(tmp_path, fake_board, cifar_test):
    io = toy_io()
    fake_board(io, finish=False)
    pkg = write_package(tmp_path / "pkg", io)
    accel = drv.BnnflowAccelerator(pkg, batch_size=4, quiet=True, timeout_s=0.05)
    x = cifar_test[0][:8]
    cases = [
        (x[:5], "do not fit the buffers for 4"),
        (x.astype(np.float32), "uint8 pixels"),
        (x.transpose(0, 3, 1, 2), "channels first"),
        (x[:, :16], "N x 32 x 32 x 3"),
        (x[:0], "empty"),
        (x.tolist(), "numpy array"),
    ]
    for images, needle in cases:
        with pytest.raises(ValueError) as e:
            accel.execute(images)
        assert needle in one_sentence(e.value)
    with pytest.raises(ValueError, match="1 to 4") as e:
        accel.execute_on_buffers(5)
    one_sentence(e.value)
    with pytest.raises(RuntimeError, match="did not finish") as e:  # a hung accelerator does not hang the driver
        accel.classify(x[:2])
    one_sentence(e.value)
    with pytest.raises(RuntimeError, match="still busy"):
        accel.classify(x[:2])
    for kwargs, exc, needle in [({"batch_size": 0}, ValueError, "batch_size"),
                                ({"backend": "fpga"}, ValueError, "Unknown backend")]:
        with pytest.raises(exc, match=needle) as e:
            drv.BnnflowAccelerator(pkg, quiet=True, **kwargs)
        one_sentence(e.value)
    with pytest.raises(FileNotFoundError, match="io_shape.json") as e:
        drv.BnnflowAccelerator(tmp_path, quiet=True)
    one_sentence(e.value)
    other = write_package(tmp_path / "other", {**io, "idma_names": ["idma_7"]})
    with pytest.raises(RuntimeError, match="no DMA called idma_7") as e:  # not the bitfile io_shape.json describes
        drv.BnnflowAccelerator(other, quiet=True)
    one_sentence(e.value)


def test_board_backend_needs_pynq_and_a_bitfile(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynq", None)  # import pynq -> ImportError, as off the board
    pkg = write_package(tmp_path / "pkg", toy_io())
    with pytest.raises(RuntimeError, match="pynq cannot be imported") as e:
        drv.BnnflowAccelerator(pkg, backend="board", quiet=True)
    one_sentence(e.value)
    with pytest.raises(FileNotFoundError, match="hw_graph.onnx") as e:  # auto: no board -> functional model
        drv.BnnflowAccelerator(pkg, quiet=True)
    one_sentence(e.value)


def test_driver_on_the_board_imports_only_numpy_and_pynq(tmp_path):
    """The package's copy of the driver, as the board's Python runs it: no torch, FINN, qonnx or bnnflow."""
    pkg = write_package(tmp_path / "pkg", toy_io(simd=1, k=2))
    for name in ("bnnflow_driver.py", "packing.py"):
        shutil.copy(DRIVER_DIR / name, pkg / name)
    script = textwrap.dedent(f"""
        import sys, types, numpy as np
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "finn", "qonnx", "onnx", "bnnflow", "brevitas", "bitstring"):
                    raise ImportError("not on the board: " + name)
        sys.meta_path.insert(0, Block())
        class DMA:
            def __init__(s): s.r = {{0: 4}}
            def read(s, a): return s.r.get(a, 0)
            def write(s, a, v):
                s.r[a] = v
                if a == 0 and v == 1 and s is idma:
                    odma.r[0] = 6
                    n = idma.r[0x1C]
                    x = buffers[idma.r[0x10]][:n]
                    out = buffers[odma.r[0x10]]
                    s_ = x.reshape(n, -1).astype(np.int64).sum(1)
                    out[:n, 0, 0], out[:n, 1, 0] = s_ % 10, (s_ + 1) % 10   # UINT8, K=2: one byte per index
        idma, odma = DMA(), DMA()
        buffers = {{}}
        class Buf(np.ndarray):
            def flush(s): pass
            def invalidate(s): pass
        def allocate(shape, dtype, cacheable):
            b = np.zeros(shape, dtype).view(Buf); b.device_address = 4096 * (len(buffers) + 1)
            buffers[b.device_address] = b; return b
        class Overlay:
            def __init__(s, bit, download=True): s.idma0, s.odma0 = idma, odma
        pynq = types.ModuleType("pynq"); pynq.Overlay, pynq.allocate = Overlay, allocate
        sys.modules["pynq"] = pynq
        sys.path.insert(0, {str(pkg)!r})
        from bnnflow_driver import BnnflowAccelerator
        accel = BnnflowAccelerator({str(pkg)!r}, batch_size=8)
        x = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
        got = accel.classify(x, topk=True)
        s_ = x.reshape(20, -1).astype(np.int64).sum(1)
        assert (got == np.stack([s_ % 10, (s_ + 1) % 10], 1)).all(), got
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "finn", "qonnx", "onnx", "bnnflow"))
        assert not heavy, heavy
        print("backend", accel.backend)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "backend: board" in out.stdout and "backend board" in out.stdout


# ---------------------------------------------------------------------------- the real design


def brevitas_top1(build: Path, x: np.ndarray) -> np.ndarray:
    from bnnflow.build_flows.verify import run_brevitas
    from bnnflow.models.checkpoint import load_checkpoint

    net, _ = load_checkpoint(build / "model.brevitas.pt")
    return run_brevitas(net, np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32)).argmax(axis=1)


def _input_simd(pkg: Path, simd: int) -> dict:
    """The package's design with `simd` input channels per word (its first node refolded), and its io_shape."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    from bnnflow.build_flows.deploy import io_shape_from_graph

    model = ModelWrapper(str(pkg / "hw_graph.onnx"))
    first = getCustomOp(model.graph.node[0])
    first.set_nodeattr("SIMD", simd)
    model.save(str(pkg / "hw_graph.onnx"))
    io = {**json.loads((pkg / "io_shape.json").read_text()), **io_shape_from_graph(model)}
    (pkg / "io_shape.json").write_text(json.dumps(io))
    return io


@pytest.mark.slow
@pytest.mark.parametrize("simd", [None, 3])
def test_board_path_loops_through_the_design_like_the_functional_backend(package, fake_board, cifar_test, tmp_path,
                                                                         simd):
    """The fake board runs the real hardware graph: board and off-board backends agree with Brevitas.

    simd=3: the same design with its first node refolded to take a whole RGB pixel per input word."""
    from qonnx.core.modelwrapper import ModelWrapper

    from bnnflow.build_flows.functional import FunctionalModel

    build, pkg = package
    if simd is not None:
        pkg = shutil.copytree(pkg, tmp_path / "refolded")
        io = _input_simd(pkg, simd)
        assert io["ishape_folded"][0][-1] == simd and io["ishape_packed"][0][-1] == simd  # 3 bytes per word
    io = json.loads((pkg / "io_shape.json").read_text())
    design = FunctionalModel(ModelWrapper(str(pkg / "hw_graph.onnx")))
    board = fake_board(io, lambda x: design(x)[design.outputs[0]])
    boarded = tmp_path / "pkg"
    shutil.copytree(pkg, boarded)
    write_package(boarded, {**io, "bitfile": "finn-accel.bit"})
    x = cifar_test[0][:100]
    on_board = drv.BnnflowAccelerator(boarded, batch_size=40, quiet=True)
    assert on_board.backend == "board"
    got_board = on_board.classify(x)
    assert np.array_equal(np.concatenate(board.streamed), finn_stream(x, io))  # FINN's packing, byte for byte
    off_board = drv.BnnflowAccelerator(pkg, batch_size=40, quiet=True)
    assert off_board.backend == "functional model (no board)" and "no bitfile" in off_board.reason
    got_off = off_board.classify(x)
    assert [e[1] for e in board.log if e[0] == "computed"] == [40, 40, 20]
    assert np.array_equal(got_board, got_off)
    assert np.array_equal(got_off, brevitas_top1(build, x))


def _load_package_driver(pkg: Path):
    spec = importlib.util.spec_from_file_location("bnnflow_driver_pkg", pkg / "bnnflow_driver.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_off_board_backend_from_the_package_matches_brevitas(package, cifar_test, monkeypatch, capsys):
    build, pkg = package
    monkeypatch.setitem(sys.modules, "pynq", None)
    mod = _load_package_driver(pkg)  # the package's own copy, loaded as on the board
    accel = mod.BnnflowAccelerator(pkg)
    printed = capsys.readouterr().out
    assert accel.backend == "functional model (no board)" and "functional model (no board)" in printed
    assert "pynq is not installed" in printed
    x, y = cifar_test
    pred = accel.classify(x[:150])  # more than the 100-image buffer
    assert pred.shape == (150,)
    ref = brevitas_top1(build, x[:150])
    assert np.array_equal(pred, ref)
    assert np.mean(pred == y[:150]) == np.mean(ref == y[:150])
    assert accel.class_names(pred[:3]) == [accel.classes[i] for i in pred[:3]]
    speed = accel.throughput_test(batch_size=10)
    assert speed["backend"] == "functional model (no board)" and speed["estimated_fps"] > 0
    assert "not hardware speed" in speed["measured_on"]
