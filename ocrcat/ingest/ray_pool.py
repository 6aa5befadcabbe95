"""Shards as Ray tasks: the same `process_shard` the local process pool runs, on a Ray cluster.

Ray core tasks, not Ray Data: a shard is already the unit of work and of commit (its rows, errors
and done-mark land in one transaction on the driver), each task returns one shard's rows, and a
task that raises fails exactly that shard. Ray Data would cut the records into blocks of its own
choosing and hide which shard a failure belongs to. What Ray adds is placement across machines,
retries when a node dies (a shard is idempotent: images are content-addressed, rows are returned,
not written), and cleanup: the tasks of a driver that dies are cancelled by the cluster.

Every node must see the mirror at the same path (a shared file system) and the catalog's image
store: the same folder, or a shared catalog's object storage (the driver's AWS_* variables are
handed to the tasks).
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
from pathlib import Path
from typing import Callable, Iterator

import ocrcat
from ocrcat.catalog.objects import aws_environment
from ocrcat.ingest.base import MirrorError, Shard


def connect(address: str) -> None:
    """Join the Ray cluster at `address` ("auto": $RAY_ADDRESS or the cluster on this machine;
    "local": a single-node cluster started for this command)."""
    try:
        import ray
    except ImportError:
        raise MirrorError("--ray needs Ray: pip install 'ocrcat[ray]'") from None
    if ray.is_initialized():
        return
    if address not in ("auto", "local"):
        _check_reachable(address)  # ray.init would retry an unreachable address for minutes
    # Workers import ocrcat from the same place as this driver where that path exists on their node
    # (a checkout shared by the machines, or this one machine); elsewhere from their installed package.
    package_root = str(Path(ocrcat.__file__).resolve().parents[1])
    pythonpath = os.pathsep.join(p for p in [package_root, os.environ.get("PYTHONPATH", "")] if p)
    try:
        ray.init(
            address=None if address == "local" else address,
            # Tasks reach a shared catalog's object storage with the driver's AWS settings (their
            # workers inherit the raylet's environment, not ours).
            runtime_env={"env_vars": {"PYTHONPATH": pythonpath, **aws_environment()}},
            logging_level=logging.WARNING,
            log_to_driver=False,
            configure_logging=False,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise MirrorError(
            f"cannot reach a Ray cluster at {address!r} ({str(exc).splitlines()[0]}); start one with "
            "`ray start --head` (or scripts/services.sh start), or pass --ray HOST:PORT"
        ) from None


def _check_reachable(address: str) -> None:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise MirrorError(
            f"cannot reach a Ray cluster at {address!r} ({exc}); start one with `ray start --head` "
            "(or scripts/services.sh start), or pass --ray HOST:PORT of its head node"
        ) from None


class TaskLost(Exception):
    """A Ray task that ended without a result of its own: its worker or node died (after Ray's
    retries), it could not be scheduled, or the function failed outside `process`'s own handling."""


def run_on_ray(shards: list[Shard], process: Callable, args: tuple,
               address: str) -> Iterator[list[tuple[str, Callable[[], object]]]]:
    """Run `process(shard, *args)` for every shard as a Ray task; yields, as tasks finish, batches of
    `(shard key, get)` where `get()` returns the task's result or raises its exception.

    At most twice the cluster's CPUs are in flight, so a huge plan does not flood the object store.
    A task's own exception is raised by `get` as itself (not Ray's wrapper), so the runner reports
    the real cause and fails that shard as it does with local workers; a lost task raises TaskLost.
    Closing the generator (an early exit, a fault) cancels the tasks still running.
    """
    import ray

    connect(address)
    # Ray retries a task whose worker died (max_retries); an exception raised by `process` is final.
    remote = ray.remote(num_cpus=1, max_retries=2)(process)
    in_flight = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    queue = iter(shards)
    running: dict = {}

    def submit(n: int) -> None:
        for shard in itertools.islice(queue, n):
            running[remote.remote(shard, *args)] = shard.key

    def getter(ref):
        def get():
            try:
                return ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, Exception) and not isinstance(cause, ray.exceptions.RayError):
                    if type(cause).__module__.startswith("ocrcat."):
                        raise cause from None  # the shard's own fault (ShardFault): the runner words it
                    raise TaskLost(f"the Ray task failed: {type(cause).__name__}: {cause}") from None
                raise TaskLost(f"the Ray task failed: {str(exc).splitlines()[0]}") from None
            except ray.exceptions.RayError as exc:  # worker or node died, object lost, cancelled
                raise TaskLost(f"the Ray task was lost ({type(exc).__name__}: "
                               f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no detail'})") from None
        return get

    submit(in_flight)
    try:
        while running:
            # Everything finished by now, so shards that finish together share one commit.
            ready, _ = ray.wait(list(running), num_returns=1)
            more, _ = ray.wait([r for r in running if r not in ready], num_returns=len(running) - 1, timeout=0) \
                if len(running) > 1 else ([], None)
            finished = [(running.pop(ref), getter(ref)) for ref in [*ready, *more]]
            submit(len(finished))
            yield finished
    finally:
        for ref in running:
            ray.cancel(ref, force=True)
