"""The C++ that FINN's cppsim compiles against, without Vitis HLS: found, fetched or laid out.

Vitis HLS normally supplies the headers and libraries the cppsim binaries need; here a stand-in
`XILINX_HLS` folder is laid out in the build folder (see ../shared/notes/vendor-free-sim.md):

* `xilinx_hls/include/`: the open-source ap_int headers (HLS_arbitrary_Precision_Types), with
  `ap_int_base.h`/`ap_fixed_base.h` copied and given the Vitis member `sign_flag` (finn-hlslib's
  LabelSelect static_asserts on it), plus the project's shims in hw/hls_shims/ (`hls_stream.h`,
  `hls_vector.h`, `hls_half.h`, `ap_float.h`, `hls_math.h`, `ap_axi_sdata.h`, and `ap_int.h`/
  `ap_fixed.h` wrappers that add `half` as Vitis's do);
* `xilinx_hls/lnx64/...`: empty archives for the Vitis csim libraries FINN always links
  (compat.CPPSIM_STUB_LIBS);
* `finn_deps/finn-hlslib/`: finn-hlslib, with hw/hlslib_compat/ for what finn-plus 1.6.1 generates
  but the obtainable finn-hlslib (0141fa8) lacks: `unflatten` (flatten.hpp), the hls::vector Pool API
  (pool.hpp, our re-implementation) and `dup.hpp` (finn-hlslib's own file, a newer commit).

Third-party sources are found, in order: a real Vitis HLS install (`XILINX_HLS` with `hls_stream.h`:
its own headers, no shims); `BNNFLOW_HLS_DEPS` or ../shared/vendor next to the repository;
finn-hlslib in FINN's own FINN_DEPS. Without them `unavailable()` says why in one sentence.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bnnflow import compat

from . import hls_fetch

REPO = Path(__file__).resolve().parents[1]
SHIMS = REPO / "hw" / "hls_shims"
HLSLIB_COMPAT = REPO / "hw" / "hlslib_compat"
ENV_DEPS = "BNNFLOW_HLS_DEPS"
SHARED_VENDOR = REPO.parent / "shared" / "vendor"
AP_PATCHED = ("ap_int_base.h", "ap_fixed_base.h")  # copied with `sign_flag` added
AP_WRAPPED = ("ap_int.h", "ap_fixed.h")  # our wrappers in hw/hls_shims; the real ones in include/ap_oss/
HLSLIB_REPLACED = {"flatten.hpp": "flatten_upstream.hpp", "pool.hpp": None}  # compat file -> upstream kept as


@dataclass
class Sources:
    """Where the third-party C++ comes from."""

    hlslib: Path  # finn-hlslib
    ap_include: Path | None = None  # open-source ap_int headers (None with a real Vitis)
    vitis: Path | None = None  # a real XILINX_HLS
    extra: list[Path] = field(default_factory=list)  # single files newer than `hlslib` (dup.hpp)
    origin: str = ""

    def describe(self) -> str:
        return self.origin


def _vendor_root() -> Path:
    return Path(os.environ.get(ENV_DEPS) or SHARED_VENDOR)


def _finn_hlslib() -> Path | None:
    """finn-hlslib as FINN's own `finn deps update` fetches it, if present."""
    try:
        from finn.util.settings import get_settings

        p = Path(get_settings().finn_deps) / "finn-hlslib"
    except Exception:
        p = Path(os.environ.get("FINN_DEPS", "/nonexistent")) / "finn-hlslib"
    return p if (p / "bnn-library.h").is_file() else None


