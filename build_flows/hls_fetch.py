"""The third source of cppsim's third-party C++: GitHub, at the commits finn-plus pins (issue 11).

hls_sources.find_sources looks in this order: a real Vitis HLS (`XILINX_HLS`), then `BNNFLOW_HLS_DEPS` or
../shared/vendor (and finn-hlslib in FINN's own FINN_DEPS), then here: finn-hlslib at the commit in
finn-plus's `finn/interface/external_dependencies.yaml`, and the open-source ap_int headers
(Xilinx/HLS_arbitrary_Precision_Types, which finn-plus does not pin: bnnflow pins the commit
../shared/vendor holds). Each is checked out once into $BNNFLOW_HLS_CACHE (default
~/.cache/bnnflow/hls-deps/NAME-COMMIT) and never into the repository. Where GitHub cannot be
reached, fetch() returns one sentence instead. BNNFLOW_HLSLIB_URL / BNNFLOW_APTYPES_URL replace
the URLs (a mirror, or a local repository in the tests).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "BNNFLOW_HLS_CACHE"
TIMEOUT_S = 120
FINN_HLSLIB = "finn-hlslib"
AP_TYPES = "HLS_arbitrary_Precision_Types"
AP_TYPES_URL = "https://github.com/Xilinx/HLS_arbitrary_Precision_Types.git"
AP_TYPES_COMMIT = "200a9aecaadf471592558540dc5a88256cbf880f"  # as in ../shared/vendor/README.md
URL_ENV = {FINN_HLSLIB: "BNNFLOW_HLSLIB_URL", AP_TYPES: "BNNFLOW_APTYPES_URL"}
CHECK_FILE = {FINN_HLSLIB: "bnn-library.h", AP_TYPES: "include/ap_int.h"}
LABEL = {FINN_HLSLIB: "finn-hlslib", AP_TYPES: "the open-source ap_int headers (HLS_arbitrary_Precision_Types)"}


@dataclass(frozen=True)
class Pin:
    name: str
    url: str
    commit: str


def pins() -> dict[str, Pin]:
    """What is fetched: finn-hlslib as finn-plus pins it, the ap_int headers as bnnflow pins them."""
    import yaml

    import finn

    deps = yaml.safe_load((Path(finn.__file__).parent / "interface" / "external_dependencies.yaml").read_text())
    hlslib = deps["git_deps"][FINN_HLSLIB]
    return {FINN_HLSLIB: Pin(FINN_HLSLIB, hlslib["url"], hlslib["commit"]),
            AP_TYPES: Pin(AP_TYPES, AP_TYPES_URL, AP_TYPES_COMMIT)}


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "bnnflow" / "hls-deps")


def checkout_dir(pin: Pin) -> Path:
    return cache_root() / f"{pin.name}-{pin.commit[:12]}"


def _git(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"}
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)


def fetch(name: str) -> Path | str:
    """The checkout of `name` (FINN_HLSLIB or AP_TYPES) at its pinned commit, fetched once; or one sentence
    saying why it could not be had."""
    pin = pins()[name]
    url = os.environ.get(URL_ENV[name]) or pin.url
    dest = checkout_dir(pin)
    if (dest / CHECK_FILE[name]).is_file():
        return dest
    if shutil.which("git") is None:
        return f"{LABEL[name]} could not be fetched from {url} (git is not installed)"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=dest.parent) as tmp:
        work = Path(tmp) / "repo"
        try:
            steps = [["init", "-q", str(work)], ["-C", str(work), "fetch", "-q", "--depth", "1", url, pin.commit]]
            r = None
            for args in steps:
                r = _git(args)
                if r.returncode != 0:
                    break
            if r.returncode != 0:  # a server that refuses a fetch by commit: the whole history
                shutil.rmtree(work, ignore_errors=True)
                r = _git(["clone", "-q", "--no-checkout", url, str(work)])
            if r.returncode == 0:
                r = _git(["-C", str(work), "-c", "advice.detachedHead=false", "checkout", "-q", pin.commit])
        except subprocess.TimeoutExpired:
            return f"{LABEL[name]} could not be fetched from {url} within {TIMEOUT_S} s"
        if r.returncode != 0 or not (work / CHECK_FILE[name]).is_file():
            fatal = [ln[len("fatal: "):] for ln in r.stderr.splitlines() if ln.startswith("fatal: ")]
            why = (fatal[0] if fatal else "the commit is not there").rstrip(".").replace(". ", "; ")
            return f"{LABEL[name]} could not be fetched from {url} at {pin.commit[:7]} ({why})"
        shutil.rmtree(work / ".git", ignore_errors=True)  # sources only
        if not dest.exists():
            work.rename(dest)
    return dest
