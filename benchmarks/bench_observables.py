"""Observables recorded in the same forward pass as the tracked losses cost no second pass (issue 17).

One small transformer checkpoint, one set of tracked sequences, three ways to record them at every SGLD draw:

  loss         the set's per-token losses only (the baseline);
  fused        losses + logit_diff + target_prob + accuracy of the same set: one forward pass per chunk;
  second pass  losses twice, as two loss observables of the same set: two forward passes (what a separate
               evaluation of another observable would cost).

Prints, per variant, the model forward calls per draw (counted by a forward pre-hook: exact) and the median
sampling wall time over --repeat alternating runs, with its ratio to the baseline measured in the same run.
Run by hand: `python benchmarks/bench_observables.py` (about a minute on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import textwrap
import time
from pathlib import Path

import torch

from sbif_dsl.observables import tracking
from sbif_dsl.runtime import Runtime
from sbif_dsl.sampling import SGLDConfig, run_chains
from sbif_dsl.spec import load_spec

SPEC = """\
    name: bench_obs
    seed: 0
    device: cpu
    data: {kind: synthetic_language, n_train: 512, n_query: 32, context: 64}
    model: {kind: transformer, n_layers: 2, n_heads: 4, d_model: 64}
    training: {steps: 1, checkpoints: {steps: [1]}}
    observables:
      - {name: query, data: query}
      - {name: margin, kind: logit_diff, data: query}
      - {name: prob, kind: target_prob, data: query}
      - {name: acc, kind: accuracy, data: query}
      - {name: query_again, data: query}
    analyses: [{kind: bif, source: query}]
    """
VARIANTS = {
    "loss": ["query"],
    "fused": ["query", "margin", "prob", "acc"],
    "second pass": ["query", "query_again"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--draws", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(textwrap.dedent(SPEC))
        rt = Runtime(load_spec(path))
        module = rt.new_module(init_seed=0)
        specs = {s.name: s for s in rt.study.observables}
        sets = rt.dataset.sets()
        train = (sets["train"].inputs, sets["train"].targets)
        cfg = SGLDConfig(eps=1e-4, gamma=1000.0, nbeta=10.0, chains=args.chains, draws=args.draws, burn_in=0,
                         batch_size=32)  # fmt: skip
        calls = [0]
        module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        params0 = {k: v.detach() for k, v in module.named_parameters()}

        def sample(names: list[str]) -> tuple[float, float]:
            batches = tracking.plan(rt, module, [specs[n] for n in names], sets)
            calls[0] = 0
            t0 = time.perf_counter()
            run_chains(rt.loss_fn(module), params0, train, [(b.x, b.y) for b in batches], cfg, seed=0,
                       measures=[b.measure for b in batches], vectorize=True)  # fmt: skip
            return time.perf_counter() - t0, calls[0]

        sample(VARIANTS["loss"])  # warm-up: first calls (vmap, allocator) are not the baseline's
        walls: dict[str, list[float]] = {v: [] for v in VARIANTS}
        forwards: dict[str, int] = {}
        for _ in range(args.repeat):
            for v, names in VARIANTS.items():
                wall, n = sample(names)
                walls[v].append(wall)
                forwards[v] = n
        base_calls = forwards["loss"]
        base = statistics.median(walls["loss"])
        print(f"{args.chains} chains x {args.draws} draws, 32 tracked sequences x 63 tokens, vmapped, 1 thread")
        print(f"{'variant':<12} {'forwards':>9} {'extra/draw':>11} {'wall_s':>8} {'ratio':>6}")
        for v in VARIANTS:
            wall = statistics.median(walls[v])
            extra = (forwards[v] - base_calls) / args.draws
            print(f"{v:<12} {forwards[v]:>9} {extra:>11.2f} {wall:>8.3f} {wall / base:>6.2f}")


if __name__ == "__main__":
    main()
