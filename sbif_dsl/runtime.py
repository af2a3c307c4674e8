"""What a stage's run builds from the spec: device, the dataset and model, the loss, the thread policy.

A `Runtime` holds no cache and no results: it is a function of the spec (and the machine it runs on), so the
driver uses one to plan and every worker process builds its own (`runtime_for`, one per spec per process).
"""

from __future__ import annotations

import copy
import io
import platform
import socket
import sys
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from . import __version__, factories
from .data.hierarchy import hierarchy_dataset
from .errors import ContractError, UsageError
from .hashing import canonical_json, derive_seed, sha256_hex
from .models.deep_linear import DeepLinear
from .spec import LoadedSpec
from .task import Dataset, check_dataset, check_losses, check_module

EVAL_SAMPLES, EVAL_ELEMENTS = 1024, 1 << 14  # chunks of no-grad loss evaluation (`Runtime.losses`)
SMALL_WORKLOAD = 10_000_000  # params × chains × batch elements below which CPU runs use one thread


class Forward:
    """The model at one set of parameters, for observables that need more than its outputs (attention patterns):
    `forward(x, **kw)` runs it, `forward.params` are the parameters by name."""

    def __init__(self, module: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor]):
        self.module, self.params, self.buffers = module, params, buffers

    def __call__(self, x: Tensor, **kwargs) -> Any:
        return functional_call(self.module, (self.params, self.buffers), (x,), kwargs)


def functional_loss(module: nn.Module, loss: Callable[[Tensor, Tensor], Tensor]):
    """(params, inputs, targets[, measure]) -> loss(module with params (inputs), targets): the sampler's loss
    function; with `measure` (an observable, `observables.tracking`), measure(forward, inputs, targets) instead.

    Under autocast (sampler precision bfloat16) only the module runs in reduced precision: its output is cast
    to float32 and the loss computed outside autocast, so recorded per-sample losses are float32 arithmetic.
    """
    buffers = dict(module.named_buffers())

    def per_sample_loss(params: dict[str, Tensor], inputs: Tensor, targets: Tensor, measure=None) -> Tensor:
        if measure is not None:
            return measure(Forward(module, params, buffers), inputs, targets)
        out = functional_call(module, (params, buffers), (inputs,))
        device_type = out.device.type
        if not torch.is_autocast_enabled(device_type):
            return loss(out, targets)
        with torch.autocast(device_type, enabled=False):
            return loss(out.float(), targets)

    return per_sample_loss


