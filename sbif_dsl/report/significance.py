"""Is a detected sign flip or |BIF| peak more than noise? Decided from the 95% intervals (lo, hi) the views
carry per checkpoint (`bif_corr_lo`/`_hi`, jackknife over chains); `pairs_frame` passes them on as lo, hi.

The rules (both conservative; a checkpoint without an interval counts as "includes 0"):

- **sign flip** (− → + or + → −) is *significant* when, on each side of it, there are `min_run` consecutive
  checkpoints (the detector's own persistence, `DetectParams.min_run`, default 2) whose intervals exclude 0
  with that side's sign: below 0 before and above 0 after an "up" flip, the reverse for "down". A side runs
  from the neighbouring flip of the same curve (or the curve's end) to this flip, so a far-away regime cannot
  vouch for it. Asking for a run, not one checkpoint, keeps the rule sound over many checkpoints: with 40
  checkpoints of a curve that is truly 0, one interval in 40 wrongly excluding 0 is likely, two in a row on
  both sides is not.
- **|BIF| peak** is *significant* when its interval excludes 0 and lies wholly above the intervals at both
  valleys that bound its prominence (on the |BIF| scale: the smallest |value| in the peak's interval is
  larger than the largest |value| in each valley's interval), i.e. the peak's height over its surroundings,
  not just its sign, is resolved. For peaks of the signed curve (`use_abs=False`) only the valley condition
  applies.

`significant` is null when the curve has no intervals at all (an older cache): unknown, not "no".
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import polars as pl

SIG_COLUMNS = {"significant": pl.Boolean, "significance": pl.String}


def _curves(
    df: pl.DataFrame, x: str, y: str, lo: str, hi: str, by: Sequence[str]
) -> Iterator[tuple[tuple, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(group key, x, y, lo, hi) per group, sorted by x, rows with a finite x and y only (as the detectors);
    a missing interval bound is NaN."""
    cols = [*by, x, y]
    sub = df.select([*cols, pl.col(lo).cast(pl.Float64), pl.col(hi).cast(pl.Float64)]).drop_nulls(cols)
    parts = sub.partition_by(list(by), maintain_order=True, as_dict=True) if by else {(): sub}
    for key, g in parts.items():
        g = g.sort(x)
        xs = g[x].cast(pl.Float64).to_numpy()
        ys = g[y].cast(pl.Float64).to_numpy()
        ok = np.isfinite(xs) & np.isfinite(ys)
        los = g[lo].fill_null(np.nan).to_numpy()[ok]
        his = g[hi].fill_null(np.nan).to_numpy()[ok]
        yield tuple(key), xs[ok], ys[ok], los, his


