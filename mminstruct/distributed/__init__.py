"""Ray as the distributed engine (optional: ``pip install -r requirements-ray.txt``).

* ``cluster.connect(address)``: ``--ray_address ADDRESS|auto|local`` → a connected process;
* ``embed.embed_pool(files=, tars=, model=)``: a candidate pool (files or webdataset tars)
  embedded with Ray Data into Parquet shards that the local cache (``import_to_cache``) and the
  faiss index (``retrieval.parquet_vectors``) read; ``embed.generate_task_file(config)``: step 1
  with the pool embedded on the cluster;
* ``generate.run_on_ray(cfg, num_parallel)``: generation shards as Ray tasks under one
  cluster-wide RPM/TPM limiter (``limiter``), each a resumable run of the local engine, merged.

Nothing here imports Ray at import time; the names below load their module on first use.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "connect": "cluster", "shutdown": "cluster", "check_address": "cluster",
    "ClusterInfo": "cluster", "RayUnavailableError": "cluster", "ClusterError": "cluster",
    "embed_pool": "embed", "read_pool": "embed", "import_to_cache": "embed",
    "PoolEmbedding": "embed", "pool_dir": "embed", "generate_task_file": "embed",
    "run_on_ray": "generate", "ClusterLimiter": "limiter", "LimiterState": "limiter",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mminstruct.distributed' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = sorted(_EXPORTS)