@contextmanager
def cpu_threads_for(module: nn.Module, chains: int, batch: int, sample: Tensor):
    """Tiny models are overhead-bound: extra intra-op threads only add contention (4x slower on a busy 2-core CPU
    for the toy; 40x for the digits MLP), so workloads under SMALL_WORKLOAD multiply-adds per step run
    single-threaded. A sample's positions multiply the work (a sequence's tokens reuse every weight); a float
    feature vector is one position (its width is already in the first layer's parameters)."""
    n_params = sum(p.numel() for p in module.parameters())
    positions = 1 if sample.dim() <= 1 and sample.is_floating_point() else max(1, sample.numel())
    work = n_params * chains * batch * positions  # ~ multiply-adds per step
    before = torch.get_num_threads()
    if work < SMALL_WORKLOAD:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def replicate_loss(module: nn.Module, loss: Callable[[Tensor, Tensor], Tensor]):
    """() -> a `functional_loss` over a private deep copy of the module: one per sampler worker thread."""
    return lambda: functional_loss(copy.deepcopy(module), loss)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("spec says device: cuda but CUDA is not available here; hint: use device: auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def tensor_digest(*tensors: Tensor) -> str:
    """Content hash of tensors (dtype, shape and bytes)."""
    import hashlib

    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(canonical_json([str(t.dtype), list(t.shape)]).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def state_digest(state: dict[str, Tensor]) -> str:
    names = sorted(state)
    return sha256_hex(canonical_json(names) + tensor_digest(*[state[n] for n in names]))


class Runtime:
    """One spec on this process's device: builds data and models once and hands them to stage runs."""

    def __init__(self, spec: LoadedSpec):
        self.spec = spec
        self.study = spec.study
        self.dtype = getattr(torch, self.study.dtype)

    @cached_property
    def device(self) -> torch.device:
        """Resolved where the run happens (a CPU driver plans for GPU workers): never part of a key."""
        return resolve_device(self.study.device)

    # ------------------------------------------------------------------ data

    def resolve_path(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else self.spec.base_dir / p

    @cached_property
    def tokenizer(self):
        """The tokenizer of a language study (byte-level unless the data names a local HF tokenizer)."""
        from .tokens.tokenizer import ByteTokenizer, HFTokenizerFile

        spec = getattr(self.study.data, "tokenizer", None)
        if spec is not None and spec.kind == "hf":
            return HFTokenizerFile(self.resolve_path(spec.path))
        return ByteTokenizer()

    @cached_property
    def dataset(self) -> Dataset:
        return DATA_BUILDERS[self.study.data.kind](self, self.study.data)

    @cached_property
    def dataset_digest(self) -> str:
        parts = []
        for name, s in sorted(self.dataset.sets().items()):
            parts.append([name, s.names, tensor_digest(s.inputs, s.targets)])
        loss_code = factories.code_fingerprint(self.dataset.loss) if self.study.data.kind == "python" else "builtin"
        return sha256_hex(canonical_json([parts, loss_code]))

    def check_dataset(self, digest: str) -> None:
        """Refuse to run on other data than the plan keyed (a worker node whose copy of the spec folder differs)."""
        if self.dataset_digest != digest:
            raise UsageError(
                f"the data built on host {socket.gethostname()} differ from the data the plan was made with "
                f"(content {self.dataset_digest[:12]} vs {digest[:12]}); hint: every node needs the same spec folder"
            )

    def on_device(self, t: Tensor) -> Tensor:
        t = t.to(self.device)
        return t.to(self.dtype) if t.is_floating_point() else t

    # ------------------------------------------------------------------ models

    def model_fingerprint(self) -> str:
        m = self.study.model
        if m.kind == "python":
            return factories.code_fingerprint(factories.resolve(m.factory, self.spec.base_dir))
        return "builtin"

    def new_module(self, init_seed: int | None = None) -> nn.Module:
        """A fresh model on the device; with init_seed, initialised deterministically from it."""
        with torch.random.fork_rng(devices=[]):  # seeding must not leak into the process's global RNG
            if init_seed is not None:
                torch.manual_seed(init_seed)
            module = self._build_module(init_seed)
        return module.to(device=self.device, dtype=self.dtype)

    def _build_module(self, init_seed: int | None) -> nn.Module:
        return MODEL_BUILDERS[self.study.model.kind](self, self.study.model, init_seed)

    def module_at(self, state_file: Path) -> nn.Module:
        """The spec's model with the weights of a checkpoint artifact (`state.pt`)."""
        module = self.new_module()
        module.load_state_dict(load_state(state_file))
        return module

    @torch.no_grad()
    def losses(self, module: nn.Module, s, loss=None) -> Tensor:
        """The data's per-sample (or per-token) losses of every sample of a set, on the host: [n] | [n, T].
        Evaluated in chunks of at most EVAL_SAMPLES samples and EVAL_ELEMENTS inputs (activations of a language
        model grow with tokens)."""
        loss = loss or self.dataset.loss
        per_sample = max(1, s.inputs[0].numel()) if len(s) else 1
        chunk = max(1, min(EVAL_SAMPLES, EVAL_ELEMENTS // per_sample))
        parts = [
            loss(module(self.on_device(s.inputs[i : i + chunk])), self.on_device(s.targets[i : i + chunk])).cpu()
            for i in range(0, len(s), chunk)
        ]
        return torch.cat(parts)

    def loss_fn(self, module: nn.Module):
        """Functional per-sample loss (params, inputs, targets) -> [B] | [B, T], for the sampler."""
        return functional_loss(module, self.dataset.loss)

    def loss_fn_replica(self, module: nn.Module):
        """A loss_fn over a private copy of the module, for a sampler worker thread: `functional_call` swaps a
        module's parameters in place while it runs, so one module cannot serve two threads."""
        return replicate_loss(module, self.dataset.loss)

    def check_loss_contract(self, module: nn.Module) -> None:
        """Run the user's loss once on a small batch and check its shape, dtype and finiteness."""
        s = self.dataset.train
        n = min(4, len(s))
        with torch.no_grad():
            out = self.dataset.loss(module(self.on_device(s.inputs[:n])), self.on_device(s.targets[:n]))
        data = self.study.data
        origin = f"loss of data factory {data.factory!r}" if data.kind == "python" else f"{data.kind} loss"
        check_losses(out, n, origin)

    @contextmanager
    def thread_policy(self, threads: int | None = None):
        """A run's intra-op threads: the ones it was given (a Ray task's CPUs), one for tiny CPU workloads (see
        `cpu_threads_for`); the process's setting is restored afterwards."""
        before = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            if self.device.type != "cpu":
                yield
                return
            x = self.dataset.train.inputs
            batch = min(self.study.sampler.batch_size or len(x), len(x))
            with cpu_threads_for(self.small_module, self.study.sampler.chains, batch, x[0]):
                yield
        finally:
            torch.set_num_threads(before)

    @cached_property
    def small_module(self) -> nn.Module:
        """A module of the spec's shape, for sizing the workload (its weights are never used)."""
        return self.new_module()

    def provenance(self) -> dict:
        """Where a run happened: measured in the process that ran it (a Ray worker's host and device)."""
        return {
            "host": socket.gethostname(),
            "threads": torch.get_num_threads(),
            "sbif_dsl": __version__,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "device": str(self.device),
            "device_name": torch.cuda.get_device_name(self.device)
            if self.device.type == "cuda"
            else platform.processor(),
        }


# ----------------------------------------------------------------------------- data and model kinds
# One builder per kind: (runtime, spec block[, init_seed]) -> the data / the module. Adding a kind = its spec model in
# spec/models.py (the union) + a builder here.


def _hierarchy_data(rt: Runtime, data) -> Dataset:
    return hierarchy_dataset(data.branching, data.features_per_level, data.names(), data.query_sets)


def _synthetic_language(rt: Runtime, data) -> Dataset:
    from .data.language import make_language_dataset

    try:
        return make_language_dataset(
            n_train=data.n_train,
            n_query=data.n_query,
            context=data.context,
            seed=derive_seed(rt.study.seed, "language"),
            **data.options(),
        )
    except ValueError as e:
        raise UsageError(f"data (synthetic_language): {e}") from None


def _text_files(rt: Runtime, data) -> Dataset:
    from .data.language import text_files_dataset

    try:
        return text_files_dataset(
            [str(rt.resolve_path(p)) for p in data.paths],
            data.context,
            data.stride,
            rt.tokenizer,
            query_fraction=data.query_fraction,
            max_windows=data.max_windows,
        )
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"data.paths: {e}") from None


def _python_data(rt: Runtime, data) -> Dataset:
    origin = f"data factory {data.factory!r}"
    fn = factories.resolve(data.factory, rt.spec.base_dir)
    try:
        ds = fn(**data.options)
    except TypeError as e:
        raise ContractError(f"{origin} rejected options {sorted(data.options)}: {e}") from None
    return check_dataset(ds, origin)


def _digits(rt: Runtime, data) -> Dataset:
    from .data.digits import digits_dataset

    return digits_dataset(data.n_train, data.n_test, data.split_seed)


DATA_BUILDERS: dict[str, Callable[..., Dataset]] = {
    "hierarchy": _hierarchy_data,
    "digits": _digits,
    "synthetic_language": _synthetic_language,
    "text_files": _text_files,
    "python": _python_data,
}


def _deep_linear(rt: Runtime, m, init_seed: int | None) -> nn.Module:
    x, y = rt.dataset.train.inputs, rt.dataset.train.targets
    module = DeepLinear([x.shape[1], *m.hidden, y.shape[1]], bias=m.bias)
    if init_seed is not None:
        module.init_gaussian(m.init_scale, torch.Generator().manual_seed(init_seed))
    return module


def _transformer(rt: Runtime, m, init_seed: int | None) -> nn.Module:
    from .models.transformer import Transformer

    return Transformer(
        vocab_size=rt.tokenizer.vocab_size,
        n_layers=m.n_layers,
        n_heads=m.n_heads,
        d_model=m.d_model,
        d_head=m.d_head,
        context=rt.dataset.train.inputs.shape[1],
        mlp=m.mlp,
        d_mlp=m.d_mlp,
        positions=m.positions,
        layer_norm=m.layer_norm,
        init_std=m.init_std,
    )


def _hf_causal_lm(rt: Runtime, m, init_seed: int | None) -> nn.Module:
    from .models.hf import hf_module

    return hf_module(rt.resolve_path(m.path))


def _python_model(rt: Runtime, m, init_seed: int | None) -> nn.Module:
    fn = factories.resolve(m.factory, rt.spec.base_dir)
    return check_module(fn(rt.dataset, **m.options), f"model factory {m.factory!r}")


def _mlp(rt: Runtime, m, init_seed: int | None) -> nn.Module:
    from .models.mlp import MLP

    x, y = rt.dataset.train.inputs, rt.dataset.train.targets
    out = rt.dataset.meta.get("classes") or (y.shape[1] if y.dim() == 2 else 1)
    return MLP([x[0].numel(), *m.hidden, out], m.activation)  # seeded by new_module (torch's default init)


MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "deep_linear": _deep_linear,
    "mlp": _mlp,
    "transformer": _transformer,
    "hf_causal_lm": _hf_causal_lm,
    "python": _python_model,
}

_RUNTIMES: OrderedDict[str, Runtime] = OrderedDict()


def runtime_for(spec: LoadedSpec, dataset_digest: str | None = None) -> Runtime:
    """This process's Runtime of a spec (built once: datasets are deterministic functions of the spec and its
    files); the few most recent specs are kept. With dataset_digest (what the plan keyed), a cached Runtime whose
    data no longer match (a data file edited since a long-lived Ray worker built it) is built again."""
    digest = sha256_hex(canonical_json([str(spec.path), spec.study.model_dump(mode="json")]))
    cached = _RUNTIMES.get(digest)
    if cached is not None and (dataset_digest is None or cached.dataset_digest == dataset_digest):
        _RUNTIMES.move_to_end(digest)
        return cached
    _RUNTIMES[digest] = Runtime(spec)
    _RUNTIMES.move_to_end(digest)
    while len(_RUNTIMES) > 4:
        _RUNTIMES.popitem(last=False)
    return _RUNTIMES[digest]


def load_state(path: Path) -> dict[str, Tensor]:
    """Model weights of a checkpoint artifact (`state.pt`: a bare state dict or a training state with "model")."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return blob["model"] if isinstance(blob, dict) and "model" in blob else blob


def save_blob(obj: Any, path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
