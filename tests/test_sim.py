"""`bnnflow verify --sim N`: FINN's cppsim of every HLS layer without Vitis HLS (build_flows/cppsim.py).

Fast: the project's shims and compat headers compiled in one small C++ program (~2 s) and checked
against NumPy; the finn-plus work-arounds in bnnflow/compat.py; missing sources turn the stage into one
sentence. Slow (compile every HLS layer of cnv/tiny, ~1-2 minutes on 2 busy cores): the whole folded
graph in cppsim on real CIFAR-10 images, every HLS node run as its binary, logits identical to Brevitas
and every tensor identical to the functional model; binaries reused on a second run; FINN's
`-fno-builtin -fno-inline` binaries give the same outputs as the faster ones.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from bnnflow import compat
from bnnflow.build_flows import cppsim, hls_fetch, hls_sources, sim_ccache, verilator_build
from bnnflow.build_flows.build import BREVITAS_FILE
from bnnflow.build_flows.verify import CPPSIM_STAGE, folded_model_and_input, print_verify, verify_build
from bnnflow.images import nchw_float
from bnnflow.models.checkpoint import load_checkpoint

from conftest import copy_build, one_sentence


def sources_or_skip() -> hls_sources.Sources:
    why = hls_sources.unavailable()
    if why is not None:
        pytest.skip(why)
    return hls_sources.find_sources()


def gxx(args: list[str], cwd: Path) -> None:
    r = subprocess.run(["g++", *args], cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]


# ------------------------------------------------------------------ the shims, in C++

SHIM_PROGRAM = r"""
#include <cstdio>
#include <ap_int.h>
#include <hls_stream.h>
#include <hls_vector.h>
#include "flatten.hpp"
#include "pool.hpp"

template <typename V> void put(const char *tag, V const &v) {
  std::printf("%s", tag);
  for (auto const &x : v) std::printf(" %lld", (long long)x.to_int64());
  std::printf("\n");
}

