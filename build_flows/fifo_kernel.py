"""The stream model's cycle loop in C: the same rules as fifo_sim.StreamSim, ~1000x faster.

Sizing every FIFO needs hundreds of simulations of the whole graph (one per candidate depth),
and the numpy loop costs ~100 us per cycle whatever the graph's size, i.e. 10-15 s per run of
ResNetE default. This kernel runs the identical cycle rules (every decision from the
occupancies at the start of the cycle, every move at its end, FINN's fifo.sv) over the
arrays StreamSim already builds, in tens of milliseconds. It is compiled once per source
version with the system C compiler (cc/gcc, which FINN's cppsim needs anyway) into a cache
folder and loaded with ctypes; without a compiler StreamSim keeps its numpy loop, and
tests/test_fifos.py checks the two give identical frames, peaks and deadlock cycles.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

CACHE_ENV = "BNNFLOW_KERNEL_CACHE"  # folder for the compiled kernel (default: the temp folder)
DISABLE_ENV = "BNNFLOW_NO_FIFO_KERNEL"  # set to 1 to force the numpy loop
COMPILE_TIMEOUT_S = 120
STATUS_FINISHED, STATUS_DEADLOCK, STATUS_TOO_LONG, STATUS_STOPPED = 0, 1, 2, 3
WRITE_SHIFT = 16  # write-port bits start here in a step's I/O mask
MAX_PORTS = 16  # input or output ports per node the mask holds

FIELDS = (  # the C struct Sim, in order: (name, pointer?)
    ("n_seq", 0), ("n_in", 0), ("n_out", 0), ("pc", 1), ("steps", 1), ("base", 1), ("total", 1), ("io", 1),
    ("next_io", 1), ("ein", 1), ("eout", 1),
    ("n_swg", 0), ("s_in", 1), ("s_out", 1), ("s_nin", 1), ("s_nout", 1), ("s_buf", 1), ("need", 1),
    ("oldest", 1), ("need_base", 1), ("oldest_base", 1), ("rc", 1), ("wc", 1), ("rtotal", 1), ("wtotal", 1),
    ("need_now", 1), ("oldest_now", 1),
    ("occ", 1), ("depth", 1), ("peak", 1), ("source", 0), ("unbounded", 0), ("out_edge", 0), ("out_tokens", 0),
    ("frames", 0), ("frame_done", 1), ("n_done", 0), ("cycle", 0), ("max_cycles", 0),
    ("ok", 1), ("cr", 1), ("cw", 1), ("ph", 1), ("mio", 1), ("blk", 1), ("blk_occ", 1),
    ("track", 0), ("waits", 1), ("reads", 1), ("n_stop", 0), ("stop_e", 1), ("stop_n", 1),
)
_TYPES = {"io": "u32", "mio": "u32", "ok": "u8", "cr": "u8", "cw": "u8"}

_BODY = r"""
/* seq: pc/steps/base/total per process, io[step] = read-port bits | write-port bits << 16,
   next_io[step] = steps to the next step with I/O, edges [port][process], ph = pc % steps;
   swg: counters and need/oldest tables; streams: occ/depth/peak (n_edges + source + sink);
   blk[i]: a FIFO that stalled process i (-1: none) and blk_occ[i] its occupancy then: only i reads
   its inputs and writes its outputs, so while that occupancy is unchanged i stays stalled. */

static int decide_seq(Sim *s, int *any_ok, int *any_live)  /* ok[i]: step i's current step runs */
{
    int any_io = 0;
    for (i64 i = 0; i < s->n_seq; i++) {
        s->ok[i] = 0;
        if (s->pc[i] >= s->total[i]) continue;
        *any_live = 1;
        if (s->blk[i] >= 0 && s->occ[s->blk[i]] == s->blk_occ[i]) continue;
        u32 m = s->io[s->base[i] + s->ph[i]];
        int go = 1;
        s->mio[i] = m;
        s->blk[i] = -1;
        for (i64 k = 0; m && k < s->n_in; k++) {
            i64 e = s->ein[k * s->n_seq + i];
            if ((m >> k) & 1u && s->occ[e] <= 0) { go = 0; s->blk[i] = e; }
        }
        for (i64 k = 0; m && k < s->n_out; k++) {
            i64 e = s->eout[k * s->n_seq + i];
            if ((m >> (16 + k)) & 1u && s->occ[e] >= s->depth[e]) { go = 0; s->blk[i] = e; }
        }
        if (!go) s->blk_occ[i] = s->occ[s->blk[i]];
        s->ok[i] = (u8)go;
        *any_ok |= go;
        any_io |= go && m;
    }
    return any_io;
}

