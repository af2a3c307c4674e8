"""Inside a loopback-only namespace: `ray start` a head node of N CPUs on 127.0.0.1, run a command against it
(`--ray-address 127.0.0.1:PORT` appended), print the command's wall seconds as the last stdout line, then kill
every process of this namespace but this one (`ray stop` would act on the whole machine).

    python -m tests.ray_head N CMD...      (started by run_isolated, as in test_ray.py and bench_executor.py)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.netns import assert_loopback_only

PORT = "6399"


def main(cpus: int, args: list[str]) -> int:
    assert_loopback_only()
    ray_bin = str(Path(sys.executable).parent / "ray")
    head = [ray_bin, "start", "--head", f"--port={PORT}", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}",
            "--include-dashboard=false", "--disable-usage-stats"]  # fmt: skip
    try:
        subprocess.run(head, check=True, capture_output=True)
        t0 = time.perf_counter()
        proc = subprocess.run([*args, "--ray-address", f"127.0.0.1:{PORT}"], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        print(f"{wall:.3f}")
        return proc.returncode
    finally:
        own = os.readlink("/proc/self/ns/net")
        for p in filter(str.isdigit, os.listdir("/proc")):
            try:
                if int(p) != os.getpid() and os.readlink(f"/proc/{p}/ns/net") == own:
                    os.kill(int(p), 9)
            except OSError:
                pass


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), sys.argv[2:]))
