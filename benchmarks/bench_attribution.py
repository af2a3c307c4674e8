"""BIF side by side with dattri 0.3 on the digits MLP, scored by LDS against the same retrained subsets (run by hand).

    bash benchmarks/setup_dattri.sh                      # once: benchmarks/.venv-dattri
    .venv/bin/python benchmarks/bench_attribution.py     # [--steps 19,52,373,1000] [--cache PATH]

Runs (or reuses) specs/digits_lds.yaml through the API, so every method sees the same checkpoint weights, the same
1000 training and 100 test images and the same 100 retrained half-size subsets (the lds_subset stages). dattri's
methods run in the side environment (`dattri_side.py`) on those weights; every score is flipped to the BIF's sign
(negative = helpful) and scored by `sbif_dsl.influence.lds.lds`, the function the `lds` stage uses. BIF wall time =
the checkpoint's sample + bif stages (SGLD draws for all 1100 tracked images, then the covariance); dattri's =
cache + attribute in the side process (one thread, as the sample stage here). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sbif_dsl as sb  # noqa: E402
from sbif_dsl.hashing import derive_seed  # noqa: E402
from sbif_dsl.influence.lds import lds, subset_predictions  # noqa: E402
from sbif_dsl.stages.lds import subset_members  # noqa: E402

SIDE = ROOT / "benchmarks" / ".venv-dattri" / "bin" / "python"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="19,52,373,1000", help="checkpoints to compare at")
    ap.add_argument("--cache", default=str(ROOT / "benchmarks" / ".cache-attribution" / "sbif.duckdb"))
    ap.add_argument("--damping", type=float, default=1e-3, help="dattri's Hessian regularization")
    args = ap.parse_args()
    if not SIDE.exists():
        sys.exit(f"no {SIDE}; hint: bash benchmarks/setup_dattri.sh")
    steps = [int(s) for s in args.steps.split(",")]

    study = sb.load(ROOT / "specs" / "digits_lds.yaml", cache=args.cache)
    study.run()
    spec = study.spec.study
    lds_spec = next(a for a in spec.analyses if a.kind == "lds")
    rt = study.runtime()
    train, test = rt.dataset.train, rt.dataset.sets()["test"]
    n, q = len(train), len(test)
    masks = np.array(
        [
            np.isin(np.arange(n), subset_members(n, lds_spec.fraction, spec.seed, lds_spec.seed, m))
            for m in range(lds_spec.subsets)
        ]
    )
    k = int(masks[0].sum())
    boot_seed = derive_seed(lds_spec.seed, "lds-bootstrap")  # the lds stage's resamples: BIF rows equal the view's
    ck = study.sql("SELECT step, key FROM checkpoints ORDER BY step")
    keys = dict(zip(ck["step"].to_list(), ck["key"].to_list()))
    missing = [s for s in steps if s not in keys]
    if missing:
        sys.exit(f"no checkpoint at steps {missing}; checkpoints: {sorted(keys)}")
    from sbif_dsl.store import Store

    store = Store(args.cache)
    states = [torch.load(store.artifact(keys[s], "state.pt"), weights_only=True)["model"] for s in steps]
    sub = study.sql("SELECT step, subset, target_idx, measured FROM lds_subsets ORDER BY step, subset, target_idx")
    measured = {
        s: sub.filter(sub["step"] == s)["measured"].to_numpy().reshape(lds_spec.subsets, q) for s in steps
    }  # (subsets, q)
    bif = study.sql("SELECT step, bif_cov FROM bif WHERE analysis = 'bif' ORDER BY step, source_idx, target_idx")
    walls = study.sql("SELECT step, kind, wall_s FROM stages WHERE kind IN ('sample', 'bif')")
    scores: dict[str, dict[int, np.ndarray]] = {"BIF (sbif, -Cov)": {}}
    wall: dict[str, dict[int, float]] = {"BIF (sbif, -Cov)": {}}
    for s in steps:
        scores["BIF (sbif, -Cov)"][s] = bif.filter(bif["step"] == s)["bif_cov"].to_numpy().reshape(n, q)
        wall["BIF (sbif, -Cov)"][s] = float(walls.filter(walls["step"] == s)["wall_s"].sum())

    with tempfile.TemporaryDirectory() as tmp:
        bundle = {
            "x": train.inputs, "y": train.targets, "xt": test.inputs, "yt": test.targets,
            "widths": [train.inputs.shape[1], *spec.model.hidden, 10], "states": states, "steps": steps,
            "lr": spec.training.lr, "damping": args.damping,
        }  # fmt: skip
        torch.save(bundle, Path(tmp) / "in.pt")
        env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
        subprocess.run([str(SIDE), str(ROOT / "benchmarks" / "dattri_side.py"), f"{tmp}/in.pt", f"{tmp}/out.pt"],
                       check=True, env=env, stderr=subprocess.DEVNULL)  # fmt: skip
        side = torch.load(Path(tmp) / "out.pt", weights_only=False)
    for name, per in side["scores"].items():
        scores[name] = {s: -v.numpy() for s, v in per.items()}  # dattri: positive = helpful; flip to the BIF's sign
        wall[name] = side["wall_s"][name]

    print(f"digits MLP, {n} train / {q} test images, {lds_spec.subsets} subsets of {k}; LDS = mean Spearman over "
          "test images, 95% bootstrap interval over subsets\n")  # fmt: skip
    print("| method | step | LDS | 95% interval | Pearson | wall s |")
    print("|---|---|---|---|---|---|")
    for name, per in scores.items():
        for s in steps:
            if s not in per:
                print(f"| {name} | {s} | failed | | | |")
                continue
            pred = subset_predictions(per[s], masks, 1.0, k)[None]  # (1, subsets, q); scale does not matter
            r = lds(pred, measured[s][None], 1000, seed=boot_seed)["checkpoint"][0]
            sp, pe = r["spearman"], r["pearson"]
            print(f"| {name} | {s} | {sp['value']:.3f} | {sp['lo']:.3f}–{sp['hi']:.3f} | {pe['value']:.3f} | "
                  f"{wall[name][s]:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