static int decide_swg(Sim *s, int *left)  /* cr/cw: each generator reads / writes this cycle */
{
    int moves = 0;
    for (i64 j = 0; j < s->n_swg; j++) {
        s->cw[j] = s->wc[j] < s->wtotal[j] && s->rc[j] > s->need_now[j] && s->occ[s->s_out[j]] < s->depth[s->s_out[j]];
        s->cr[j] = s->rc[j] < s->rtotal[j] && s->occ[s->s_in[j]] > 0 && s->rc[j] - s->oldest_now[j] < s->s_buf[j];
        moves |= s->cw[j] | s->cr[j];
        *left |= s->wc[j] < s->wtotal[j];
    }
    return moves;
}

static void idle_jump(Sim *s)  /* every movable process is on steps without I/O: skip to the first I/O */
{
    i64 jump = -1;
    for (i64 i = 0; i < s->n_seq; i++) {
        if (!s->ok[i]) continue;
        i64 n = s->next_io[s->base[i] + s->ph[i]];
        if (jump < 0 || n < jump) jump = n;
    }
    if (jump < 1) jump = 1;
    for (i64 i = 0; i < s->n_seq; i++) {
        if (!s->ok[i]) continue;
        i64 d = (s->total[i] - s->pc[i] < jump) ? s->total[i] - s->pc[i] : jump;
        s->pc[i] += d;
        s->ph[i] = (s->ph[i] + d) % s->steps[i];  /* a jump ends at the frame's end at the latest */
    }
    s->cycle += jump;
}

static void bump(Sim *s, i64 e)  /* a write: reads were applied first, so this is the cycle's end */
{
    if (++s->occ[e] > s->peak[e]) s->peak[e] = s->occ[e];
}

static void apply(Sim *s)
{
    for (i64 i = 0; i < s->n_seq; i++)
        for (i64 k = 0; s->ok[i] && s->mio[i] && k < s->n_in; k++)
            if ((s->mio[i] >> k) & 1u) s->occ[s->ein[k * s->n_seq + i]]--;
    for (i64 j = 0; j < s->n_swg; j++) if (s->cr[j]) { s->occ[s->s_in[j]]--; s->rc[j]++; }
    for (i64 i = 0; i < s->n_seq; i++) {
        if (!s->ok[i]) continue;
        for (i64 k = 0; s->mio[i] && k < s->n_out; k++)
            if ((s->mio[i] >> (16 + k)) & 1u) bump(s, s->eout[k * s->n_seq + i]);
        s->pc[i]++;
        if (++s->ph[i] == s->steps[i]) s->ph[i] = 0;
    }
    for (i64 j = 0; j < s->n_swg; j++) {
        if (!s->cw[j]) continue;
        bump(s, s->s_out[j]);
        s->wc[j]++;
        i64 f = s->wc[j] / s->s_nout[j], o = s->wc[j] % s->s_nout[j];
        s->need_now[j] = s->need[s->need_base[j] + o] + f * s->s_nin[j];
        s->oldest_now[j] = s->oldest[s->oldest_base[j] + o] + f * s->s_nin[j];
    }
}

static int reached(Sim *s)  /* count this cycle's reads: has every stop edge had its reads? */
{
    for (i64 i = 0; i < s->n_seq; i++)
        for (i64 k = 0; s->ok[i] && s->mio[i] && k < s->n_in; k++)
            if ((s->mio[i] >> k) & 1u) s->reads[s->ein[k * s->n_seq + i]]++;
    for (i64 j = 0; j < s->n_stop; j++)
        if (s->reads[s->stop_e[j]] < s->stop_n[j]) return 0;
    return 1;
}

