"""Signal detectors on long Polars frames, one curve per group (`by` columns, e.g. one BIF pair).

- `zero_crossings`: sign changes with hysteresis (a dead band ±band that wiggles inside never leave) and
  persistence (single-sample spikes are ignored);
- `peaks`: local maxima with their topographic prominence (the definition of scipy.signal.peak_prominences,
  implemented here; no scipy dependency);
- `changepoints`: the steepest stretches of a curve on a log-step axis (slope peaks of the smoothed,
  log-grid-resampled curve), i.e. the transitions between plateaus.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import polars as pl

# ----------------------------------------------------------------------------------------------- helpers


def _groups(
    df: pl.DataFrame, x: str, y: str, by: Sequence[str] | None
) -> Iterator[tuple[dict, np.ndarray, np.ndarray]]:
    """Yield (group key, x sorted, y) per group, finite values only."""
    by = list(by or [])
    missing = [c for c in [x, y, *by] if c not in df.columns]
    if missing:
        raise ValueError(f"frame lacks column(s) {missing}; it has {df.columns}")
    sub = df.select([*by, x, y]).drop_nulls()
    parts = sub.partition_by(by, maintain_order=True, as_dict=True) if by else {(): sub}
    for key, g in parts.items():
        g = g.sort(x)
        xs = g[x].cast(pl.Float64).to_numpy()
        ys = g[y].cast(pl.Float64).to_numpy()
        ok = np.isfinite(xs) & np.isfinite(ys)
        yield dict(zip(by, key, strict=True)), xs[ok], ys[ok]


def _frame(rows: list[dict], by: Sequence[str] | None, schema: dict, src: pl.DataFrame) -> pl.DataFrame:
    by = list(by or [])
    full = {c: src.schema[c] for c in by} | schema
    return pl.DataFrame(rows, schema=full, orient="row") if rows else pl.DataFrame(schema=full)


_TRIM = 0.8  # keep the 80% smallest |second differences|
_TRIM_RMS = 0.6616  # RMS of a standard normal restricted to its central 80% (|z| < 1.2816)


def noise_sigma(y: np.ndarray) -> float:
    """Robust noise σ of a sampled curve from its second differences (blind to smooth trends; the largest
    20%, where real features sit, are trimmed): var(y[i-1] − 2y[i] + y[i+1]) = 6σ² for white noise."""
    y = np.asarray(y, dtype=float)
    if y.size < 5:
        return 0.0
    d2 = np.sort(np.abs(y[2:] - 2 * y[1:-1] + y[:-2])) / math.sqrt(6)
    keep = d2[: max(1, int(round(_TRIM * d2.size)))]
    return float(np.sqrt(np.mean(keep**2)) / _TRIM_RMS)


def moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Centered moving average (odd window, edges padded with the end values)."""
    y = np.asarray(y, dtype=float)
    w = int(window) | 1
    if w <= 1 or y.size < 3:
        return y.copy()
    h = min(w // 2, y.size - 1)
    padded = np.concatenate([np.full(h, y[0]), y, np.full(h, y[-1])])
    return np.convolve(padded, np.ones(2 * h + 1) / (2 * h + 1), mode="valid")


def log_step(x: np.ndarray) -> np.ndarray:
    """The report's log axis: log10(step + 1) (= Vega-Lite's symlog with constant 1), defined at step 0."""
    x = np.asarray(x, dtype=float)
    if np.any(x < 0):
        raise ValueError("steps must be >= 0 for a log-step axis")
    return np.log10(x + 1.0)


def _unlog(u: float) -> float:
    return float(10.0**u - 1.0)


def peak_prominences(c: np.ndarray) -> list[dict]:
    """All local maxima of `c` (plateaus → their middle) with topographic prominence and half-height width.

    Prominence: the peak's height above the higher of the two lowest points met walking left and right until
    the curve rises above the peak (or ends). Width bounds are fractional indices where the curve crosses
    height − prominence/2 (as scipy.signal.peak_widths with rel_height 0.5).
    """
    c = np.asarray(c, dtype=float)
    n = c.size
    out: list[dict] = []
    i = 1
    while i < n - 1:
        if c[i - 1] < c[i]:
            j = i
            while j + 1 < n and c[j + 1] == c[i]:
                j += 1
            if j + 1 < n and c[j + 1] < c[i]:
                out.append({"idx": (i + j) // 2})
            i = j + 1
        else:
            i += 1
    for pk in out:
        p, h = pk["idx"], c[pk["idx"]]
        k, lmin, lb = p - 1, h, p
        while k >= 0 and c[k] <= h:
            if c[k] < lmin:
                lmin, lb = c[k], k
            k -= 1
        k, rmin, rb = p + 1, h, p
        while k < n and c[k] <= h:
            if c[k] < rmin:
                rmin, rb = c[k], k
            k += 1
        prom = h - max(lmin, rmin)
        half = h - prom / 2
        k = p
        while k > lb and c[k] > half:
            k -= 1
        left = k + (half - c[k]) / (c[k + 1] - c[k]) if c[k] < half and c[k + 1] != c[k] else float(k)
        k = p
        while k < rb and c[k] > half:
            k += 1
        right = k - (half - c[k]) / (c[k - 1] - c[k]) if c[k] < half and c[k - 1] != c[k] else float(k)
        pk.update(prominence=float(prom), left_base=lb, right_base=rb, left=float(left), right=float(right))
    return out


def _interp_x(xs: np.ndarray, fi: float) -> float:
    """x at a fractional index."""
    return float(np.interp(fi, np.arange(xs.size), xs))


# --------------------------------------------------------------------------------------------- detectors


def zero_crossings(
    df: pl.DataFrame,
    x: str = "step",
    y: str = "value",
    by: Sequence[str] | None = None,
    *,
    min_abs: float = 0.0,
    min_rel: float = 0.05,
    noise_k: float = 3.0,
    smooth: int = 1,
    min_run: int = 2,
) -> pl.DataFrame:
    """Sign changes of `y` over `x`, per group, ignoring wiggles inside a dead band.

    The band half-width is max(min_abs, min_rel·max|y|, noise_k·σ_noise); a crossing is reported only when
    the curve goes from beyond +band to beyond −band (or back), each side held for at least `min_run`
    samples beyond the band (single-sample spikes are noise; a flip at the very last checkpoint is not
    reported). `step_before`/`step_after` bracket the
    actual sign change (adjacent samples), `step` interpolates the zero linearly, `direction` is "up"
    (− → +) or "down" (+ → −).
    Returns: by…, step_before, step_after, step, value_before, value_after, direction.
    """
    rows = []
    for key, xs, ys in _groups(df, x, y, by):
        if ys.size < 2:
            continue
        ysm = moving_average(ys, smooth)
        sig = noise_sigma(ys) / math.sqrt(max(int(smooth) | 1, 1))
        band = max(min_abs, min_rel * float(np.max(np.abs(ysm))), noise_k * sig)
        state = np.where(ysm > band, 1, np.where(ysm < -band, -1, 0))
        sign = np.sign(ysm)
        # runs of same-sign samples beyond the band (band samples skipped); shorter than min_run = spikes
        runs: list[list[int]] = []
        for i in np.flatnonzero(state):
            if runs and state[runs[-1][-1]] == state[i]:
                runs[-1].append(int(i))
            else:
                runs.append([int(i)])
        kept: list[list[int]] = []
        for r in (r for r in runs if len(r) >= min_run):
            if kept and state[kept[-1][-1]] == state[r[0]]:
                kept[-1].extend(r)
            else:
                kept.append(r)
        for prev, nxt in zip(kept, kept[1:], strict=False):
            last, i = prev[-1], nxt[0]
            new = state[i]
            # noise may cross zero several times inside the band: take the median raw crossing
            zs = [
                (j, xs[j] + (xs[j + 1] - xs[j]) * (ysm[j] / (ysm[j] - ysm[j + 1])))
                for j in range(last, i)
                if sign[j] != sign[j + 1] and sign[j] != 0
            ] or [(j, xs[j + 1]) for j in range(last, i) if sign[j + 1] == new][:1]
            z = float(np.median([zz for _, zz in zs]))
            js = [j for j in range(last, i) if sign[j] != new and sign[j + 1] == new]
            j = min(js, key=lambda j: abs(0.5 * (xs[j] + xs[j + 1]) - z))
            rows.append(
                {
                    **key,
                    "step_before": xs[j],
                    "step_after": xs[j + 1],
                    "step": z,
                    "value_before": ys[j],
                    "value_after": ys[j + 1],
                    "direction": "up" if new > 0 else "down",
                }
            )
    schema = {
        "step_before": pl.Float64,
        "step_after": pl.Float64,
        "step": pl.Float64,
        "value_before": pl.Float64,
        "value_after": pl.Float64,
        "direction": pl.String,
    }
    return _frame(rows, by, schema, df)


def peaks(
    df: pl.DataFrame,
    x: str = "step",
    y: str = "value",
    by: Sequence[str] | None = None,
    *,
    prominence: float = 0.2,
    use_abs: bool = True,
    noise_k: float = 3.0,
    smooth: int = 1,
) -> pl.DataFrame:
    """Local maxima of y (of |y| when use_abs) whose topographic prominence is at least
    max(prominence·(max − min), 2·noise_k·σ_noise) of the (absolute) curve. End points are never peaks.

    Returns: by…, step, value (signed y at the peak), prominence (absolute), prominence_rel (fraction of the
    curve's range), step_left, step_right (where the peak is above half its prominence), step_left_base,
    step_right_base (the valleys on either side that bound its prominence).
    """
    rows = []
    for key, xs, ys in _groups(df, x, y, by):
        if ys.size < 3:
            continue
        ysm = moving_average(ys, smooth)
        c = np.abs(ysm) if use_abs else ysm
        rng = float(c.max() - c.min())
        if rng <= 0:
            continue
        sig = noise_sigma(ys) / math.sqrt(max(int(smooth) | 1, 1))
        # a prominence is a peak-to-valley difference of two noisy points: the floor is 2·noise_k·σ
        thr = max(prominence * rng, 2 * noise_k * sig, 1e-12 * max(1.0, float(np.abs(c).max())))
        for pk in peak_prominences(c):
            if pk["prominence"] < thr:
                continue
            rows.append(
                {
                    **key,
                    "step": xs[pk["idx"]],
                    "value": ys[pk["idx"]],
                    "prominence": pk["prominence"],
                    "prominence_rel": pk["prominence"] / rng,
                    "step_left": _interp_x(xs, pk["left"]),
                    "step_right": _interp_x(xs, pk["right"]),
                    "step_left_base": xs[pk["left_base"]],
                    "step_right_base": xs[pk["right_base"]],
                }
            )
    schema = {
        "step": pl.Float64,
        "value": pl.Float64,
        "prominence": pl.Float64,
        "prominence_rel": pl.Float64,
        "step_left": pl.Float64,
        "step_right": pl.Float64,
        "step_left_base": pl.Float64,
        "step_right_base": pl.Float64,
    }
    return _frame(rows, by, schema, df)


def _log_grid(xs: np.ndarray, ys: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin-average (x, y) onto n points uniform in log10(x + 1); empty bins are interpolated."""
    u = log_step(xs)
    grid = np.linspace(u.min(), u.max(), n)
    idx = np.clip(np.rint((u - grid[0]) / (grid[1] - grid[0])).astype(int), 0, n - 1)
    cnt = np.bincount(idx, minlength=n)
    tot = np.bincount(idx, weights=ys, minlength=n)
    full = cnt > 0
    # place each occupied node at the mean u of its points so sparse data is not shifted onto the grid
    upos = np.bincount(idx, weights=u, minlength=n)[full] / cnt[full]
    return grid, np.interp(grid, upos, tot[full] / cnt[full])


def changepoints(
    df: pl.DataFrame,
    x: str = "step",
    y: str = "value",
    by: Sequence[str] | None = None,
    *,
    smooth_window: int = 5,
    grid_points: int = 200,
    prominence: float = 0.2,
    min_change: float = 0.05,
    noise_k: float = 3.0,
) -> pl.DataFrame:
    """Transitions between plateaus: peaks of |d y / d log10(step + 1)| of the smoothed curve.

    The curve is bin-averaged onto a grid uniform in log-step (so dense late logging and sparse early
    checkpoints weigh alike), smoothed, and differentiated. A slope peak counts when its prominence is at
    least `prominence`·max|slope| and the curve changes between the flattest points on either side (the
    plateaus) by at least max(min_change·range, noise_k·σ_noise).
    Returns: by…, step (steepest point), step_start, step_end (slope above half its peak), value_before,
    value_after (plateau levels), change, slope (per decade of step), direction ("rise" | "drop").
    """
    rows = []
    for key, xs, ys in _groups(df, x, y, by):
        if ys.size < 4 or xs[-1] <= xs[0]:
            continue
        u, yg = _log_grid(xs, ys, grid_points)
        ys_s = moving_average(yg, smooth_window)
        yrange = float(ys_s.max() - ys_s.min())
        if yrange <= 0:
            continue
        slope = np.gradient(ys_s, u)
        a = np.abs(slope)
        amax = float(a.max())
        if amax <= 0:
            continue
        need = max(min_change * yrange, noise_k * noise_sigma(ys))
        cands = [pk for pk in peak_prominences(a) if pk["prominence"] >= prominence * amax]
        for _ in range(3):  # re-derive plateaus between the surviving peaks until stable
            keep = []
            for i, pk in enumerate(cands):
                lo = cands[i - 1]["idx"] if i > 0 else 0
                hi = cands[i + 1]["idx"] if i + 1 < len(cands) else a.size - 1
                lb = lo + int(np.argmin(a[lo : pk["idx"] + 1]))
                rb = pk["idx"] + int(np.argmin(a[pk["idx"] : hi + 1]))
                change = float(ys_s[rb] - ys_s[lb])
                if abs(change) >= need and abs(change) > 0:
                    keep.append({**pk, "lb": lb, "rb": rb, "change": change})
            stable = len(keep) == len(cands)
            cands = keep
            if stable:
                break
        for pk in cands:
            p = pk["idx"]
            rows.append(
                {
                    **key,
                    "step": _unlog(u[p]),
                    "step_start": _unlog(_interp_x(u, pk["left"])),
                    "step_end": _unlog(_interp_x(u, pk["right"])),
                    "value_before": float(ys_s[pk["lb"]]),
                    "value_after": float(ys_s[pk["rb"]]),
                    "change": pk["change"],
                    "slope": float(slope[p]),
                    "direction": "rise" if slope[p] > 0 else "drop",
                }
            )
    schema = {
        "step": pl.Float64,
        "step_start": pl.Float64,
        "step_end": pl.Float64,
        "value_before": pl.Float64,
        "value_after": pl.Float64,
        "change": pl.Float64,
        "slope": pl.Float64,
        "direction": pl.String,
    }
    return _frame(rows, by, schema, df)
