"""Run a plan's units as Ray tasks: `sbif run SPEC --executor ray`.

The driver (this process) alone opens the cache. A unit travels as (its frozen stages, the WorkerContext, the
bytes of its inputs' artifacts in Ray's object store); its task writes them to a private temp folder, runs
`executor.run_unit` there and sends back rows + artifact bytes + provenance measured on the worker. Nothing
assumes a filesystem shared with the driver except the spec folder (user code and data files), whose data the
worker checks against the plan's content digest before running.

Faults: a task whose worker process dies is retried by Ray (`MAX_RETRIES`); an error raised by a stage
(a NaN, a bad user factory) comes back as a value and is reported once, never retried.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from .errors import SbifError, UsageError
from .executor import StageResult, Unit, run_unit
from .stages import StageOutput, WorkerContext, builds_model

MAX_RETRIES = 3  # of a task whose worker died (killed, out of memory); stage errors are never retried


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray; hint: pip install 'sbif_dsl[ray]'") from None
    return ray


def _warm_up() -> None:
    """Import what every unit needs (torch: ~1.7 s) on every worker at once, not when each gets its first unit."""
    import sbif_dsl.executor  # noqa: F401
    import sbif_dsl.stages.sample  # noqa: F401


def _run_unit_task(stages, ctx: WorkerContext, keys: list[str], *blobs: dict[str, bytes]):
    """The Ray task: inputs arrive as {artifact: bytes} per key; returns ([(result, {artifact: bytes})], error)."""
    import ray

    workdir = Path(tempfile.mkdtemp(prefix="sbif-task-"))
    try:
        files: dict[str, dict[str, Path]] = {}
        for key, blob in zip(keys, blobs, strict=True):
            folder = workdir / "in" / key
            folder.mkdir(parents=True)
            files[key] = {}
            for name, data in blob.items():
                (folder / name).write_bytes(data)
                files[key][name] = folder / name
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        results, error = run_unit(stages, replace(ctx, threads=max(1, int(cpus))), files, workdir / "out")
        node = {"node_ip": ray.util.get_node_ip_address(), "node_id": ray.get_runtime_context().get_node_id()}
        packed = []
        for r in results:
            blobs_out = {name: path.read_bytes() for name, path in r.output.artifacts.items()}
            output = StageOutput(tables=r.output.tables, measured=r.output.measured)
            packed.append((replace(r, output=output, provenance={**r.provenance, **node}), blobs_out))
        return packed, error
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class RayBackend:
    """Units as Ray tasks, as many in flight as `workers` (default: the cluster's CPUs)."""

    def __init__(self, store, address: str | None = None, workers: int | None = None, cpus_per_task: int = 1):
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # Ray reads these when imported
        if address is not None and (Path.home() / ".ray" / "auth_token").exists():
            os.environ.setdefault("RAY_AUTH_MODE", "token")  # a `ray start` cluster of this user: use its token
        ray = self.ray = _import_ray()
        self.store = store
        self.started = not ray.is_initialized()
        if self.started:
            try:
                if address is None:  # a new private instance ("local": never a cluster Ray finds on its own)
                    ray.init(
                        address="local",
                        num_cpus=workers or os.cpu_count(),
                        include_dashboard=False,
                        log_to_driver=False,
                        _node_ip_address="127.0.0.1",  # it needs no other interface than loopback
                    )
                else:
                    ray.init(address=address, log_to_driver=False)
            except (ConnectionError, ValueError, RuntimeError) as e:
                where = f"--ray-address {address}" if address else "starting a local Ray instance"
                hint = "is the cluster up (`ray status`)?"
                raise UsageError(f"{where}: {str(e).splitlines()[0]}; hint: {hint}") from None
        cluster = ray.cluster_resources()
        self.cpus_per_task = self.threads = cpus_per_task
        self.gpus = int(cluster.get("GPU", 0))
        self.concurrency = workers or max(1, int(cluster.get("CPU", 1)) // cpus_per_task)
        self.task = ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False)(_run_unit_task)
        warm = ray.remote(num_cpus=1)(_warm_up)
        self.warming = [warm.remote() for _ in range(min(self.concurrency, int(cluster.get("CPU", 1))))]
        self.inflight: dict = {}  # ObjectRef -> Unit
        self.refs: dict[str, object] = {}  # input key -> ObjectRef of its artifact bytes, while units still need it
        self.consumers: dict[str, int] = {}

    def plan_units(self, units: list[Unit]) -> None:
        """Count which units read each input, so its bytes leave the object store after the last one is sent."""
        for unit in units:
            for key in unit.needs:
                self.consumers[key] = self.consumers.get(key, 0) + 1

    def _refs(self, keys: list[str]) -> list:
        """Object refs of the inputs' artifact bytes: read (checksums checked) and put once per key."""
        new = [k for k in keys if k not in self.refs]
        for key, files in self.store.artifact_files(new).items():
            self.refs[key] = self.ray.put({name: path.read_bytes() for name, path in files.items()})
        return [self.refs[k] for k in keys]

    def _options(self, unit: Unit, ctx: WorkerContext) -> dict:
        if not builds_model(unit.stages[0]):
            return {"num_cpus": 1}
        wants_gpu = ctx.spec.study.device == "cuda" or (ctx.spec.study.device == "auto" and self.gpus > 0)
        if ctx.spec.study.device == "cuda" and self.gpus == 0:
            raise UsageError("spec says device: cuda but the Ray cluster has no GPU; hint: use device: auto")
        return {"num_cpus": self.cpus_per_task, "num_gpus": 1 if wants_gpu else 0}

    def submit(self, unit: Unit, ctx: WorkerContext, needs) -> Unit:
        keys = sorted(needs)
        refs = self._refs(keys)
        for k in keys:
            self.consumers[k] = self.consumers.get(k, 1) - 1
            if self.consumers[k] <= 0:
                self.refs.pop(k, None)  # the submitted task holds its own reference
        ref = self.task.options(**self._options(unit, ctx)).remote(unit.stages, ctx, keys, *refs)
        self.inflight[ref] = unit
        return unit

    def wait(self) -> tuple[Unit, list[StageResult], Exception | None, Path]:
        ray = self.ray
        [ref], _ = ray.wait(list(self.inflight), num_returns=1)
        unit = self.inflight.pop(ref)
        try:
            packed, error = ray.get(ref)
        except ray.exceptions.RayTaskError as e:  # the task itself failed outside run_unit (e.g. unpickling)
            packed, error = [], e.cause if isinstance(e.cause, Exception) else e
        except ray.exceptions.RayError as e:  # the worker died more often than MAX_RETRIES, or the node is gone
            first = unit.stages[0]
            raise SbifError(
                f"Ray could not run {first.label!r} (tried {MAX_RETRIES + 1} times): {str(e).splitlines()[0]}"
            ) from None
        workdir = self.store.staging_dir(unit.stages[0].key)
        results = []
        for result, blobs in packed:
            folder = workdir / result.key
            folder.mkdir(parents=True, exist_ok=True)
            artifacts = {}
            for name, data in blobs.items():
                (folder / name).write_bytes(data)
                artifacts[name] = folder / name
            results.append(replace(result, output=replace(result.output, artifacts=artifacts)))
        return unit, results, error, workdir

    def cancel(self) -> None:
        for ref in list(self.inflight):
            self.ray.cancel(ref, force=True)
        self.inflight.clear()

    def close(self) -> None:
        self.refs.clear()
        if self.started:
            self.ray.shutdown()
