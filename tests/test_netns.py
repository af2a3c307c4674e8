"""The loopback-only namespace helper really isolates, and a real Ray node inside it binds to 127.0.0.1 only."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from .netns import ISOLATION_PROBLEM, run_isolated

pytestmark = pytest.mark.skipif(ISOLATION_PROBLEM is not None, reason=str(ISOLATION_PROBLEM))

TESTS = Path(__file__).resolve().parent


def test_namespace_has_only_loopback():
    r = run_isolated(["ip", "-o", "addr"], timeout=30)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert lines, "ip -o addr printed nothing"
    for ln in lines:
        ifname, family, addr = ln.split()[1], ln.split()[2], ln.split()[3]
        assert ifname == "lo", ln
        assert (family, addr) in {("inet", "127.0.0.1/8"), ("inet6", "::1/128")}, ln


RAY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import netns
    netns.assert_loopback_only()
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False)  # new, never a cluster left in /tmp/ray

    @ray.remote
    def where():
        return ray.util.get_node_ip_address()

    task_ip = ray.get(where.remote(), timeout=120)
    print(json.dumps({"task": task_ip, "nodes": [n["NodeManagerAddress"] for n in ray.nodes()]}))
    ray.shutdown()
    """
)


@pytest.mark.ray
def test_ray_local_cluster_binds_loopback():
    pytest.importorskip("ray")
    r = run_isolated([sys.executable, "-c", RAY_SCRIPT, str(TESTS)], timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["task"] == "127.0.0.1", out
    assert out["nodes"] and all(a == "127.0.0.1" for a in out["nodes"]), out
