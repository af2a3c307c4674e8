"""Synthetic frames shaped like the project's SQL views, with transitions at KNOWN steps.

For tests, docs and report previews only: the numbers mimic the toy model's story (SCIENCE.md §5) — loss
drops and LLC rises at `TRANSITIONS`, dog→cat helpful then harmful after the last one, dog→sparrow flipping at
the middle one, dog→lily with a harmful peak at the first — but come from closed-form curves, not a model.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

import numpy as np
import polars as pl

ITEMS = ["dog", "cat", "sparrow", "robin", "lily", "rose", "oak", "pine"]
TRANSITIONS = (200, 800, 2000)  # animal/plant, mammal/bird + flower/tree, items
CLASSES = ["induction", "delimiter", "formatting", "word start"]
INDUCTION_STEP = 800  # coincides with the middle toy transition


def _u(steps: np.ndarray) -> np.ndarray:
    return np.log10(np.asarray(steps, dtype=float) + 1)


def sigmoid_up(steps: np.ndarray, at: float, width: float = 0.04) -> np.ndarray:
    """0 → 1 around `at`, `width` in decades of step."""
    return 1 / (1 + np.exp(-(_u(steps) - np.log10(at + 1)) / width))


def bump(steps: np.ndarray, at: float, width: float = 0.06) -> np.ndarray:
    """Gaussian bump of height 1 at `at` on the log-step axis."""
    return np.exp(-0.5 * ((_u(steps) - np.log10(at + 1)) / width) ** 2)


def checkpoint_steps(n: int = 40, last: int = 3000) -> list[int]:
    return sorted({0, *np.unique(np.rint(np.geomspace(1, last, n)).astype(int)).tolist()})


def _level(i: int, j: int) -> int:
    """Depth of the lowest common ancestor on the 8-item tree: 0 root, 1 animal/plant, 2 mammal/bird…,
    3 the item itself."""
    if i == j:
        return 3
    if i // 4 != j // 4:
        return 0
    if i // 2 != j // 2:
        return 1
    return 2


Z95 = 1.96


def _with_intervals(df: pl.DataFrame, se: dict[str, pl.Expr]) -> pl.DataFrame:
    """Add <col>_se, <col>_lo, <col>_hi (± 1.96 se) for each column, as the views carry them."""
    out = df.with_columns(**{f"{c}_se": e for c, e in se.items()})
    return out.with_columns(
        **{f"{c}_lo": pl.col(c) - Z95 * pl.col(f"{c}_se") for c in se},
        **{f"{c}_hi": pl.col(c) + Z95 * pl.col(f"{c}_se") for c in se},
    )


def _agreement(bif: np.ndarray, loo: np.ndarray) -> dict[str, float | None]:
    """Pearson, Spearman, sign agreement (plain and |LOO|-weighted) of two vectors, as the agreement stage."""
    ok = np.isfinite(bif) & np.isfinite(loo)
    b, d = bif[ok], loo[ok]
    if b.size < 3 or np.std(b) == 0 or np.std(d) == 0:
        return {"pearson": None, "spearman": None, "sign_agreement": None, "sign_agreement_weighted": None}

    def rank(v: np.ndarray) -> np.ndarray:
        return np.argsort(np.argsort(v)).astype(float)

    same = np.sign(b) == np.sign(d)
    w = np.abs(d)
    return {
        "pearson": float(np.corrcoef(b, d)[0, 1]),
        "spearman": float(np.corrcoef(rank(b), rank(d))[0, 1]),
        "sign_agreement": float(same.mean()),
        "sign_agreement_weighted": float((w * same).sum() / w.sum()) if w.sum() > 0 else None,
    }


def _loo_frames(bif: pl.DataFrame, study: str, rng: np.random.Generator) -> dict[str, pl.DataFrame]:
    """Synthetic `loo`, `agreement_pairs` and `agreement` frames: LOO Δ tracks the BIF (−Cov), noisily early and
    closely late; two agreement analyses, on the BIF and on its running sum over checkpoints."""
    off = bif.filter(pl.col("source") != pl.col("target")).sort("source_idx", "target_idx", "step")
    steps = off["step"].to_numpy()
    late = np.log10(steps + 1) / np.log10(steps.max() + 1)
    scale = float(off["bif_cov"].abs().max())
    delta = 0.8 * off["bif_cov"].to_numpy() + rng.normal(0, 1, off.height) * scale * (0.6 - 0.5 * late)
    loo = off.select(
        "study",
        "step",
        pl.lit("loo").alias("analysis"),
        pl.col("source_idx").alias("left_out_idx"),
        pl.col("source").alias("left_out"),
        pl.lit("train").alias("target_set"),
        "target_idx",
        "target",
    ).with_columns(loss_full=pl.lit(0.5), delta=pl.Series(delta))
    loo = loo.with_columns(loss_loo=pl.col("loss_full") - pl.col("delta"))
    cum = off.with_columns(cum=pl.col("bif_cov").cum_sum().over("source", "target"))
    pair_rows, stat_rows = [], []
    for name, col, bif_name in (("agreement", "bif_cov", "bif"), ("agreement_cumulative", "cum", "cumulative_bif")):
        pf = cum.select(
            pl.lit(study).alias("study"),
            pl.lit(name).alias("analysis"),
            pl.lit(bif_name).alias("bif_analysis"),
            pl.lit("loo").alias("loo_analysis"),
            pl.lit("bif_cov").alias("bif_value"),
            "step",
            "source_idx",
            "source",
            "target_idx",
            "target",
            pl.col(col).alias("bif"),
            pl.Series("loo", delta),
        )
        pair_rows.append(pf)
        meta = {
            "study": study,
            "analysis": name,
            "bif_analysis": bif_name,
            "loo_analysis": "loo",
            "bif_value": "bif_cov",
        }
        for (st,), g in pf.group_by("step", maintain_order=True):
            stat_rows.append(
                {**meta, "scope": "checkpoint", "step": st, "n_pairs": g.height}
                | _agreement(g["bif"].to_numpy(), g["loo"].to_numpy())
            )
        stat_rows.append(
            {**meta, "scope": "overall", "step": None, "n_pairs": pf.height}
            | _agreement(pf["bif"].to_numpy(), pf["loo"].to_numpy())
        )
    agreement = pl.DataFrame(stat_rows, schema_overrides={"step": pl.Int64, "n_pairs": pl.Int64}).sort(
        "analysis", "scope", "step", nulls_last=True
    )
    return {"loo": loo, "agreement_pairs": pl.concat(pair_rows), "agreement": agreement}


def demo_frames(
    seed: int = 0, study: str = "toy-demo", noise: float = 0.015, *, intervals: bool = False, loo: bool = False
) -> dict[str, pl.DataFrame]:
    """All view frames for one synthetic study: studies, stages, training_curve, llc, llc_summary, bif,
    class_bif, induction_score, class_loss.

    intervals: also the views' uncertainty columns (bif/class_bif `<col>_se`, `_lo`, `_hi`; llc_summary llc_se,
    llc_lo, llc_hi), 95% intervals of ± 1.96 se. The se is the curves' noise, except for the animal↔plant pairs
    (dog→lily and its like), whose intervals are 20× wider: their |BIF| peak is detected but NOT significant.
    loo: also `loo`, `agreement_pairs` and `agreement` frames (two agreement analyses: agreement and
    agreement_cumulative)."""
    rng = np.random.default_rng(seed)
    t1, t2, t3 = TRANSITIONS
    train_steps = np.arange(0, 3001, 5)
    loss = 0.05 + 0.45 * (1 - sigmoid_up(train_steps, t1)) + 0.25 * (1 - sigmoid_up(train_steps, t2))
    loss += 0.12 * (1 - sigmoid_up(train_steps, t3, 0.03))
    training_curve = pl.DataFrame(
        {"study": study, "step": train_steps, "loss": loss + rng.normal(0, 0.002, train_steps.size)}
    )

    ck = np.array(checkpoint_steps())
    llc_true = 1.0 + 3.0 * sigmoid_up(ck, t1) + 2.0 * sigmoid_up(ck, t2) + 1.5 * sigmoid_up(ck, t3, 0.03)
    llc_rows = [
        (study, int(s), c, float(v + rng.normal(0, 0.15))) for c in range(4) for s, v in zip(ck, llc_true, strict=True)
    ]
    llc = pl.DataFrame(llc_rows, schema=["study", "step", "chain", "llc"], orient="row")
    llc_summary = (
        llc.group_by("study", "step")
        .agg(llc_mean=pl.col("llc").mean(), llc_std=pl.col("llc").std(), chains=pl.len().cast(pl.Int64))
        .sort("step")
    )
    if intervals:
        llc_summary = _with_intervals(llc_summary, {"llc_mean": pl.col("llc_std") / pl.col("chains").sqrt()})
        llc_summary = llc_summary.rename({"llc_mean_se": "llc_se", "llc_mean_lo": "llc_lo", "llc_mean_hi": "llc_hi"})

    # sample × sample BIF (−Corr), one curve shape per tree relation
    shapes = {
        3: -np.ones_like(ck, dtype=float),  # self: −Var → −1
        2: -0.5 * (1 - sigmoid_up(ck, t3, 0.03)) + 0.35 * sigmoid_up(ck, t3, 0.03),  # dog→cat flips at t3
        1: -0.4 * (1 - sigmoid_up(ck, t2)) + 0.25 * sigmoid_up(ck, t2),  # dog→sparrow flips at t2
        0: 0.05 + 0.55 * bump(ck, t1),  # dog→lily harmful peak at t1
    }
    bif_rows = []
    for i, a in enumerate(ITEMS):
        for j, b in enumerate(ITEMS):
            lvl = _level(i, j)
            corr = shapes[lvl] + (0 if lvl == 3 else rng.normal(0, noise, ck.size))
            corr = np.clip(corr, -1, 1)
            for s, c in zip(ck, corr, strict=True):
                bif_rows.append((study, int(s), "pairs", "loss", i, a, "loss", j, b, float(c) * 2e-4, float(c)))
    bif = pl.DataFrame(
        bif_rows,
        schema=[
            "study",
            "step",
            "analysis",
            "source_observable",
            "source_idx",
            "source",
            "target_observable",
            "target_idx",
            "target",
            "bif_cov",
            "bif_corr",
        ],
        orient="row",
    )

    if intervals:
        wide = (pl.col("source_idx") // 4) != (pl.col("target_idx") // 4)  # animal ↔ plant
        corr_se = pl.when(pl.col("source") == pl.col("target")).then(0.0).when(wide).then(20 * noise).otherwise(noise)
        bif = _with_intervals(bif, {"bif_cov": corr_se * 2e-4, "bif_corr": corr_se})

    ind = sigmoid_up(ck, INDUCTION_STEP, 0.05)
    induction_score = pl.DataFrame({"study": study, "step": ck, "score": 0.05 + 0.8 * ind})
    cl_rows, cb_rows = [], []
    for k, a in enumerate(CLASSES):
        base = 6.0 - 0.4 * k - 2.0 * sigmoid_up(ck, 150)
        if a == "induction":
            base = base - 1.5 * ind
        for s, v in zip(ck, base, strict=True):
            cl_rows.append((study, int(s), a, float(v + rng.normal(0, 0.02))))
        for b in CLASSES:
            if a == b:
                v = -0.3 - (0.5 * ind if a == "induction" else 0)
            elif a == "delimiter" or b == "delimiter":
                v = -0.15 + 0.3 * ind
            else:
                v = -0.1 * np.ones_like(ind)
            v = v + rng.normal(0, 0.01, ck.size)
            for s, x in zip(ck, v, strict=True):
                cb_rows.append((study, int(s), "classes", a, b, float(x) * 1e-3, float(x)))
    class_loss = pl.DataFrame(cl_rows, schema=["study", "step", "class", "loss"], orient="row")
    class_bif = pl.DataFrame(
        cb_rows,
        schema=["study", "step", "analysis", "source_class", "target_class", "bif_cov", "bif_corr"],
        orient="row",
    )

    if intervals:
        class_bif = _with_intervals(class_bif, {"bif_cov": pl.lit(0.01 * 1e-3), "bif_corr": pl.lit(0.01)})

    t0 = datetime(2025, 1, 1, 12, 0, 0)
    spec_yaml = (
        f"study: {study}\ntitle: Synthetic toy study\nseed: 0\nmodel:\n  kind: deep_linear\n  width: 16\n"
        "sampler:\n  kind: sgld\n  eps: 1.0e-5\n  gamma: 1.0e5\n  nbeta: 1.0e4\n  chains: 8\n  draws: 400\n"
    )
    studies = pl.DataFrame(
        {
            "study": [study],
            "title": ["Synthetic toy study"],
            "description": ["Closed-form curves with transitions at steps 200, 800 and 2000 (not a model)."],
            "spec_hash": ["9f2c51d0a7e3b4c8d1e6f0a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6"],
            "spec_yaml": [spec_yaml],
            "seed": [0],
            "updated_at": [t0 + timedelta(minutes=30)],
        }
    )
    stage_rows = [("dataset", None, 0.4), ("train", None, 41.0)]
    stage_rows += [(k, int(s), w) for s in ck[::8] for k, w in (("sample", 12.5), ("influence", 0.8))]
    stages = pl.DataFrame(
        [
            (
                study,
                hashlib.sha256(f"{study}/{k}/{s}".encode()).hexdigest(),
                k,
                s,
                "complete",
                t0 + timedelta(seconds=10 * n),
                w,
                "cpu",
                "0.1.0",
                "2.13.0",
                "3.11.9",
                n,
            )
            for n, (k, s, w) in enumerate(stage_rows)
        ],
        schema={
            "study": pl.String,
            "key": pl.String,
            "kind": pl.String,
            "step": pl.Int64,
            "status": pl.String,
            "created_at": pl.Datetime,
            "wall_s": pl.Float64,
            "device": pl.String,
            "sbif_version": pl.String,
            "torch_version": pl.String,
            "python_version": pl.String,
            "seed": pl.Int64,
        },
        orient="row",
    )
    extra = _loo_frames(bif, study, rng) if loo else {}
    return {
        **extra,
        "studies": studies,
        "stages": stages,
        "training_curve": training_curve,
        "llc": llc,
        "llc_summary": llc_summary,
        "bif": bif,
        "class_bif": class_bif,
        "induction_score": induction_score,
        "class_loss": class_loss,
    }
