"""Where a sweep's tasks run: a Dask LocalCluster sized to this machine, a running scheduler, or batch jobs.

Workers are processes with one thread each: FINN keeps per-process state (its settings, the build
folder it works in), so two points never share an interpreter. Batch clusters come from
dask-jobqueue (SLURM, LSF, PBS): each job starts `processes` workers on `cores` cores, and runs in
the folder the sweep was started from, with the same Python, so workers import the same bnnflow.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from bnnflow.cores import usable_cores
from bnnflow.errors import BnnflowError

BATCH_SYSTEMS = ("slurm", "lsf", "pbs")
POINT_MEMORY = 2 * 1024 ** 3  # an estimate-only build of the default models peaks at 1-2 GB (README, Scaling out)
# a worker holds only the point it builds: a point queued behind a long build could start elsewhere, and a
# worker that dies (out of memory) takes only its own point down, not one merely waiting there; an external
# scheduler needs the same (DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION=1.0)
SCHEDULER_CONFIG = {"distributed.scheduler.worker-saturation": 1.0}
CONNECT_SECONDS = 10  # the TCP knock, then Dask's handshake: an unreachable scheduler ends within ~20 s
FORWARDED_ENV = ("BNNFLOW_DATA", "BNNFLOW_HLS_DEPS", "FINN_XILINX_PATH", "FINN_XILINX_VERSION", "XILINX_VIVADO",
                 "XILINX_HLS")


@dataclass(frozen=True)
class ClusterSpec:
    """How to run a sweep's tasks.

    jobs: local worker processes (None: sized to this machine; 1: in this process, no Dask), or with
        `cluster` the number of batch jobs; scheduler: the address of a running Dask scheduler.
    cluster: slurm | lsf | pbs, with cores, processes (workers per job, default one per core),
        memory and walltime per job, queue and account (LSF: project).
    """

    jobs: int | None = None
    scheduler: str | None = None
    cluster: str | None = None
    cores: int = 4
    processes: int | None = None
    memory: str = "16GB"
    walltime: str = "02:00:00"
    queue: str | None = None
    account: str | None = None

    def check(self) -> ClusterSpec:
        if self.scheduler and self.cluster:
            raise BnnflowError("Pass either --scheduler (a running Dask scheduler) or --cluster (batch jobs), "
                               "not both.")
        if self.cluster is not None and self.cluster not in BATCH_SYSTEMS:
            raise BnnflowError(f"Unknown --cluster {self.cluster!r}: choose one of {', '.join(BATCH_SYSTEMS)}.")
        if self.jobs is not None and self.jobs < 1:
            raise BnnflowError(f"--jobs must be at least 1, not {self.jobs}.")
        if self.cores < 1 or (self.processes is not None and not 1 <= self.processes <= self.cores):
            raise BnnflowError(f"--cores must be at least 1 and --processes from 1 to --cores, not {self.cores} "
                               f"and {self.processes}.")
        if self.scheduler is not None and "://" not in self.scheduler:
            raise BnnflowError(f"--scheduler takes a Dask scheduler address such as tcp://HOST:8786, "
                               f"not {self.scheduler!r}.")
        return self

    @property
    def in_process(self) -> bool:
        return self.jobs == 1 and not self.scheduler and not self.cluster

    def describe(self) -> str:
        if self.scheduler:
            return f"the Dask scheduler at {self.scheduler}"
        if self.cluster:
            return (f"{self.jobs or 1} {self.cluster.upper()} job(s) of {self.cores} cores, {self.memory}, "
                    f"{self.walltime}")
        if self.in_process:
            return "this process (one point after another)"
        workers, memory = local_workers(self.jobs)
        return f"a local Dask cluster of {workers} worker process(es), {memory / 1024 ** 3:.1f} GB each"


def local_workers(jobs: int | None) -> tuple[int, int]:
    """(worker processes, memory limit per worker in bytes): one per core this process may use, at most
    as many as the memory holds estimate-only builds, unless `jobs` says how many."""
    import psutil

    total = psutil.virtual_memory().total
    cores = usable_cores()
    n = jobs or max(1, min(cores, total // POINT_MEMORY))
    return n, total // n


def batch_cluster(spec: ClusterSpec):
    """The dask-jobqueue cluster of `spec` (no job is submitted until it is scaled)."""
    import dask_jobqueue

    from dask.utils import parse_bytes
    from dask_jobqueue.pbs import pbs_format_bytes_ceil

    processes = spec.processes or spec.cores
    # Dask counts one core per worker process, so each runs one point on one thread (FINN is not
    # thread-safe); the job still asks the batch system for all `cores` (Vivado uses several per point)
    cpus = {"slurm": {"job_cpu": spec.cores, "account": spec.account},
            "lsf": {"ncpus": spec.cores, "project": spec.account},
            "pbs": {"account": spec.account, "resource_spec": f"select=1:ncpus={spec.cores}:mem="
                                                              f"{pbs_format_bytes_ceil(parse_bytes(spec.memory))}"}}
    cls = {"slurm": dask_jobqueue.SLURMCluster, "lsf": dask_jobqueue.LSFCluster,
           "pbs": dask_jobqueue.PBSCluster}[spec.cluster]
    env = [f"export {k}={shlex.quote(os.environ[k])}" for k in FORWARDED_ENV if os.environ.get(k)]
    return cls(cores=processes, processes=processes, memory=spec.memory, walltime=spec.walltime, queue=spec.queue,
               python=sys.executable, job_name="bnnflow-sweep",
               # workers run where the sweep was started, so relative data paths and ../shared resolve alike
               job_script_prologue=[f"cd {shlex.quote(os.getcwd())}", *env],
               scheduler_options={"dashboard_address": None}, **cpus[spec.cluster])


def job_script(spec: ClusterSpec) -> str:
    """The batch script one job of `spec` would submit."""
    import dask
    import distributed  # noqa: F401 - its config defaults must be loaded before SCHEDULER_CONFIG is set

    with dask.config.set(SCHEDULER_CONFIG):
        cluster = batch_cluster(spec.check())
    try:
        return cluster.job_script()
    finally:
        cluster.close()


def _knock(address: str) -> None:
    """A plain TCP connect first: a closed port or an unknown host fails at once, where Dask's client
    would retry until its timeout; a host that does not answer fails after CONNECT_SECONDS."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address)
    if parts.scheme not in ("tcp", "tls") or not parts.hostname:
        return  # other transports (inproc, ucx): Dask's own connect decides
    try:
        port = parts.port or 8786  # Dask's default scheduler port
    except ValueError:
        raise OSError(f"{address.split(':')[-1]!r} is not a port number") from None
    try:
        socket.create_connection((parts.hostname, port), timeout=CONNECT_SECONDS).close()
    except socket.timeout:
        raise TimeoutError(f"no answer within {CONNECT_SECONDS} s") from None
    except socket.gaierror:
        raise OSError(f"unknown host {parts.hostname}") from None
    except ConnectionRefusedError:
        raise OSError(f"nothing listens on port {port} of {parts.hostname}") from None


@contextlib.contextmanager
def connect(spec: ClusterSpec) -> Iterator:
    """A Dask client on the cluster `spec` names; a cluster started here is closed afterwards."""
    import dask
    from distributed import Client, LocalCluster

    spec.check()
    if spec.scheduler:
        try:
            _knock(spec.scheduler)
            client = Client(spec.scheduler, timeout=f"{CONNECT_SECONDS}s")
        except (OSError, TimeoutError) as exc:
            why = " ".join(str(exc).split()).rstrip(".").replace(". ", "; ") or type(exc).__name__
            raise BnnflowError(f"Cannot reach the Dask scheduler at {spec.scheduler} ({why}): start it with "
                               "'dask scheduler' and its workers with 'dask worker ADDRESS --nthreads 1'.") from None
        with client:
            yield client
        return
    with dask.config.set(SCHEDULER_CONFIG):
        if spec.cluster:
            cluster = batch_cluster(spec)
            cluster.scale(jobs=spec.jobs or 1)
        else:
            workers, memory = local_workers(spec.jobs)
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit=memory,
                                   dashboard_address=None)
    with cluster, Client(cluster) as client:
        yield client