int main() {
  // hls::stream: FIFO order, size, empty read returns T() (warning on stderr), leftovers reported
  hls::stream<ap_uint<5>> s("s");
  for (int i = 0; i < 4; i++) s << ap_uint<5>(i + 10);
  std::printf("size %zu\n", s.size());
  ap_uint<5> a; s >> a; std::printf("fifo %d %d\n", a.to_int(), s.read().to_int());
  s.read(); s.read();
  std::printf("empty %d %d\n", s.empty() ? 1 : 0, s.read().to_int());
  hls::stream<int> leftover("leftover"); leftover.write(1);

  // unflatten is flatten's inverse (signed, unsigned, 1-bit)
  ap_int<3> xs[5] = {-4, -1, 0, 1, 3}; ap_int<3> ys[5];
  unflatten(ys, flatten(xs));
  std::printf("signed"); for (auto &y : ys) std::printf(" %d", y.to_int()); std::printf("\n");
  ap_uint<1> bs[7] = {1, 0, 1, 1, 0, 0, 1}; ap_uint<1> cs[7];
  unflatten(cs, flatten(bs));
  std::printf("bits"); for (auto &c : cs) std::printf(" %d", c.to_int()); std::printf("\n");

  // the hls::vector Pool API: 2 windows of K=3 vectors with 2 lanes
  int in[6][2] = {{-8, 3}, {-5, -2}, {-7, 7}, {2, -8}, {6, -1}, {-3, 5}};
  using VI = hls::vector<ap_int<4>, 2>;
  {
    hls::stream<VI> i("i"); hls::stream<hls::vector<ap_int<4>, 2>> o("o");
    for (auto &p : in) i.write(VI({ap_int<4>(p[0]), ap_int<4>(p[1])}));
    MaxPoolFunction<hls::vector<ap_int<4>, 2>> f; Pool_batch<6, 3>(i, o, f);
    put("max", o.read()); put("max", o.read());
  }
  {
    hls::stream<VI> i("i"); hls::stream<hls::vector<ap_int<6>, 2>> o("o");
    for (auto &p : in) i.write(VI({ap_int<4>(p[0]), ap_int<4>(p[1])}));
    AccPoolFunction<hls::vector<ap_int<6>, 2>> f; Pool_batch<6, 3>(i, o, f);
    put("acc", o.read()); put("acc", o.read());
  }
  {
    hls::stream<VI> i("i"); hls::stream<hls::vector<ap_int<4>, 2>> o("o");
    for (auto &p : in) i.write(VI({ap_int<4>(p[0]), ap_int<4>(p[1])}));
    AvgPoolFunction<hls::vector<ap_int<4>, 2>, hls::vector<ap_int<6>, 2>, 3> f; Pool_batch<6, 3>(i, o, f);
    put("avg", o.read()); put("avg", o.read());
  }
  {
    hls::stream<VI> i("i"); hls::stream<hls::vector<ap_int<5>, 2>> o("o");
    for (auto &p : in) i.write(VI({ap_int<4>(p[0]), ap_int<4>(p[1])}));
    QuantAvgPoolFunction<hls::vector<ap_int<5>, 2>, hls::vector<ap_int<6>, 2>, 1> f; Pool_batch<6, 3>(i, o, f);
    put("qavg", o.read()); put("qavg", o.read());
  }
  // finn-hlslib's LabelSelect static_asserts on Vitis's sign_flag, which the patched copies add
  static_assert(ap_int<4>::sign_flag && !ap_uint<4>::sign_flag, "sign_flag");
  return 0;
}
"""


def test_shims_and_compat_headers(tmp_path):
    sources = sources_or_skip()
    xhls, deps = hls_sources.layout(sources, tmp_path / "env")
    (tmp_path / "t.cpp").write_text(SHIM_PROGRAM)
    gxx(["-std=c++17", "-O1", f"-I{xhls}/include", f"-I{deps}/finn-hlslib", "t.cpp", "-o", "t"], tmp_path)
    r = subprocess.run(["./t"], cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "HLS_SHIM_STRICT": ""})
    assert r.returncode == 0, r.stderr
    out = {}
    for line in r.stdout.splitlines():
        tag, *vals = line.split()
        out.setdefault(tag, []).append([int(v) for v in vals])
    assert out["size"] == [[4]] and out["fifo"] == [[10, 11]] and out["empty"] == [[1, 0]]
    assert "read from empty stream 's'" in r.stderr and "stream 'leftover' destroyed with 1 unread" in r.stderr
    assert out["signed"] == [[-4, -1, 0, 1, 3]] and out["bits"] == [[1, 0, 1, 1, 0, 0, 1]]
    x = np.array([[-8, 3], [-5, -2], [-7, 7], [2, -8], [6, -1], [-3, 5]]).reshape(2, 3, 2)
    assert out["max"] == x.max(1).tolist()
    assert out["acc"] == x.sum(1).tolist()
    assert out["avg"] == np.trunc(x.sum(1) / 3).astype(int).tolist()  # C++ division truncates
    assert out["qavg"] == (x.sum(1) >> 1).tolist()  # arithmetic shift
    # HLS_SHIM_STRICT=1 turns a read of an empty stream into an abort
    strict = subprocess.run(["./t"], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "HLS_SHIM_STRICT": "1"})
    assert strict.returncode != 0


FLATTEN_PROGRAM = r"""
#define BNNFLOW_COUNT_FLATTEN
#include <cstdio>
#include <ap_int.h>
#include "flatten.hpp"

static uint64_t state = 0x9E3779B97F4A7C15ull;  // xorshift64: every bit pattern, negative elements too
static uint64_t next() { state ^= state << 13; state ^= state >> 7; state ^= state << 17; return state; }

// words where hw/hlslib_compat's packing differs from finn-hlslib's flatten(), or was not the one picked
template <typename T, int W, size_t N> int differing(int rounds) {
  int bad = 0;
  for (int r = 0; r < rounds; r++) {
    T buf[N];
    for (auto &x : buf) x = T(next());
    size_t const before = bnnflow_compat::fast_flatten_calls;
    ap_uint<N * W> const fast = flatten(buf);  // the call npy2apintstream makes
    bad += bnnflow_compat::fast_flatten_calls != before + 1;
    bad += fast != flatten<T, N>(buf);  // explicit <T, N>: only upstream's template takes a type first
  }
  return bad;
}

