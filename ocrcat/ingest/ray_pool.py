"""Shards as Ray tasks: the same `process_shard` the local process pool runs, on a Ray cluster.

Ray core tasks, not Ray Data: a shard is already the unit of work and of commit (its rows, errors
and done-mark land in one transaction on the driver), each task returns one shard's rows, and a
task that raises fails exactly that shard. Ray Data would cut the records into blocks of its own
choosing and hide which shard a failure belongs to. What Ray adds is placement across machines,
retries when a node dies (a shard is idempotent: images are content-addressed, rows are returned,
not written), and cleanup: the tasks of a driver that dies are cancelled by the cluster.

Every node must see the mirror and the catalog's image store at the same location (a shared
path, or object storage once the catalog lives there).
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Callable, Iterator

import ocrcat
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
            runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
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


def run_on_ray(shards: list[Shard], process: Callable, args: tuple, address: str) -> Iterator:
    """`process(shard, *args)` for every shard as a Ray task; results in completion order.

    At most twice the cluster's CPUs are in flight, so a huge plan does not flood the object store.
    A task's exception is raised here as itself (not Ray's wrapper), so the runner reports the
    real cause and fails that shard as it does with local workers.
    """
    import ray

    connect(address)
    remote = ray.remote(num_cpus=1)(process)
    in_flight = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    queue = iter(shards)
    running: dict = {}

    def submit() -> None:
        shard = next(queue, None)
        if shard is not None:
            running[remote.remote(shard, *args)] = shard

    for _ in range(in_flight):
        submit()
    try:
        while running:
            (done,), _ = ray.wait(list(running), num_returns=1)
            running.pop(done)
            try:
                result = ray.get(done)
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if isinstance(exc.cause, BaseException) else exc
                raise cause from None
            submit()
            yield result
    finally:
        for ref in running:
            ray.cancel(ref, force=True)