def interval_sign(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """+1 where the interval lies above 0, −1 where below, 0 where it includes 0 (or is missing)."""
    lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.where(lo > 0, 1, np.where(hi < 0, -1, 0))


def _runs(mask: np.ndarray, min_run: int) -> list[tuple[int, int]]:
    """(first, last) index of every run of True at least min_run long."""
    out, start = [], None
    for i, m in enumerate([*mask.tolist(), False]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            if i - start >= min_run:
                out.append((start, i - 1))
            start = None
    return out


def _fmt_steps(xs: np.ndarray, run: tuple[int, int]) -> str:
    a, b = xs[run[0]], xs[run[1]]
    return f"step {a:,.0f}" if a == b else f"steps {a:,.0f}–{b:,.0f}"


def _with_sig(events: pl.DataFrame, by: Sequence[str], results: dict[tuple, tuple[bool | None, str | None]]):
    """events + significant, significance, matched on (group key, step)."""
    keys = [(*(r[c] for c in by), r["step"]) for r in events.select([*by, "step"]).iter_rows(named=True)]
    sig = [results.get(k, (None, None)) for k in keys]
    return events.with_columns(
        pl.Series("significant", [s[0] for s in sig], dtype=pl.Boolean),
        pl.Series("significance", [s[1] for s in sig], dtype=pl.String),
    )


def _no_intervals(events: pl.DataFrame) -> pl.DataFrame:
    return events.with_columns(
        pl.lit(None, dtype=pl.Boolean).alias("significant"), pl.lit(None, dtype=pl.String).alias("significance")
    )


def flip_significance(
    curves: pl.DataFrame,
    flips: pl.DataFrame,
    by: Sequence[str] | None = None,
    *,
    x: str = "step",
    y: str = "value",
    lo: str = "lo",
    hi: str = "hi",
    min_run: int = 2,
) -> pl.DataFrame:
    """`flips` (the output of `zero_crossings` on `curves`) with `significant` (bool, null when the curve has
    no intervals) and `significance` (why, in words). Rule: the module docstring."""
    by = list(by or [])
    if lo not in curves.columns or hi not in curves.columns:
        return _no_intervals(flips)
    min_run = max(int(min_run), 1)
    results: dict[tuple, tuple[bool | None, str | None]] = {}
    fl = {k: g.sort("step") for k, g in (flips.partition_by(by, as_dict=True).items() if by else [((), flips)])}
    for key, xs, _ys, los, his in _curves(curves, x, y, lo, hi, by):
        mine = fl.get(key)
        if mine is None or mine.is_empty():
            continue
        known = bool(np.any(np.isfinite(los) & np.isfinite(his)))
        s = interval_sign(los, his)
        rows = mine.to_dicts()
        for k, r in enumerate(rows):
            if not known:
                results[(*key, r["step"])] = (None, "no 95% intervals for this curve")
                continue
            new = 1 if r["direction"] == "up" else -1
            left = rows[k - 1]["step_after"] if k > 0 else -np.inf
            right = rows[k + 1]["step_before"] if k + 1 < len(rows) else np.inf
            before = np.flatnonzero((xs >= left) & (xs <= r["step_before"]))
            after = np.flatnonzero((xs >= r["step_after"]) & (xs <= right))
            rb = _runs(s[before] == -new, min_run)
            ra = _runs(s[after] == new, min_run)
            old_w, new_w = ("below", "above") if new > 0 else ("above", "below")
            if rb and ra:
                near_b = (int(before[rb[-1][0]]), int(before[rb[-1][1]]))  # the runs nearest the flip
                near_a = (int(after[ra[0][0]]), int(after[ra[0][1]]))
                why = (
                    f"significant: 95% intervals {old_w} 0 at {_fmt_steps(xs, near_b)} and {new_w} 0 at "
                    f"{_fmt_steps(xs, near_a)}"
                )
                results[(*key, r["step"])] = (True, why)
            else:
                side = " and ".join(w for w, ok in ((f"{old_w} 0 before", rb), (f"{new_w} 0 after", ra)) if not ok)
                n = "a checkpoint" if min_run == 1 else f"{min_run} consecutive checkpoints"
                results[(*key, r["step"])] = (False, f"not significant: no {n} with the 95% interval {side} the flip")
    return _with_sig(flips, by, results)


def peak_significance(
    curves: pl.DataFrame,
    pk: pl.DataFrame,
    by: Sequence[str] | None = None,
    *,
    x: str = "step",
    y: str = "value",
    lo: str = "lo",
    hi: str = "hi",
    use_abs: bool = True,
) -> pl.DataFrame:
    """`pk` (the output of `peaks` on `curves`: step, step_left_base, step_right_base, ...) with `significant`
    and `significance`. Rule: the module docstring."""
    by = list(by or [])
    if lo not in curves.columns or hi not in curves.columns:
        return _no_intervals(pk)
    results: dict[tuple, tuple[bool | None, str | None]] = {}
    pkd = {k: g for k, g in (pk.partition_by(by, as_dict=True).items() if by else [((), pk)])}
    for key, xs, _ys, los, his in _curves(curves, x, y, lo, hi, by):
        mine = pkd.get(key)
        if mine is None or mine.is_empty():
            continue
        known = bool(np.any(np.isfinite(los) & np.isfinite(his)))
        for r in mine.iter_rows(named=True):
            if not known:
                results[(*key, r["step"])] = (None, "no 95% intervals for this curve")
                continue
            i = int(np.searchsorted(xs, r["step"]))
            bases = [int(np.searchsorted(xs, r[c])) for c in ("step_left_base", "step_right_base")]
            a, b = los[i], his[i]
            if not (np.isfinite(a) and np.isfinite(b)):
                results[(*key, r["step"])] = (False, "not significant: no 95% interval at the peak")
                continue
            if use_abs:
                floor = 0.0 if a <= 0 <= b else min(abs(a), abs(b))  # smallest |value| in the peak's interval
                ceils = [max(abs(los[j]), abs(his[j])) for j in bases]  # largest |value| in a valley's
            else:
                floor = a
                ceils = [his[j] for j in bases]
            interval = f"95% interval [{a:+.3g}, {b:+.3g}]"
            if use_abs and floor <= 0:
                results[(*key, r["step"])] = (False, f"not significant: its {interval} includes 0")
                continue
            clash = [xs[j] for j, c in zip(bases, ceils, strict=True) if not (np.isfinite(c) and floor > c)]
            if clash:
                where = " and ".join(f"{s:,.0f}" for s in clash)
                why = f"not significant: its {interval} is not clear of the valley's at step {where}"
                results[(*key, r["step"])] = (False, why)
            else:
                valleys = " and ".join(f"{xs[j]:,.0f}" for j in bases)
                why = f"significant: its {interval} clears 0 and the valleys' intervals (steps {valleys})"
                results[(*key, r["step"])] = (True, why)
    return _with_sig(pk, by, results)
