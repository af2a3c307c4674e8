"""Runs in benchmarks/.venv-dattri (made by setup_dattri.sh): dattri 0.3's attributions of the digits MLP at given
checkpoints, for bench_attribution.py. Reads one .pt bundle, writes one: {method: {step: (n, q) scores}} and wall
times. dattri's sign: a positive score = the training sample helps the test sample (lowers its loss); the driver
flips it to the BIF's convention (negative = helpful)."""

from __future__ import annotations

import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def mlp(widths):
    layers = []
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if k < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def main(src: str, dst: str) -> None:
    from dattri.algorithm.influence_function import IFAttributorCG, IFAttributorExplicit
    from dattri.algorithm.tracin import TracInAttributor
    from dattri.algorithm.trak import TRAKAttributor
    from dattri.task import AttributionTask

    torch.set_num_threads(1)
    b = torch.load(src, weights_only=False)
    x, y, xt, yt = b["x"], b["y"], b["xt"], b["yt"]
    model = mlp(b["widths"])  # sbif_dsl's MLP is this Sequential under `.net`

    def loss_func(params, data):
        xb, yb = data
        out = torch.func.functional_call(model, params, xb)
        return nn.functional.cross_entropy(out, yb)

    def correct_probability(params, data):
        xb, yb = data
        out = torch.func.functional_call(model, params, xb.unsqueeze(0))
        return torch.exp(-nn.functional.cross_entropy(out, yb.unsqueeze(0)))

    train = DataLoader(TensorDataset(x, y), batch_size=len(y), shuffle=False)
    test = DataLoader(TensorDataset(xt, yt), batch_size=len(yt), shuffle=False)
    out: dict = {"scores": {}, "wall_s": {}}
    for step, state in zip(b["steps"], b["states"]):
        params = {k.removeprefix("net."): v for k, v in state.items()}  # the same weights as the BIF's
        task = AttributionTask(loss_func=loss_func, model=model, checkpoints=params)
        methods = {  # each made and run within this iteration (the lambdas see this checkpoint's task)
            "IF explicit (dattri)": lambda task=task: IFAttributorExplicit(task, regularization=b["damping"]),
            "IF CG (dattri)": lambda task=task: IFAttributorCG(task, regularization=b["damping"], max_iter=50),
            "TracIn (dattri)": lambda task=task: TracInAttributor(
                task, weight_list=torch.tensor([b["lr"]]), normalized_grad=False, projector_kwargs={"proj_dim": 512}
            ),
            "TRAK (dattri)": lambda task=task: TRAKAttributor(
                task,
                correct_probability,
                projector_kwargs={"proj_dim": 512, "device": "cpu"},
                regularization=b["damping"],
            ),
        }
        for name, make in methods.items():
            t0 = time.perf_counter()
            try:
                att = make()
                if "TracIn" not in name:  # TracIn has nothing to cache (its cache() takes no loader)
                    att.cache(train)
                score = att.attribute(train, test) if "TRAK" not in name else att.attribute(test)
            except Exception as e:  # noqa: BLE001 - reported, the other methods still run
                print(f"{name} at step {step}: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            out["scores"].setdefault(name, {})[step] = score.detach().double()
            out["wall_s"].setdefault(name, {})[step] = time.perf_counter() - t0
            print(f"{name} step {step}: {out['wall_s'][name][step]:.1f}s", file=sys.stderr)
    torch.save(out, dst)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
