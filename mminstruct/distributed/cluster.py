"""Connecting to Ray: ``--ray_address ADDRESS|auto|local``, one place for every entry point.

* ``local``: start a private single-machine instance (``ray.init``) bound to 127.0.0.1 only —
  no dashboard, a modest object store (a tenth of the memory, 256 MiB to 2 GiB), its session
  files under ``temp_dir`` (default ``$TMPDIR/mminstruct-ray``). Nothing else can join it; it
  ends with the process.
* ``auto``: join the cluster this machine belongs to (started with ``ray start``; ``RAY_ADDRESS``
  is honoured the same way Ray honours it).
* ``HOST:PORT`` or ``ray://HOST:PORT``: join that cluster's head node (GCS port, usually 6379) or
  its Ray Client server (10001).

If Ray is already initialised in this process (a test, a notebook, the app) that connection is
used as it is. Ray is imported here, lazily: it is an optional dependency
(``pip install -r requirements-ray.txt``), and a missing install is one clear error.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mminstruct.errors import ClusterError, ConfigError, MMInstructError, RayUnavailableError

log = logging.getLogger(__name__)

LOCAL = "local"
AUTO = "auto"
#: What ``local`` gives Ray's shared-memory object store unless told otherwise: a tenth of the
#: memory, between these bounds. Embedding batches stream through it (backpressure keeps it
#: small); Ray's own default (30 % of RAM) is more than a laptop or shared machine should give.
OBJECT_STORE_BOUNDS = (256 << 20, 2 << 30)
_ADDRESS_RE = re.compile(r"^(ray://)?(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.\-]+):(\d{1,5})$")
_LOCK = threading.Lock()
_STARTED_HERE = False


def require_ray() -> Any:
    """``import ray``, or a RayUnavailableError saying how to install it."""
    try:
        import ray  # noqa: PLC0415  (lazy: optional and heavy)
        import ray.data  # noqa: F401,PLC0415
    except ImportError as e:
        raise RayUnavailableError(
            f"--ray_address needs Ray, which is not installed ({e}); install the optional "
            "dependencies with `pip install -r requirements-ray.txt` (ray[data]), or run "
            "without --ray_address") from e
    return ray


def check_address(address: str | None) -> str | None:
    """Normalise ``--ray_address``: None/empty → None (no Ray), else ``local``, ``auto``,
    ``HOST:PORT`` or ``ray://HOST:PORT``; anything else is a ConfigError naming the choices."""
    if address is None:
        return None
    a = address.strip() if isinstance(address, str) else None
    if a == "":
        return None
    if a is not None and a.lower() in (LOCAL, AUTO):
        return a.lower()
    m = _ADDRESS_RE.match(a) if a is not None else None
    if not m or not 0 < int(m.group(3)) < 65536:
        raise ConfigError(f"bad ray_address {address!r}; give one of: local (a private instance "
                          "on this machine), auto (the cluster this machine joined with `ray "
                          "start`), HOST:PORT (a head node, e.g. 10.0.0.5:6379) or "
                          "ray://HOST:PORT (a Ray Client server)")
    return a


@dataclass
class ClusterInfo:
    """What the connection found: ``cpus``/``gpus`` are the cluster's totals."""

    address: str
    cpus: float
    gpus: float
    nodes: int
    started_here: bool
    resources: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        where = "a local instance started here" if self.started_here else self.address
        return (f"Ray: {where} — {self.nodes} node(s), {self.cpus:g} CPU(s), "
                f"{self.gpus:g} GPU(s)")


