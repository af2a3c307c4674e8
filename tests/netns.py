"""Run commands inside a fresh network namespace that has only loopback.

Why: tests that start servers (e.g. a real Ray cluster) must never send traffic anywhere
but 127.0.0.1; a new netns with just ``lo`` up makes that true by construction.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

_SH = 'ip link set lo up && exec "$@"'
_BASE_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}


def _probe() -> str | None:
    """Why the namespace can't be made here (a pytest.skip reason), or None when it can."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    if shutil.which("ip") is None:
        return "ip (iproute2) is not installed"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return "not root: unshare -n needs CAP_SYS_ADMIN"
    try:
        r = subprocess.run(_argv(["true"]), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare -n failed: {e}"
    return None if r.returncode == 0 else f"unshare -n failed (rc={r.returncode}): {r.stderr.strip()}"


def _argv(args: list[str]) -> list[str]:
    return ["unshare", "-n", "sh", "-c", _SH, "sh", *[str(a) for a in args]]


ISOLATION_PROBLEM: str | None = _probe()


def _env(env: dict | None) -> dict:  # RAY_USAGE_STATS_ENABLED=0 always, so Ray never tries to phone home
    return {**(os.environ if env is None else env), **_BASE_ENV}


def run_isolated(args: list[str], *, env: dict | None = None, timeout: float, cwd=None) -> subprocess.CompletedProcess:
    """Run argv in a new loopback-only netns; stdout/stderr captured as text; raises on timeout."""
    return subprocess.run(_argv(args), env=_env(env), cwd=cwd, timeout=timeout, capture_output=True, text=True)


def popen_isolated(args: list[str], *, env: dict | None = None, cwd=None, **kw) -> subprocess.Popen:
    """Popen variant (for tests that kill a driver mid-run); its pid is the target process's (exec)."""
    kw = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **kw}
    return subprocess.Popen(_argv(args), env=_env(env), cwd=cwd, **kw)


def assert_loopback_only() -> None:
    """Call from inside the namespace: raise unless lo is the only network interface (per /proc/net/dev)."""
    with open("/proc/net/dev") as f:
        names = [line.split(":", 1)[0].strip() for line in f.readlines()[2:]]
    if others := [n for n in names if n != "lo"]:
        raise RuntimeError(f"not a loopback-only network namespace: interfaces {others}")


def namespace_of(pid: int, timeout: float = 10.0) -> str:
    """The netns id of a process started by popen_isolated (e.g. 'net:[4026532178]'), once it has left ours:
    right after Popen, unshare may not have run yet. Read it before killing a driver."""
    own, deadline = os.readlink("/proc/self/ns/net"), time.monotonic() + timeout
    while (ns := os.readlink(f"/proc/{pid}/ns/net")) == own and time.monotonic() < deadline:
        time.sleep(0.01)
    return ns


def kill_namespace(ns: str, sig: int = 9) -> list[int]:
    """Signal every process in netns ``ns``: Ray agents outlive a SIGKILLed driver, and `ray stop` is machine-wide."""
    if ns == os.readlink("/proc/self/ns/net"):
        raise ValueError("refusing to signal processes of this process's own namespace")
    hit = []  # /proc/PID/ns/net names the namespace; the pid namespace is shared, so this finds them all
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{p}/ns/net") == ns:
                os.kill(int(p), sig)
                hit.append(int(p))
        except OSError:
            pass
    return hit