def find_sources() -> Sources | str:
    """The sources cppsim needs, or one sentence saying what is missing. Order: a Vitis HLS install
    (XILINX_HLS); BNNFLOW_HLS_DEPS or ../shared/vendor (finn-hlslib also from FINN's FINN_DEPS); GitHub at
    the pinned commits (hls_fetch), only for what the first two lack."""
    vendor = _vendor_root()
    hlslib = vendor / "finn-hlslib" if (vendor / "finn-hlslib" / "bnn-library.h").is_file() else _finn_hlslib()
    extra = [p for p in [vendor / "finn-hlslib-extra" / "dup.hpp"] if p.is_file()]
    vitis = os.environ.get("XILINX_HLS")
    if not (vitis and (Path(vitis) / "include" / "hls_stream.h").is_file() and
            (Path(vitis) / "include" / "ap_int.h").is_file()):
        vitis = None
    ap = vendor / "HLS_arbitrary_Precision_Types" / "include"
    fetched, unreachable = [], []
    if vitis is None and not (ap / "ap_int.h").is_file():
        got = hls_fetch.fetch(hls_fetch.AP_TYPES)
        ap = got / "include" if isinstance(got, Path) else ap
        (fetched if isinstance(got, Path) else unreachable).append(got)
    if hlslib is None:
        got = hls_fetch.fetch(hls_fetch.FINN_HLSLIB)
        hlslib, extra = (got, []) if isinstance(got, Path) else (None, extra)
        (fetched if isinstance(got, Path) else unreachable).append(got)
    if unreachable:
        where = f"Vitis HLS at {vitis}" if vitis else f"{vendor}"
        return (f"HLS C++ simulation (cppsim) was not run: {' and '.join(unreachable)}, and {where} lacks "
                f"{'them' if len(unreachable) > 1 else 'it'} "
                f"(set {ENV_DEPS} to a folder with finn-hlslib and HLS_arbitrary_Precision_Types, "
                f"or XILINX_HLS to a Vitis HLS install).")
    got = f"; fetched at the pinned commit: {', '.join(p.name for p in fetched)}" if fetched else ""
    if vitis:
        return Sources(hlslib=hlslib, vitis=Path(vitis), extra=extra,
                       origin=f"Vitis HLS headers from {vitis}, finn-hlslib from {hlslib}{got}")
    more = f" (+{', '.join(p.name for p in extra)} from a newer finn-hlslib commit)" if extra else ""
    return Sources(hlslib=hlslib, ap_include=ap, extra=extra,
                   origin=f"open-source ap_int ({ap.parent.name}) and finn-hlslib{more} from {hlslib.parent}{got}")


def _compiler_problem() -> str | None:
    """None when g++ (>= 12 for _Float16) and zlib's headers work, else one sentence."""
    gxx = shutil.which("g++")
    if gxx is None:
        return "HLS C++ simulation (cppsim) was not run: g++ was not found on PATH."
    src = "#include <zlib.h>\n_Float16 h;\nint main() { return 0; }\n"
    try:
        r = subprocess.run([gxx, "-fsyntax-only", "-x", "c++", "-"], input=src, capture_output=True, text=True,
                           timeout=60)
    except (OSError, subprocess.SubprocessError):
        return "HLS C++ simulation (cppsim) was not run: g++ could not be started."
    if r.returncode != 0:
        return ("HLS C++ simulation (cppsim) was not run: g++ cannot compile against zlib with _Float16 "
                "(needs g++ 12 or newer and zlib1g-dev).")
    return None


def unavailable() -> str | None:
    """Why cppsim cannot run here (one sentence), or None when it can."""
    src = find_sources()
    return src if isinstance(src, str) else _compiler_problem()


def hlslib_compat_needed(hlslib: Path) -> dict[str, bool]:
    """Which hw/hlslib_compat files this finn-hlslib needs: the one finn-plus pins (8d979e2) has
    `unflatten` and the hls::vector Pool API itself; 0141fa8 has neither."""
    def text(name: str) -> str:
        try:
            return (hlslib / name).read_text(errors="replace")
        except OSError:
            return ""

    return {"flatten.hpp": "unflatten" not in text("flatten.hpp"),
            "pool.hpp": "class MaxPoolFunction : public PoolFunction<T, T, size>" in text("pool.hpp")
            or "Pool_batch" not in text("pool.hpp")}


