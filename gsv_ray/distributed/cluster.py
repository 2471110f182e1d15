"""Joining a Ray cluster or starting our own: one place for ``train --workers``, ``tune`` and
``semantic --workers``.

``ray.init()`` without an address attaches to whatever ``ray start`` cluster runs on the machine
(Ray reads ``/tmp/ray/ray_current_cluster``): a user's other Ray then received our job, and
``num_cpus`` made ``ray.init`` fail. We start a private instance with ``address="local"`` (Ray's
documented way to start a new one even when another exists) unless the user names a cluster
(``--address``, or ``RAY_ADDRESS``, which Ray's job tooling sets).
"""

from __future__ import annotations

import logging
import math
import os
import socket

from gsv_ray.errors import GsvError, first_line


def check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Fail fast on a ``host:port`` nobody answers (Ray itself would retry for many minutes)."""
    if not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise GsvError("not a Ray address", path=address, fix="use host:port, ray://host:port or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise GsvError(
            f"no Ray cluster answers there ({e.strerror or type(e).__name__})",
            path=address,
            fix="start the cluster (ray start --head) or fix --address; drop it for a local Ray",
        ) from e


def joined_address(address: str | None) -> str | None:
    """The cluster the user asked to join (``--address``, else ``RAY_ADDRESS``), or None: our own."""
    return address or os.environ.get("RAY_ADDRESS") or None


def connect(
    address: str | None,
    *,
    num_cpus: float,
    dashboard: bool = False,
    logging_level: int = logging.WARNING,
    log_to_driver: bool = True,
    object_store_memory: int | None = None,
) -> bool:
    """Join the cluster the user named or start a private local Ray with at least ``num_cpus``
    logical CPUs (one clear line on failure). True when this call started a local Ray (the caller
    then owns it and ends it with :func:`end_local_ray`). ``dashboard``: Tune needs it (with it, a
    trial stopped early frees its workers' placement group; docs/design/stack-notes.md)."""
    import ray

    # Ray Train's controller polls workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (default 2 s) and
    # report() waits for that poll. We report only at checkpoints, so we keep the default: a 0.1 s poll
    # made every training step 15-20 % slower on a 2-core machine (bench_ray_overhead.py).
    if ray.is_initialized():
        return False
    join = joined_address(address)
    check_reachable(join)
    if join:
        try:
            ray.init(address=join, log_to_driver=log_to_driver, logging_level=logging_level)
        except Exception as e:  # ConnectionError, TimeoutError, RuntimeError, ...
            first = first_line(e)
            flag = "--address" if address else "RAY_ADDRESS"
            raise GsvError(
                f"no Ray cluster at {flag} {join} ({first})",
                fix=f"start one ('ray start --head' or 'ray up cluster.yaml') or unset {flag} for a local Ray",
            ) from None
        return False
    _pin_own_address()
    try:
        ray.init(
            address="local",
            num_cpus=local_cpus(num_cpus),
            object_store_memory=object_store_memory,
            include_dashboard=dashboard,
            dashboard_port=own_dashboard_port(),
            log_to_driver=log_to_driver,
            logging_level=logging_level,
        )
    except Exception as e:  # noqa: BLE001 -- e.g. no room in /dev/shm or /tmp for a new instance
        first = first_line(e)
        fix = "free space in /tmp and /dev/shm, or join a running cluster with --address"
        if "AF_UNIX path length" in str(e):  # Ray's sockets live in its session dir under the temp dir
            fix = "point TMPDIR (or RAY_TMPDIR) at a short path such as /tmp: Ray's socket paths must fit 107 bytes"
        raise GsvError(f"cannot start a local Ray ({first})", fix=fix) from None
    return True


def local_cpus(num_cpus: float) -> int:
    """The logical CPUs :func:`connect` gives our own local Ray when asked for at least ``num_cpus``: known
    before it starts, so what cannot fit is refused at once."""
    return max(math.ceil(num_cpus), os.cpu_count() or 1)


def _pin_own_address() -> None:
    """Make every process of our local Ray find *our* cluster when it looks one up.

    ``address="local"`` starts a new instance, but Ray's own helper actors (Ray Train's
    PlacementGroupCleaner, the state API) locate "their" cluster through ``RAY_ADDRESS`` or else the
    newest ``ray start`` cluster on the machine: with another Ray running they queried that one
    ("Found multiple active Ray instances") and, had it a dashboard, would have judged our Train
    controller dead and removed our workers' placement group. There is no ``ray.init`` option for
    the GCS port, so we choose a free port, give it to Ray through ``RAY_GCS_SERVER_PORT`` (the
    variable Ray's head start reads) and put the address in ``RAY_ADDRESS`` before the raylet and its
    workers are spawned (they inherit it). Undone by :func:`end_local_ray`."""
    import ray

    port = os.environ.get("RAY_GCS_SERVER_PORT")  # the user's choice stays theirs
    if not port:
        port = str(free_port())
        os.environ["RAY_GCS_SERVER_PORT"] = os.environ[_CHOSEN_PORT] = port
    os.environ["RAY_ADDRESS"] = f"{ray.util.get_node_ip_address()}:{port}"


def free_port() -> int:
    """A TCP port nobody listens on now (the kernel's choice)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def own_dashboard_port() -> int:
    """The dashboard port our local Ray records, with its dashboard or without: a free one, never Ray's default.

    A Ray records its dashboard's address (default ``127.0.0.1:8265``) even with ``include_dashboard=False``,
    and the State API of its processes asks there. Ray Train's ``PlacementGroupCleaner`` asks it whether our
    controller lives: with another Ray's dashboard on 8265 (a user's ``ray start --head``, a Tune run) the
    answer was "no such actor", so it judged our live controller dead and exited, or removed our workers'
    placement group mid-run ("Destroying worker since its placement group was removed"). On a port of our
    own, a dashboard-less Ray's State API finds nobody, which the cleaner takes as "unavailable" (it keeps
    watching), and a dashboard answers for its own cluster."""
    return free_port()


#: set beside RAY_GCS_SERVER_PORT when we chose that port, so _unpin takes back only what we set
_CHOSEN_PORT = "GSV_RAY_CHOSEN_GCS_PORT"


def _unpin() -> None:
    """Undo :func:`_pin_own_address` (called only when we started a local Ray: ``RAY_ADDRESS`` was
    unset then, or we would have joined that cluster)."""
    os.environ.pop("RAY_ADDRESS", None)
    if os.environ.pop(_CHOSEN_PORT, None) is not None:
        os.environ.pop("RAY_GCS_SERVER_PORT", None)


def alive_hosts() -> set[str]:
    """The machines the cluster's live nodes run on: node-local storage is shared by nodes on one
    machine (several raylets, as in ``ray.cluster_utils.Cluster``), not across machines."""
    import ray

    return {n.get("NodeManagerAddress") for n in ray.nodes() if n.get("Alive")}


def shutdown_local_ray() -> None:
    """Shut down the local Ray :func:`connect` started and take back the ``RAY_ADDRESS`` it pinned (left
    set, the next ``connect`` in this process would try to join the dead instance)."""
    import ray

    ray.shutdown()
    _unpin()


def end_local_ray(*runs: str) -> None:
    """After success, failure or Ctrl-C: shut our local Ray down (its workers exit and drop their
    hold on the runs' node scratch), then remove the scratch of the runs matching ``runs`` (run
    names, or globs such as ``<tune name>-*``). Runs on a cluster are cleaned by their last worker,
    or as orphans by the next run on the node."""
    from gsv_ray.cache import scratch_root
    from gsv_ray.owned import remove_when_orphaned

    shutdown_local_ray()
    root = scratch_root()
    for d in {d for pattern in runs for d in root.glob(pattern)}:
        remove_when_orphaned(d, wait_s=10.0)
    try:
        root.rmdir()  # nothing of ours left behind when no other run uses it
    except OSError:
        pass


class RaySession:
    """One Ray for the runs of one command (a search, then its refit: one local Ray start, not two).

    :meth:`connect` joins the user's cluster or starts our own local Ray, once; a later call reuses
    it. :meth:`add_runs` names runs whose node scratch is removed when our own Ray ends. :meth:`close`
    (also on leaving a ``with`` block, Ctrl-C included) shuts our own Ray down and removes that scratch,
    or disconnects from a joined cluster. A Ray this process had already initialised is left as it
    is. Not thread-safe; one per command."""

    def __init__(self) -> None:
        self.started = False  # our own local Ray: ours to end
        self.joined = False  # the user's cluster: ours to disconnect from
        self._runs: list[str] = []

    def connect(self, address: str | None, *, num_cpus: float, dashboard: bool = False) -> None:
        """:func:`connect` unless Ray is initialised already (by this session or by the caller)."""
        import ray

        if ray.is_initialized():
            return
        joined = bool(joined_address(address))
        self.started = connect(address, num_cpus=num_cpus, dashboard=dashboard)
        self.joined = joined and not self.started

    def add_runs(self, *runs: str) -> None:
        """Run names (or globs) whose node scratch :meth:`close` removes after our own Ray stops."""
        self._runs += runs

    def close(self) -> None:
        import ray

        if self.started:
            end_local_ray(*self._runs)
        elif self.joined:  # disconnect now (its late log lines then stay out of the console)
            ray.shutdown()
        self.started = self.joined = False
        self._runs.clear()

    def __enter__(self) -> RaySession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