int main() {
  std::printf("%d\n", differing<ap_uint<1>, 1, 768>(20) + differing<ap_uint<1>, 1, 7>(50) + differing<ap_int<1>, 1, 65>(50)
      + differing<ap_int<3>, 3, 100>(20) + differing<ap_uint<24>, 24, 5>(50) + differing<ap_int<11>, 11, 33>(50)
      + differing<ap_uint<63>, 63, 4>(50) + differing<ap_int<64>, 64, 3>(50) + differing<ap_uint<64>, 64, 1>(50));
  return 0;
}
"""


def test_fast_flatten_packs_the_same_words(tmp_path):
    """hw/hlslib_compat/flatten.hpp packs ap_int/ap_uint arrays (FINN's testbench inputs and streamed
    weights) with the same bits as finn-hlslib's flatten(), and overload resolution picks it."""
    sources = sources_or_skip()
    if not hls_sources.hlslib_compat_needed(sources.hlslib)["flatten.hpp"]:
        pytest.skip("this finn-hlslib has unflatten: its own flatten.hpp is used as it is")
    xhls, deps = hls_sources.layout(sources, tmp_path / "env")
    (tmp_path / "t.cpp").write_text(FLATTEN_PROGRAM)
    gxx(["-std=c++17", "-O1", f"-I{xhls}/include", f"-I{deps}/finn-hlslib", "t.cpp", "-o", "t"], tmp_path)
    r = subprocess.run(["./t"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.split() == ["0"], (r.stdout, r.stderr)


def test_shim_warnings_are_collected_from_finns_log():
    """FINN logs a cppsim binary's stderr on finn_logger; run_images keeps the shim's lines from it."""
    import logging

    h = cppsim._ShimWarnings()
    log = logging.getLogger("finn_logger")
    log.addHandler(h)
    try:
        log.warning("hls_shim: read from empty stream 'in0_V'\nother output\nhls_shim: read from empty stream 'in0_V'")
        log.warning("g++: note")
    finally:
        log.removeHandler(h)
    assert h.lines == ["hls_shim: read from empty stream 'in0_V'"]


def test_add_sign_flag_inserts_one_member():
    text = "template <int _AP_W, bool _AP_S>\nstruct ap_int_base : public _AP_ROOT_TYPE<_AP_W, _AP_S> {\n public:\n  int x;\n"
    patched = hls_sources.add_sign_flag(text, "ap_int_base")
    assert patched.count("sign_flag") == 1 and patched.replace(
        "\n  static const bool sign_flag = _AP_S;  // added by bnnflow (Vitis has it)", "") == text
    with pytest.raises(ValueError):
        hls_sources.add_sign_flag(text, "ap_fixed_base")


def test_layout_uses_compat_only_where_finn_hlslib_lacks_it(tmp_path):
    """The stand-in folders: shims, sign_flag copies, stub libraries; hw/hlslib_compat only replaces what the
    given finn-hlslib lacks (a finn-hlslib with unflatten and the hls::vector Pool API is used as it is)."""
    ap = tmp_path / "ap"
    ap.mkdir()
    for name in ("ap_int.h", "ap_fixed.h", "ap_common.h"):
        (ap / name).write_text(f"// {name}\n")
    (ap / "ap_int_base.h").write_text("struct ap_int_base : public B<_AP_W, _AP_S> {\n public:\n};\n")
    (ap / "ap_fixed_base.h").write_text("struct ap_fixed_base : B<_AP_W, _AP_S> {\n public:\n};\n")
    old, new = tmp_path / "old", tmp_path / "new"
    for lib, flatten, pool in ((old, "flatten()", "class MaxPoolFunction : public PoolFunction<T, T, size> {"),
                               (new, "flatten() unflatten()", "Pool_batch<ISIZE, K>(in, out, f)")):
        lib.mkdir()
        (lib / "bnn-library.h").write_text("")
        (lib / "flatten.hpp").write_text(flatten)
        (lib / "pool.hpp").write_text(pool)
    for lib, compat_used in ((old, True), (new, False)):
        src = hls_sources.Sources(hlslib=lib, ap_include=ap)
        xhls, deps = hls_sources.layout(src, tmp_path / f"env_{lib.name}")
        inc, h = xhls / "include", deps / "finn-hlslib"
        assert (inc / "ap_int.h").resolve() == hls_sources.SHIMS / "ap_int.h" and (inc / "ap_oss").resolve() == ap
        assert (inc / "ap_common.h").resolve() == ap / "ap_common.h"
        assert "sign_flag = _AP_S" in (inc / "ap_int_base.h").read_text()
        assert "sign_flag = _AP_S" in (inc / "ap_fixed_base.h").read_text()
        assert {p.name for p in hls_sources.SHIMS.glob("*.h")} <= {p.name for p in inc.iterdir()}
        assert all((xhls / rel).read_bytes() == compat.EMPTY_ARCHIVE for rel in compat.CPPSIM_STUB_LIBS)
        assert ((h / "pool.hpp").resolve() == hls_sources.HLSLIB_COMPAT / "pool.hpp") == compat_used
        assert ((h / "flatten.hpp").resolve() == hls_sources.HLSLIB_COMPAT / "flatten.hpp") == compat_used
        assert (h / "flatten_upstream.hpp").exists() == compat_used
        assert any("re-implemented" in s for s in hls_sources.stand_ins(src)) == compat_used


def test_a_real_vitis_install_is_used_as_it_is(monkeypatch, tmp_path):
    """XILINX_HLS with Vitis's own headers: no ap_int/hls shims, only finn-hlslib's folder is laid out."""
    vitis = tmp_path / "Vitis_HLS"
    (vitis / "include").mkdir(parents=True)
    for name in ("ap_int.h", "hls_stream.h"):
        (vitis / "include" / name).write_text("")
    lib = tmp_path / "vendor" / "finn-hlslib"
    lib.mkdir(parents=True)
    (lib / "bnn-library.h").write_text("")
    monkeypatch.setenv("XILINX_HLS", str(vitis))
    monkeypatch.setenv(hls_sources.ENV_DEPS, str(tmp_path / "vendor"))
    src = hls_sources.find_sources()
    assert isinstance(src, hls_sources.Sources) and src.vitis == vitis and src.ap_include is None
    xhls, deps = hls_sources.layout(src, tmp_path / "env")
    assert xhls == vitis and not (tmp_path / "env" / "xilinx_hls").exists()
    assert (deps / "finn-hlslib" / "bnn-library.h").resolve() == lib / "bnn-library.h"
    assert not any(s.endswith(".h") for s in hls_sources.stand_ins(src))  # Vitis's own headers, none of ours


# ------------------------------------------------------------------ compat work-arounds (finn-plus 1.6.1)


def test_stub_libs_satisfy_the_link_and_change_nothing(tmp_path):
    """compat.write_cppsim_stub_libs: FINN's -l flags link against the empty archives, and the program is
    the one built without them (same output)."""
    if shutil.which("g++") is None:
        pytest.skip("g++ not found")
    paths = compat.write_cppsim_stub_libs(tmp_path / "xhls")
    assert [p.read_bytes() for p in paths] == [compat.EMPTY_ARCHIVE] * 4
    (tmp_path / "m.cpp").write_text('#include <cstdio>\nint main() { std::printf("%d\\n", 6 * 7); }\n')
    x = tmp_path / "xhls"
    gxx(["m.cpp", "-o", "plain"], tmp_path)
    gxx(["m.cpp", "-o", "linked", f"-L{x}/lnx64/lib/csim", "-lhlsmc++-GCC46", f"-L{x}/lnx64/tools/fpo_v7_1",
         "-lgmp", "-lmpfr", "-lIp_floating_point_v7_1_bitacc_cmodel"], tmp_path)
    outs = [subprocess.run([f"./{b}"], cwd=tmp_path, capture_output=True, text=True).stdout for b in ("plain", "linked")]
    assert outs == ["42\n", "42\n"]


def test_finn_custom_hls_env(monkeypatch, tmp_path):
    """compat.finn_custom_hls_env: set when unset (compile.sh's bare -I would swallow the next -I), kept when set."""
    import finn

    monkeypatch.delenv("FINN_CUSTOM_HLS", raising=False)
    root = Path(finn.__file__).parent
    env = compat.finn_custom_hls_env(root)
    assert env == {"FINN_CUSTOM_HLS": str(root / "custom_hls")}
    # the failure it prevents: with the variable empty, `-I$FINN_CUSTOM_HLS -Ifolder` becomes `-I -Ifolder`
    script = 'printf "%s\\n" -I$FINN_CUSTOM_HLS -I/x/include'
    broken = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    fixed = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env={"PATH": os.environ["PATH"], **env})
    assert broken.stdout.split() == ["-I", "-I/x/include"]
    assert fixed.stdout.split() == [f"-I{root / 'custom_hls'}", "-I/x/include"]
    monkeypatch.setenv("FINN_CUSTOM_HLS", str(tmp_path))
    assert compat.finn_custom_hls_env(root) == {"FINN_CUSTOM_HLS": str(tmp_path)}


def test_ccache_compile_script_is_free_of_build_folder_paths(tmp_path, monkeypatch):
    """What ccache hashes (the compile command and the testbench) names no path of the build folder, nor FINN's
    random code-gen folder, so the same node compiled in another build folder is a hit (sim_ccache)."""
    from types import SimpleNamespace

    from finn.templates import get_templates_folder

    cache = tmp_path / "b" / "cppsim"
    folder = cache / "code" / "code_gen_cppsim_MVAU_hls_0_x8k2"
    folder.mkdir(parents=True)
    (folder / "execute_MVAU_hls.cpp").write_text(f'f("{folder}/input_0.npy", a);\ng("{folder}/output_0.npy");\n')
    sim_ccache.relative_testbench(folder)
    assert (folder / "execute_MVAU_hls.cpp").read_text() == 'f("input_0.npy", a);\ng("output_0.npy");\n'
    monkeypatch.setenv("FINN_CUSTOM_HLS", str(tmp_path / "custom_hls"))
    hls = cache / "env" / "xilinx_hls"
    builder = SimpleNamespace(
        include_paths=[f"-I{get_templates_folder()}/npy2stream", f"-I{cache}/env/finn_deps/finn-hlslib",
                       "-I$FINN_CUSTOM_HLS", f"-I{hls}/include", "--std=c++17", "-O3", "-lz",
                       f'-Wl,-rpath,"{hls}/lnx64/lib/csim"', f"-L{hls}/lnx64/lib/csim -lhlsmc++-GCC46"],
        cpp_files=[f"{folder}/*.cpp", f"{get_templates_folder()}/npy2stream/cnpy.cpp"],
        executable_path=f"{folder}/node_model")
    links = sim_ccache.env_links(cache / "env")
    script = sim_ccache.compile_script(builder, folder, links, cache, Path("/opt/ccache"))
    compiles = [ln for ln in script.splitlines() if " -c " in ln]
    assert [ln.split()[:4] for ln in compiles] == [["/opt/ccache", "g++", "-c", "execute_MVAU_hls.cpp"],
                                                  ["/opt/ccache", "g++", "-c",
                                                   "../../env/finn_templates/npy2stream/cnpy.cpp"]]
    for ln in compiles:
        assert str(tmp_path) not in ln and "x8k2" not in ln and str(get_templates_folder()) not in ln, ln
        assert "-I../../env/finn_custom_hls" in ln and "-I../../env/xilinx_hls/include" in ln and ln.endswith("-O3")
    link = script.splitlines()[-1]
    assert link.startswith("g++ -o node_model execute_MVAU_hls.o cnpy.o -lz") and "-lhlsmc++-GCC46" in link
    assert f"export CCACHE_BASEDIR={cache.resolve()}" in script
    assert (cache / "env" / "finn_custom_hls").resolve() == tmp_path / "custom_hls"
    # a cache folder that cannot be made (e.g. a read-only home): no ccache, plain g++, not a failure
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv(sim_ccache.ENV_DIR, str(tmp_path / "a-file" / "ccache"))
    assert sim_ccache.exe() is None
    assert sim_ccache.compile_script(builder, folder, links, cache, sim_ccache.exe()).count("\ng++ -c ") == 2


def test_fast_flags_only_drop_finns_two_flags(tmp_path):
    """compat.cppsim_fast_flags: inside, FINN's CppBuilder writes the same compile.sh minus
    `-fno-builtin -fno-inline`; outside (or disabled) FINN's own. (Same outputs: test_cppsim_cnv_tiny.)"""
    compat.finn_ready()
    from finn.util.basic import CppBuilder

    original = CppBuilder.build

    def script(enabled: bool) -> str:
        b = CppBuilder()
        for inc in ("-Ia", "-O3", compat.SLOW_CPPSIM_FLAGS, "-lz"):
            b.append_includes(inc)
        b.append_sources("x.cpp")
        b.set_executable_path(str(tmp_path / "node_model"))
        with compat.cppsim_fast_flags(enabled):
            try:
                b.build(str(tmp_path))
            except Exception:  # x.cpp does not exist: only the script matters
                pass
        return (tmp_path / "compile.sh").read_text()

    assert compat.SLOW_CPPSIM_FLAGS in script(False)
    fast = script(True)
    assert compat.SLOW_CPPSIM_FLAGS not in fast
    assert fast.replace(" -lz", f" {compat.SLOW_CPPSIM_FLAGS} -lz") == script(False)
    assert CppBuilder.build is original


# ------------------------------------------------------------------ missing sources: one sentence


@pytest.mark.parametrize("argv, needle", [
    (["--sim", "-1"], "--sim must be 0"),
    (["--images", "2", "--sim", "3"], "--sim 3 is more than the 2 images"),
])
def test_sim_flag_errors(capsys, argv, needle):
    from bnnflow.cli import main

    code = main(["verify", "cnv", *argv])
    _, err = capsys.readouterr()
    assert code != 0 and needle in one_sentence(err)


def hide_sources(monkeypatch, tmp_path):
    monkeypatch.setenv(hls_sources.ENV_DEPS, str(tmp_path / "empty"))
    monkeypatch.delenv("XILINX_HLS", raising=False)
    monkeypatch.setattr(hls_sources, "_finn_hlslib", lambda: None)
    unreachable(monkeypatch, tmp_path)


def unreachable(monkeypatch, tmp_path):
    """The third source (GitHub) out of reach, as on a machine without internet: local URLs that do not exist."""
    monkeypatch.setenv(hls_fetch.CACHE_ENV, str(tmp_path / "hls-cache"))
    for env in hls_fetch.URL_ENV.values():
        monkeypatch.setenv(env, str(tmp_path / "no-such-repo.git"))


def git_repo(folder: Path, files_per_commit: list[dict[str, str]]) -> list[str]:
    """A local git repository with one commit per dict of files; their hashes."""
    def git(*args):
        return subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True, text=True).stdout

    folder.mkdir(parents=True)
    git("init", "-q")
    commits = []
    for files in files_per_commit:
        for name, text in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
        git("add", "-A")
        git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c")
        commits.append(git("rev-parse", "HEAD").strip())
    return commits