def stand_ins(sources: Sources) -> list[str]:
    """The project's own files the simulation uses instead of Vitis's / finn-hlslib's."""
    out = []
    if sources.vitis is None:
        out += sorted(p.name for p in SHIMS.glob("*.h"))
        out += [f"{h} (+sign_flag)" for h in AP_PATCHED]
    need = hlslib_compat_needed(sources.hlslib)
    if need["flatten.hpp"]:
        out.append("flatten.hpp (+unflatten)")
    if need["pool.hpp"]:
        out.append("pool.hpp (hls::vector Pool API, re-implemented)")
    return out


# ------------------------------------------------------------------ the stand-in XILINX_HLS / FINN_DEPS folders


def add_sign_flag(text: str, struct: str) -> str:
    """A copy of ap_int_base.h / ap_fixed_base.h with Vitis's `static const bool sign_flag = _AP_S;`."""
    head = f"struct {struct} : "
    i = text.find(head)
    if i < 0:
        raise ValueError(f"{struct} not found")
    j = text.index("public:", i) + len("public:")
    return text[:j] + "\n  static const bool sign_flag = _AP_S;  // added by bnnflow (Vitis has it)" + text[j:]


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    dst.symlink_to(src)


def layout(sources: Sources, dest: Path) -> tuple[Path, Path]:
    """Lay out (XILINX_HLS, FINN_DEPS) stand-ins under dest; returns both paths."""
    if dest.exists():
        shutil.rmtree(dest)
    deps = dest / "finn_deps"
    hlslib = deps / "finn-hlslib"
    hlslib.mkdir(parents=True)
    (deps / "attention-hlslib").mkdir()  # FINN adds it to -I
    need = hlslib_compat_needed(sources.hlslib)
    for p in sources.hlslib.iterdir():
        if need.get(p.name):
            if HLSLIB_REPLACED[p.name]:
                _link(p, hlslib / HLSLIB_REPLACED[p.name])
            continue
        _link(p, hlslib / p.name)
    for name in HLSLIB_REPLACED:
        if need[name]:
            _link(HLSLIB_COMPAT / name, hlslib / name)
    for p in sources.extra:
        if not (hlslib / p.name).exists():
            _link(p, hlslib / p.name)
    if sources.vitis is not None:
        return sources.vitis, deps
    xhls = dest / "xilinx_hls"
    inc = xhls / "include"
    inc.mkdir(parents=True)
    ap = sources.ap_include
    for p in ap.iterdir():
        if p.name in AP_PATCHED or p.name in AP_WRAPPED:
            continue
        _link(p, inc / p.name)
    _link(ap, inc / "ap_oss")
    for name in AP_PATCHED:
        struct = name.removesuffix(".h")
        (inc / name).write_text(add_sign_flag((ap / name).read_text(), struct))
    for p in SHIMS.glob("*.h"):
        _link(p, inc / p.name)
    compat.write_cppsim_stub_libs(xhls)
    return xhls, deps


@contextlib.contextmanager
def finn_cppsim_environment(xilinx_hls: Path, finn_deps: Path, build_dir: Path):
    """Point FINN's settings and environment at the stand-ins while inside; restored afterwards."""
    compat.finn_ready()
    from finn.util.settings import get_settings

    import finn

    settings = get_settings()
    names = ("XILINX_HLS", "FINN_DEPS", "FINN_CUSTOM_HLS", "FINN_BUILD_DIR")
    saved_env = {k: os.environ.get(k) for k in names}
    saved_deps, saved_build = settings.finn_deps, settings.finn_build_dir
    try:
        os.environ["XILINX_HLS"] = str(xilinx_hls)
        os.environ.update(compat.finn_custom_hls_env(Path(finn.__file__).parent))
        settings.finn_deps = finn_deps
        os.environ["FINN_DEPS"] = str(finn_deps)
        compat.set_finn_build_dir(build_dir)
        yield
    finally:
        settings.finn_deps = saved_deps
        settings.finn_build_dir = saved_build
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