static void count_waits(Sim *s)  /* +1 per input a live process waits on empty while another holds data */
{
    for (i64 i = 0; i < s->n_seq; i++) {
        if (s->pc[i] >= s->total[i]) continue;
        u32 m = s->io[s->base[i] + s->ph[i]];  /* not mio: a process still stalled kept its old one */
        int holding = 0;
        for (i64 k = 0; k < s->n_in; k++) {
            i64 e = s->ein[k * s->n_seq + i];
            holding += e != s->source && s->occ[e] > 0;  /* unused ports read the source */
        }
        for (i64 k = 0; holding && k < s->n_in; k++) {
            i64 e = s->ein[k * s->n_seq + i];
            if ((m >> k) & 1u && e != s->source && s->occ[e] <= 0) s->waits[e]++;
        }
    }
}

int run(Sim *s)  /* 0: every frame done, 1: deadlock, 2: past max_cycles, 3: stop edges read enough */
{
    for (i64 i = 0; i < s->n_seq; i++) { s->ph[i] = s->pc[i] % s->steps[i]; s->blk[i] = -1; }
    for (;;) {
        int any_ok = 0, any_live = 0, left = 0;
        int any_io = decide_seq(s, &any_ok, &any_live);
        int swg_moves = decide_swg(s, &left);
        if (!swg_moves && !any_io) {
            if (!any_ok) return (!any_live && !left) ? 0 : 1;
            idle_jump(s);
            continue;
        }
        if (s->n_stop && reached(s)) return 3;
        if (s->track) count_waits(s);
        apply(s);
        s->occ[s->source] = s->unbounded;
        s->cycle++;
        while (s->n_done < s->frames && s->occ[s->out_edge] >= (s->n_done + 1) * s->out_tokens)
            s->frame_done[s->n_done++] = s->cycle;
        if (s->cycle > s->max_cycles) return 2;
    }
}
"""


def _c_source() -> str:
    fields = "".join(f"    {_TYPES.get(n, 'i64')} {'*' if ptr else ''}{n};\n" for n, ptr in FIELDS)
    return ("#include <stdint.h>\ntypedef int64_t i64;\ntypedef uint32_t u32;\ntypedef uint8_t u8;\n"
            f"typedef struct {{\n{fields}}} Sim;\n" + _BODY)


_SOURCE = _c_source()


class _Sim(ctypes.Structure):
    _fields_ = [(n, ctypes.c_void_p if ptr else ctypes.c_int64) for n, ptr in FIELDS]


_LIB: ctypes.CDLL | None = None
_TRIED = False


def _cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or tempfile.gettempdir()) / f"bnnflow-kernel-{os.getuid()}"


def _compile() -> ctypes.CDLL | None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    tag = hashlib.sha256(_SOURCE.encode()).hexdigest()[:16]
    folder = _cache_dir()
    lib = folder / f"fifo_kernel_{tag}.so"
    if not lib.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        src = folder / f"fifo_kernel_{tag}.c"
        src.write_text(_SOURCE)
        tmp = folder / f".fifo_kernel_{tag}.{os.getpid()}.so"  # atomic: concurrent sessions race safely
        r = subprocess.run([cc, "-O3", "-shared", "-fPIC", "-o", str(tmp), str(src)], capture_output=True,
                           timeout=COMPILE_TIMEOUT_S)
        if r.returncode != 0:
            return None
        os.replace(tmp, lib)
    return ctypes.CDLL(str(lib))


def kernel() -> ctypes.CDLL | None:
    """The compiled loop, or None (no compiler, or disabled): then StreamSim steps in numpy."""
    global _LIB, _TRIED
    if os.environ.get(DISABLE_ENV, "").strip() in ("1", "true", "yes"):
        return None
    if not _TRIED:
        _TRIED = True
        try:
            _LIB = _compile()
        except (OSError, subprocess.SubprocessError):
            _LIB = None
    return _LIB


def supports(seq) -> bool:
    """Whether the kernel's per-step I/O masks hold every port of these processes."""
    return seq.n_in <= MAX_PORTS and seq.n_out <= MAX_PORTS