def test_sources_lookup_order_and_fetch_at_the_pinned_commit(monkeypatch, tmp_path):
    """Vitis, then BNNFLOW_HLS_DEPS/../shared/vendor, then a fetch at the pinned commit (a local repository stands
    in for GitHub), checked out once outside the repository; unreachable: one sentence."""
    hide_sources(monkeypatch, tmp_path)
    vendor = tmp_path / "empty"
    (vendor / "HLS_arbitrary_Precision_Types" / "include").mkdir(parents=True)
    (vendor / "HLS_arbitrary_Precision_Types" / "include" / "ap_int.h").write_text("")
    pinned, newer = git_repo(tmp_path / "hlslib.git", [{"bnn-library.h": "pinned", "pool.hpp": "Pool_batch"},
                                                        {"bnn-library.h": "newer"}])
    real = hls_fetch.pins()
    assert real[hls_fetch.FINN_HLSLIB].commit == "8d979e2bdced486dd25d26607d1ff5ae327ed6a8"  # finn-plus 1.6.1's
    monkeypatch.setattr(hls_fetch, "pins", lambda: {**real, hls_fetch.FINN_HLSLIB: hls_fetch.Pin(
        hls_fetch.FINN_HLSLIB, "https://github.invalid/finn-hlslib.git", pinned)})
    # unreachable: one sentence naming what and where
    why = hls_sources.unavailable()
    assert "finn-hlslib could not be fetched from" in why and "no-such-repo" in why
    one_sentence(Exception(why))
    # reachable: checked out at the pinned commit, not the newest, without its .git
    monkeypatch.setenv("BNNFLOW_HLSLIB_URL", str(tmp_path / "hlslib.git"))
    src = hls_sources.find_sources()
    assert isinstance(src, hls_sources.Sources), src
    assert src.hlslib == tmp_path / "hls-cache" / f"finn-hlslib-{pinned[:12]}" and src.extra == []
    assert (src.hlslib / "bnn-library.h").read_text() == "pinned" and not (src.hlslib / ".git").exists()
    assert "fetched at the pinned commit: finn-hlslib" in src.describe()
    shutil.rmtree(tmp_path / "hlslib.git")  # fetched once: no second fetch
    assert hls_sources.find_sources().hlslib == src.hlslib
    # a finn-hlslib in the vendor folder comes first: nothing fetched
    (vendor / "finn-hlslib").mkdir()
    (vendor / "finn-hlslib" / "bnn-library.h").write_text("vendor")
    assert hls_sources.find_sources().hlslib == vendor / "finn-hlslib"
    # a Vitis install comes first for the headers: only finn-hlslib is looked for, ap_int never fetched
    shutil.rmtree(vendor)
    vitis = tmp_path / "Vitis_HLS" / "include"
    vitis.mkdir(parents=True)
    for name in ("ap_int.h", "hls_stream.h"):
        (vitis / name).write_text("")
    monkeypatch.setenv("XILINX_HLS", str(vitis.parent))
    src = hls_sources.find_sources()
    assert src.vitis == vitis.parent and src.hlslib.name == f"finn-hlslib-{pinned[:12]}"
    assert not list((tmp_path / "hls-cache").glob("HLS_arbitrary*"))


