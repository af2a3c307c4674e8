"""Run a study on a two-node Ray test cluster (ray.cluster_utils) through the Python API; print a JSON summary.

Started by test_ray.py inside a loopback-only network namespace. The driver alone opens the cache; the head node
offers no CPU, so every stage runs on one of the two worker nodes, each with its own Ray temp/session folder.
"""

from __future__ import annotations

import json
import sys
import tempfile

import ray
from ray.cluster_utils import Cluster

from sbif_dsl.executor import execute
from sbif_dsl.plan import build_plan
from sbif_dsl.ray_backend import RayBackend
from sbif_dsl.runtime import runtime_for
from sbif_dsl.spec import load_spec
from sbif_dsl.store import Store
from tests.netns import assert_loopback_only


def main(spec_path: str, cache_path: str) -> None:
    assert_loopback_only()
    node = {"object_store_memory": 150 * 2**20, "node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "num_cpus": 0, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1, **node, temp_dir=tempfile.mkdtemp(prefix="r", dir="/tmp"))
    cluster.wait_for_nodes()
    try:
        ray.init(address=cluster.address, _node_ip_address="127.0.0.1", log_to_driver=False)
        nodes = [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]]
        rt, store = runtime_for(load_spec(spec_path)), Store(cache_path)
        with store.writer():
            plan = build_plan(rt, store)
            summary = execute(rt, store, plan, backend=RayBackend(store, address=cluster.address))
        print(json.dumps({"nodes": nodes, "ran": len(summary.ran), "devices": sorted(summary.devices)}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