def default_object_store_bytes() -> int:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 0
    low, high = OBJECT_STORE_BOUNDS
    return int(min(high, max(low, total // 10)))


def default_temp_dir() -> Path:
    """Where ``local`` puts Ray's session files (logs, sockets, spilled objects). Kept short:
    Ray's Unix socket paths must stay under 108 characters."""
    return Path(tempfile.gettempdir()) / "mminstruct-ray"


def connect(address: str | None = LOCAL, *, num_cpus: int | None = None,
            num_gpus: int | None = None, object_store_memory: int | None = None,
            temp_dir: str | os.PathLike | None = None) -> ClusterInfo:
    """Connect this process to Ray (see the module docstring); returns what the cluster has.
    ``num_cpus``/``num_gpus``/``object_store_memory``/``temp_dir`` apply to ``local`` only."""
    global _STARTED_HERE
    addr = check_address(address) or LOCAL
    ray = require_ray()
    with _LOCK:
        if not ray.is_initialized():
            if addr == LOCAL:
                _start_local(ray, num_cpus, num_gpus, object_store_memory, temp_dir)
                _STARTED_HERE = True
            else:
                _join(ray, addr)
                _STARTED_HERE = False
        return _info(ray, addr)


def _start_local(ray: Any, num_cpus: int | None, num_gpus: int | None,
                 object_store_memory: int | None, temp_dir: str | os.PathLike | None) -> None:
    folder = Path(temp_dir) if temp_dir is not None else default_temp_dir()
    folder = folder.expanduser().resolve()
    if len(str(folder)) > 60:
        raise ConfigError(f"Ray's temporary folder {folder} is too long ({len(str(folder))} "
                          "characters; Ray's socket paths must fit in 107): choose a shorter one")
    folder.mkdir(parents=True, exist_ok=True)
    # Loopback only: with this switch Ray takes 127.0.0.1 as the node's address and binds its
    # servers (GCS, raylet, workers, object manager) there instead of on every interface. It is
    # read when Ray's constants are imported and by the processes Ray starts, so it is set in the
    # environment (which they inherit) and, if Ray was imported already, on the constant itself.
    switch = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    old = os.environ.get(switch)
    os.environ[switch] = "0"
    try:
        from ray._private import ray_constants  # noqa: PLC0415
    except ImportError:  # a Ray without the switch: the address alone still pins it
        ray_constants = None
    old_const = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    if ray_constants is not None and old_const is not None:
        ray_constants.ENABLE_RAY_CLUSTER = False
    kwargs: dict[str, Any] = dict(
        address=LOCAL, include_dashboard=False, _node_ip_address="127.0.0.1",
        object_store_memory=int(object_store_memory or default_object_store_bytes()),
        _temp_dir=str(folder), log_to_driver=False, configure_logging=False)
    if num_cpus is not None:
        kwargs["num_cpus"] = int(num_cpus)
    if num_gpus is not None:
        kwargs["num_gpus"] = int(num_gpus)
    try:
        ray.init(**kwargs)
    except (RuntimeError, ValueError, OSError, ConnectionError) as e:
        raise ClusterError(f"cannot start a local Ray instance (session files in {folder}): "
                           f"{e}") from e
    finally:  # the processes Ray started keep the switch; this process gets its own back
        if old is None:
            os.environ.pop(switch, None)
        else:
            os.environ[switch] = old
        if ray_constants is not None and old_const is not None:
            ray_constants.ENABLE_RAY_CLUSTER = old_const
    log.info("started a local Ray instance (127.0.0.1; session files under %s)", folder)


def _join(ray: Any, addr: str) -> None:
    try:
        ray.init(address=addr, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError, OSError, TimeoutError) as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        hint = ("no cluster found on this machine: start one with `ray start --head`, or use "
                "--ray_address local" if addr == AUTO else
                "is the head node up (`ray start --head --port=6379`) and the address right?")
        raise ClusterError(f"cannot connect to the Ray cluster at {addr!r}: {why} ({hint}; a "
                           "cluster started with token authentication needs the same "
                           "RAY_AUTH_MODE / token on this machine)") from e
    log.info("connected to the Ray cluster at %s", addr)


def _info(ray: Any, addr: str) -> ClusterInfo:
    res = {k: float(v) for k, v in ray.cluster_resources().items()}
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return ClusterInfo(addr, res.get("CPU", 0.0), res.get("GPU", 0.0), nodes, _STARTED_HERE, res)


def shutdown() -> None:
    """Disconnect (and stop the instance if ``local`` started it here)."""
    global _STARTED_HERE
    ray = require_ray()
    with _LOCK:
        if ray.is_initialized():
            ray.shutdown()
        _STARTED_HERE = False


def remote_error(e: BaseException) -> BaseException:
    """The exception a Ray task raised, unwrapped from RayTaskError when it is one of ours (so a
    worker's ConfigError reaches the command line as one clear line); else a ClusterError."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, MMInstructError):
        return cause
    why = (str(cause or e).strip().splitlines() or [type(e).__name__])
    return ClusterError(f"a Ray task failed: {type(cause or e).__name__}: {why[-1][:500]}")


__all__ = ["connect", "shutdown", "check_address", "require_ray", "ClusterInfo",
           "RayUnavailableError", "ClusterError", "remote_error", "default_temp_dir",
           "LOCAL", "AUTO", "default_object_store_bytes"]