def _io_masks(seq) -> np.ndarray:
    """Per step: bit k for a read on input port k, bit 16 + k for a write on output port k."""
    m = np.zeros(len(seq.rflags[0]), dtype=np.uint32)
    for k, f in enumerate(seq.rflags):
        m |= f.astype(np.uint32) << k
    for k, f in enumerate(seq.wflags):
        m |= f.astype(np.uint32) << (WRITE_SHIFT + k)
    return m


def run_kernel(lib: ctypes.CDLL, seq, swg, streams, out_edge: int, out_tokens: int, frames: int,
               max_cycles: int, track_waits: bool = False,
               stop_after_reads: dict[int, int] | None = None) -> tuple[int, int, list[int]]:
    """Run StreamSim's state (seq: SequentialProcs, swg: WindowGenerators, streams: Streams) to the
    end, a deadlock, or (stop_after_reads) once each listed edge had that many reads, in place:
    (status, cycle, frame_done); track_waits counts streams.waits as StreamSim does."""
    n_seq = len(seq.steps)
    keep = []  # the arrays ctypes points into must outlive the call

    def arr(a, dtype=np.int64):
        keep.append(np.ascontiguousarray(a, dtype=dtype))
        return keep[-1]

    if "io" not in seq.static:  # shared by every fresh copy of these processes
        seq.static.update(io=arr(_io_masks(seq), np.uint32), ein=arr(np.stack(seq.ein)), eout=arr(np.stack(seq.eout)))
    io = seq.static["io"]
    pc, rc, wc = arr(seq.pc), arr(swg.rc), arr(swg.wc)
    need_now, oldest_now = arr(swg.need_now), arr(swg.oldest_now)
    occ, peak, waits, reads = arr(streams.occ), arr(streams.peak), arr(streams.waits), arr(streams.reads)
    stop = stop_after_reads or {}
    frame_done = arr(np.zeros(frames))
    n = max(n_seq, 1)
    values = dict(
        n_seq=n_seq, n_in=seq.n_in, n_out=seq.n_out, pc=pc, steps=arr(seq.steps), base=arr(seq.base),
        total=arr(seq.total), io=io, next_io=arr(seq.next_io), ein=seq.static["ein"], eout=seq.static["eout"],
        n_swg=swg.count, s_in=arr(swg.ins), s_out=arr(swg.outs), s_nin=arr(swg.n_in), s_nout=arr(swg.n_out),
        s_buf=arr(swg.buffer), need=arr(swg.need), oldest=arr(swg.oldest), need_base=arr(swg.need_base),
        oldest_base=arr(swg.oldest_base), rc=rc, wc=wc, rtotal=arr(swg.rtotal), wtotal=arr(swg.wtotal),
        need_now=need_now, oldest_now=oldest_now, occ=occ, depth=arr(streams.depth), peak=peak,
        source=streams.source, unbounded=int(streams.occ[streams.source]), out_edge=out_edge,
        out_tokens=out_tokens, frames=frames, frame_done=frame_done, n_done=0, cycle=0, max_cycles=max_cycles,
        ok=arr(np.zeros(n), np.uint8), cr=arr(np.zeros(max(swg.count, 1)), np.uint8),
        cw=arr(np.zeros(max(swg.count, 1)), np.uint8), ph=arr(np.zeros(n)), mio=arr(np.zeros(n), np.uint32),
        blk=arr(np.zeros(n)), blk_occ=arr(np.zeros(n)), track=int(track_waits), waits=waits, reads=reads,
        n_stop=len(stop), stop_e=arr(list(stop.keys()) or [0]), stop_n=arr(list(stop.values()) or [0]))
    sim = _Sim(**{k: (v.ctypes.data if isinstance(v, np.ndarray) else int(v)) for k, v in values.items()})
    status = lib.run(ctypes.byref(sim))
    seq.pc[:], swg.rc[:], swg.wc[:] = pc, rc, wc
    swg.need_now[:], swg.oldest_now[:] = need_now, oldest_now
    streams.occ[:], streams.peak[:], streams.waits[:], streams.reads[:] = occ, peak, waits, reads
    return int(status), int(sim.cycle), [int(x) for x in frame_done[: int(sim.n_done)]]