def test_missing_sources_is_one_sentence(monkeypatch, tmp_path):
    hide_sources(monkeypatch, tmp_path)
    why = hls_sources.unavailable()
    assert why is not None and "ap_int" in why
    one_sentence(Exception(why))
    (tmp_path / "empty" / "HLS_arbitrary_Precision_Types" / "include").mkdir(parents=True)
    (tmp_path / "empty" / "HLS_arbitrary_Precision_Types" / "include" / "ap_int.h").write_text("")
    why = hls_sources.unavailable()
    assert "finn-hlslib" in why
    one_sentence(Exception(why))
    monkeypatch.setenv(hls_sources.ENV_DEPS, str(tmp_path / "empty"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no g++
    monkeypatch.setattr(hls_sources, "find_sources", lambda: hls_sources.Sources(hlslib=tmp_path))
    why = hls_sources.unavailable()
    assert "g++" in why
    one_sentence(Exception(why))


def test_verify_without_sources_reports_one_sentence(monkeypatch, tmp_path, tiny_cnv_build, cifar_test):
    """verify --sim on a build, sources missing: the stage is one sentence, not a failure (nothing compiled)."""
    hide_sources(monkeypatch, tmp_path)
    out = copy_build(tiny_cnv_build, tmp_path / "cnv")
    net, _ = load_checkpoint(out / BREVITAS_FILE)
    x, y = cifar_test
    console = Console(record=True, width=1000)
    result = verify_build(out, net, x[:4], y, Console(quiet=True), sim=2)
    assert result["all_identical"] and CPPSIM_STAGE not in [s["stage"] for s in result["stages"]]
    assert set(result["cppsim"]) == {"skipped"}
    print_verify(result, console)
    text = console.export_text()
    lines = [line for line in text.splitlines() if "cppsim" in line]
    assert lines == [result["cppsim"]["skipped"]], lines
    assert "Traceback" not in text and not (out / cppsim.CACHE_DIR).exists()


# ------------------------------------------------------------------ the whole folded graph in cppsim


@pytest.mark.slow
def test_cppsim_cnv_tiny(tmp_path, tiny_cnv_build, cifar_test, monkeypatch):
    sources_or_skip()
    out = copy_build(tiny_cnv_build, tmp_path / "cnv")
    net, _ = load_checkpoint(out / BREVITAS_FILE)
    x, y = cifar_test
    result = verify_build(out, net, x[:3], y, Console(quiet=True), sim=2)
    stage = next(s for s in result["stages"] if s["stage"] == CPPSIM_STAGE)
    assert stage["images"] == 2 and stage["identical_integer_logits"] == 2 and stage["same_top1"] == 2
    assert result["all_identical"], result
    info = result["cppsim"]
    assert info["all_tensors_identical"] and not info["tensors_differing"] and not info["hls_nodes_not_run"]
    assert info["shim_warnings"] == []  # no read from an empty stream, no data left in a stream
    assert not info["binaries_reused"]
    child, _ = folded_model_and_input(out, nchw_float(x[:1]))
    assert info["tensors_compared"] == sum(len(n.output) for n in child.graph.node)
    rtl_kind = cppsim.PYTHON if verilator_build.unavailable() else verilator_build.RTL
    for node in child.graph.node:  # every HLS node in C++, every RTL node in Verilator (or Python without it)
        want = rtl_kind if node.op_type.endswith("_rtl") else (
            cppsim.HLS_REIMPLEMENTED.get(node.op_type, cppsim.HLS))
        assert node.op_type.endswith(("_hls", "_rtl")) and info["nodes"][node.name] == want, node.name
    in_cpp = (cppsim.HLS, *cppsim.HLS_REIMPLEMENTED.values())
    assert {t for t, r in info["node_types"].items() if r["ran_as"] in in_cpp} == {"MVAU_hls", "Pool_hls", "LabelSelect_hls"}
    if rtl_kind == verilator_build.RTL:  # real activations through every RTL node's HDL, identical
        rtl = info["verilator"]
        assert rtl["all_identical"] and rtl["nodes_run"] == sum(n.op_type.endswith("_rtl") for n in child.graph.node)
        assert all(r["cycles_per_image"] > 0 for r in rtl["nodes"].values())
        assert info["cycle_check"]["all_agree"], info["cycle_check"]["nodes"]  # stream model = Verilator's cycles

    # a second verify reuses the compiled binaries and gives the same tensors
    child, xf = folded_model_and_input(out, nchw_float(x[:2]))
    prepared = cppsim.prepare(out, child, sources_or_skip())
    assert prepared.reused
    tensors, _, ran = cppsim.run_images(prepared, xf)
    assert ran == {n.name for n in child.graph.node if n.op_type.endswith("_hls")}

    # unpatched, FINN's HLSBackend.execute_node also packs each input for rtlsim (Pool, LabelSelect here);
    # compat.cppsim_without_rtlsim_packing skips that: the same tensors, and the packing ran only unpatched
    from finn.custom_op.fpgadataflow import hlsbackend

    packed = []
    packing = hlsbackend.npy_to_rtlsim_input
    monkeypatch.setattr(hlsbackend, "npy_to_rtlsim_input", lambda *a, **k: packed.append(1) or packing(*a, **k))
    unpatched, _, _ = cppsim.run_images(prepared, xf, rtlsim_packing=True)
    assert packed and all(np.array_equal(unpatched[k], v) for k, v in tensors.items())
    packed.clear()
    cppsim.run_images(prepared, xf[:1])
    assert not packed and hlsbackend.HLSBackend.execute_node.__module__ == hlsbackend.__name__

    # the compiler cache: the same graph compiled in another build folder (FINN's code-gen folders get new
    # random names) is all hits, i.e. the sources compiled are identical, and so are the outputs
    if sim_ccache.exe() is not None:
        other = copy_build(tiny_cnv_build, tmp_path / "elsewhere" / "cnv")
        again = cppsim.prepare(other, child, sources_or_skip())
        compiles = sum(n.op_type.endswith("_hls") for n in child.graph.node) * 2  # the testbench and cnpy.cpp
        assert not again.reused and again.ccache == {"hits": compiles, "misses": 0, "other": 0}, again.ccache
        t2, _, _ = cppsim.run_images(again, xf)
        assert all(np.array_equal(t2[k], v) for k, v in tensors.items())

    import finn
    from qonnx.custom_op.registry import getCustomOp

    # FINN's own flags (-fno-builtin -fno-inline) give the same outputs as compat.cppsim_fast_flags'
    # binaries: rebuild three nodes with FINN's compile.sh and run both binaries on the inputs left by
    # the last image (real activations)
    m = prepared.model
    checked = 0
    for node in m.graph.node:
        if node.name not in ("MVAU_hls_0", "MVAU_hls_1", "Pool_hls_0", "LabelSelect_hls_0"):
            continue
        d = Path(getCustomOp(node).get_nodeattr("code_gen_dir_cppsim"))
        script = (d / "compile.sh").read_text()
        assert compat.SLOW_CPPSIM_FLAGS not in script
        slow = re.sub(r"g\+\+ -o \S+", "g++ -o node_model_finn_flags", script, count=1)  # the link
        slow, changed = re.subn(r" -O3(?= |$)", f" -O3 {compat.SLOW_CPPSIM_FLAGS}", slow, flags=re.M)
        assert changed == script.count(" -c ") == 2, script  # every compile (testbench, cnpy.cpp) gets FINN's flags
        (d / "compile_finn_flags.sh").write_text(slow)
        env = {**os.environ, **compat.finn_custom_hls_env(Path(finn.__file__).parent)}
        r = subprocess.run(["bash", str(d / "compile_finn_flags.sh")], capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        outs = []
        for exe in ("node_model", "node_model_finn_flags"):
            subprocess.run([str(d / exe)], check=True, capture_output=True, cwd=d)  # its .npy paths are relative
            outs.append(np.load(d / "output_0.npy"))
        assert np.array_equal(outs[0], outs[1]), node.name
        checked += 1
    assert checked == 4
