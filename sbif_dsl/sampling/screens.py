"""Convergence screens of SGLD chains: split-R̂, effective sample size, drift, and a verdict (SCIENCE.md §8).

Pure math on numpy arrays of shape (chains, draws) (numpy only, no spec knowledge, no I/O). The sample stage stores
the raw statistics of every checkpoint (`statistics`: rows of the `diagnostics` view) together with the verdict
under the default thresholds; `sbif run` (and the report) call `verdict` with the spec's `diagnostics:` thresholds.

The statistics, all computed in float64:

- split-R̂ (`split_rhat`): the rank-normalized split-R̂ of Vehtari et al. (2021), from ArviZ (arviz-stats): the
  larger of the bulk R̂ (split-R̂ of the rank-normalized draws) and the folded R̂ (of |x − median|, which sees
  chains that agree in mean but not in scale). It is computed per tracked sample (a per-token trace is first
  averaged over its positions: one value per sequence), summarized as max and median over an observable's
  samples, and for each chain's mean tracked loss and for the minibatch loss. Until sample stage version 6 this
  was the plain split-R̂ of BDA3 (eq. 11.4); on normal chains the two agree within 0.01 (tested), the thresholds
  are unchanged. Over 2000 tracked samples × 8 chains × 400 draws ArviZ's takes 2.2 s against the plain one's 0.3 s
  (measured here): small next to the sampling, so the library wins over a hand port.
- ESS: bulk and tail ESS (`bulk_tail_ess`, Vehtari et al. 2021, from ArviZ: rank-normalized, over split chains;
  tail = the smaller of the 5% and 95% quantiles' ESS), of the chains' mean tracked loss and of the minibatch loss,
  and per chain the same on that chain alone. The AR(1) estimate D·(1−ρ)/(1+ρ) of each chain
  (`mixing.ar1_mixing`) is kept beside it. The basic ESS (`ess`, `posterior::ess_basic` without rank
  normalization) remains for the drift's τ below, which needs it un-split.
- drift (`drift`): per chain, the OLS slope b of the series over the draw index, in units of its standard error,
  z = b / SE(b), where SE(b)² = τ·s²/Σ(t−t̄)² with s² the chain's residual variance and τ = C·D / ESS of all
  chains' *detrended* residuals (a trend would otherwise inflate its own error; pooled over chains: steadier).
  Beside it `change` = b·(D−1), the fitted rise over the chain in loss units. Over chains the per-chain z are
  combined as Σz/√C (Stouffer): chains that all climb (too short a burn-in) or all descend (the checkpoint is not a
  local minimum) add up; under stationarity it is about N(0, 1) whatever the number of chains, so one threshold
  fits every sampler. The error is only as good as the estimated τ: with fewer than a few τ of draws per chain τ
  is underestimated and |z| runs large (for an AR(1) of ρ = 0.9 with 8 chains × 20 draws |z| > 3 in ~20% of
  stationary runs, > 6 in ~1%): such runs also warn on ESS.
- rise_sd (`_rise_sd`, minibatch loss only): (mean sampled loss − L(w*)) / its sd over draws. At a local minimum
  the localized posterior sits above L(w*) (≈ +√(d/2) for a d-dimensional quadratic); below it, SGLD found lower
  loss next to w*: the checkpoint is not a local minimum, whether the descent shows as drift during the draws or
  was over within the burn-in (strong localization: the toy's transitions, where the LLC reads −900).

Thresholds (`Thresholds`; the spec's `diagnostics:` block has the same fields and defaults):

- R̂ > 1.01 warns, > 1.1 fails: 1.01 is the threshold Vehtari et al. (2021) recommend, 1.1 the classic one of
  Gelman & Rubin (1992) / BDA3, beyond which chains plainly sample different distributions. A warning looks at the
  mean-loss and minibatch-loss R̂ and the median over tracked samples; a failure also at the max over samples (the
  max of many noisy R̂s grows with their number: on the exact Gaussian posterior with 8 chains × 400 draws the max
  over 12 samples read 1.03-1.05, the median 1.01-1.02). R̂ and ESS are coupled: for stationary chains
  R̂ − 1 ≈ 1/(2·n_e) with n_e effective draws per half chain, so R̂ ≤ 1.01 needs n_e ≳ 50, i.e. an ESS of about
  100 per chain (Vehtari et al.'s pairing). A run with fewer warns on R̂ even when nothing else is wrong: it has
  too few effective draws to show convergence (the ESS screen says the same).
- ESS per chain (the smaller of the all-chains bulk and tail ESS / chains) < 100 warns, < 20 fails (the smallest of
  the mean tracked losses' and the minibatch loss's): Vehtari et al. ask for ≥ 100 per chain before trusting R̂ and
  the ESS itself; below 20 independent draws per chain a chain's share of a covariance (the BIF) has a relative
  standard error above ~30%, and the jackknife over chains, which sees chains only, reads chains that are each too
  short as noise. (Until sample stage version 6 the all-chains total was held to these numbers: 8 chains passed with
  12.5 per chain.)
- |drift| > 3 warns, > 6 fails (standard errors of the combined z): under stationarity |z| > 3 has probability
  ~0.3% with a well-estimated τ (50 checkpoints: ~0.15 chance warnings per series and run); the failure modes
  this catches are far beyond 6 (a climb through a too-short burn-in reads tens to hundreds of SEs). A downward
  drift of the minibatch loss means SGLD finds lower loss near w*: the checkpoint is not a local minimum, and
  covariances mix the descent with the posterior.
- rise_sd < −1 warns, < −3 fails: measured on the demo toy (8 × 400 draws, γ 1e5), the plateau checkpoints near
  the saddle at init read −0.3 to −0.7 (flat: a tiny gradient), the transitions −3 to −27 (LLC −14 to −917), the
  converged end +8. A minibatch's own noise widens the sd, so with small batches this screen is conservative.
- grad_sd (minibatch, `Gradient.descent_sd`) = nβ‖∇L(w*)‖/√γ > 1 warns, > 3 fails (the descent thresholds: both
  are SDs below L(w*)): the first-order drop the gradient at w* lets the localized posterior make, known before a
  single draw, so a checkpoint that is not a minimum is named even when its chains look converged.
- Too few draws to compute a statistic (draws < 4 for R̂, < 8 for ESS and drift) warns: nothing was screened.

The findings come in two kinds (`Finding.kind`), each with its remedy (`hint`): geometry ("not a local minimum":
gradient, descent below L(w*), a minibatch loss drifting down) is a property of the checkpoint, and more sampling
does not fix it; convergence ("not converged": R̂, ESS, upward or tracked drift, too few draws) is the sampler's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

OK, WARN, FAIL = "ok", "warn", "fail"
_LEVEL = {OK: 0, WARN: 1, FAIL: 2}
MIN_RHAT_DRAWS = 4  # two draws per half: a within-half variance
MIN_ESS_DRAWS = 8  # four draws per half: Stan's autocorrelation loop needs a few lags


@dataclass(frozen=True)
class Thresholds:
    """Where a screen warns and fails (module docstring: why these). Mirrors `spec.models.Diagnostics`."""

    rhat_warn: float = 1.01
    rhat_fail: float = 1.1
    ess_warn: float = 100.0
    ess_fail: float = 20.0
    drift_warn: float = 3.0
    drift_fail: float = 6.0
    descent_warn: float = 1.0
    descent_fail: float = 3.0

    @classmethod
    def of(cls, settings) -> Thresholds:
        """From any object with these attributes (the spec's `diagnostics:` block); None gives the defaults."""
        if settings is None:
            return cls()
        return cls(**{f.name: float(getattr(settings, f.name)) for f in fields(cls)})


DEFAULT_THRESHOLDS = Thresholds()


# ----------------------------------------------------------------------------- statistics


def split_chains(x: np.ndarray) -> np.ndarray:
    """(..., chains, draws) -> (..., 2·chains, draws // 2): each chain's first and second half (odd: middle dropped)."""
    d = x.shape[-1]
    half = d // 2
    return np.concatenate([x[..., :half], x[..., d - half :]], axis=-2)


def split_rhat(x: np.ndarray) -> np.ndarray:
    """Rank-normalized split-R̂ (Vehtari et al. 2021: the larger of the bulk and the folded R̂, from ArviZ) of
    (..., chains, draws) series over the last two axes -> (...).

    NaN with fewer than MIN_RHAT_DRAWS draws or where a series is constant."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[-1] < MIN_RHAT_DRAWS:
        return np.full(x.shape[:-2], np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.asarray(_arviz().rhat(x, chain_axis=-2, draw_axis=-1, method="rank"), dtype=np.float64)
    constant = np.ptp(x.reshape(*x.shape[:-2], -1), axis=-1) == 0
    return np.where(constant, np.nan, r)


def bulk_tail_ess(x: np.ndarray) -> tuple[float, float]:
    """(bulk ESS, tail ESS) of (chains, draws) series, rank-normalized over split chains (Vehtari et al. 2021,
    from ArviZ; tail: the smaller of the 5% and 95% quantiles' ESS). NaN with fewer than MIN_ESS_DRAWS draws or a
    constant series."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < MIN_ESS_DRAWS or not np.ptp(x) > 0:
        return math.nan, math.nan
    az = _arviz()
    with np.errstate(invalid="ignore", divide="ignore"):
        bulk = float(az.ess(x, chain_axis=-2, draw_axis=-1, method="bulk"))
        tail = float(az.ess(x, chain_axis=-2, draw_axis=-1, method="tail", prob=(0.05, 0.95)))
    return bulk, tail


def _arviz():
    """ArviZ's array interface (arviz-stats: numpy and scipy only), imported on first use."""
    from arviz_stats.base import array_stats

    return array_stats


def _autocovariance(x: np.ndarray) -> np.ndarray:
    """(m, n) -> (m, n) biased autocovariance of each row at lags 0..n-1 (divided by n), via FFT."""
    m, n = x.shape
    c = x - x.mean(axis=1, keepdims=True)
    size = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(c, n=size, axis=1)
    return np.fft.irfft(f * np.conj(f), n=size, axis=1)[:, :n] / n


def ess(x: np.ndarray, split: bool = True) -> float:
    """Basic effective sample size of (chains, draws) series, without rank normalization (Stan's
    `posterior::ess_basic`: Geyer's initial monotone sequence over the multi-chain autocorrelation); `split` cuts
    chains in halves first. Kept beside ArviZ for the drift's τ, which needs the un-split estimator of detrended
    residuals (ArviZ's always splits); with split=True it is ArviZ's `ess(method="mean")` (tested).
    NaN with fewer than MIN_ESS_DRAWS draws or a constant series."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < MIN_ESS_DRAWS:
        return math.nan
    s = split_chains(x) if split else x
    m, n = s.shape
    acov = _autocovariance(s)  # (m, n)
    mean_var = float(acov[:, 0].mean()) * n / (n - 1)  # W: mean within-chain variance (ddof 1)
    var_plus = mean_var * (n - 1) / n + (float(s.mean(axis=1).var(ddof=1)) if m > 1 else 0.0)
    if not var_plus > 0:
        return math.nan
    rho = 1 - (mean_var - acov.mean(axis=0)) / var_plus  # (n,) autocorrelation at lags 0..n-1
    rho[0] = 1.0
    kept = np.zeros(n + 1)  # Stan's rho_hat_s, one slot of room for the bias term
    kept[:2] = rho[:2]
    even, odd = 1.0, rho[1]
    t = 1
    while t < n - 4 and even + odd > 0:  # Geyer's initial positive sequence, over pairs (t+1, t+2)
        even, odd = rho[t + 1], rho[t + 2]
        if even + odd >= 0:
            kept[t + 1], kept[t + 2] = even, odd
        t += 2
    max_t = t
    if even > 0:
        kept[max_t + 1] = even  # the last pair's even term: reduces variance for antithetic chains
    for u in range(1, max_t - 2, 2):  # initial monotone sequence: pair sums may only decrease
        if kept[u + 1] + kept[u + 2] > kept[u - 1] + kept[u]:
            kept[u + 1] = kept[u + 2] = (kept[u - 1] + kept[u]) / 2
    total = m * n
    tau = -1 + 2 * kept[:max_t].sum() + kept[max_t + 1]
    tau = max(tau, 1 / math.log10(total))
    return total / tau


def drift(series: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per chain of a (chains, draws) series: (z, change). z = OLS slope over the draw index / its standard error,
    SE² = τ·s²/Σ(t−t̄)² with s² the chain's residual variance and τ = C·D / ESS of the *detrended* residuals of
    all chains together (one autocorrelation time: steadier than each chain's own, and a trend would otherwise
    inflate its own error); change = slope·(D−1), the fitted rise over the chain. NaN with fewer than
    MIN_ESS_DRAWS draws; z is NaN for a constant chain."""
    x = np.asarray(series, dtype=np.float64)
    c, d = x.shape
    if d < MIN_ESS_DRAWS:
        return np.full(c, np.nan), np.full(c, np.nan)
    t = np.arange(d, dtype=np.float64) - (d - 1) / 2  # centered draw index
    stt = float((t * t).sum())
    xc = x - x.mean(axis=1, keepdims=True)
    slope = (xc * t).sum(axis=1) / stt  # (chains,)
    resid = xc - slope[:, None] * t  # (chains, draws)
    s2 = (resid**2).sum(axis=1) / (d - 2)  # (chains,)
    tau = c * d / ess(resid, split=False)  # NaN for constant residuals
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(s2 > 0, slope / np.sqrt(tau * s2 / stt), np.nan)
    return z, slope * (d - 1)


def combined_drift(z: np.ndarray) -> float:
    """Stouffer's Σz/√C over chains (NaN chains left out): about N(0, 1) for stationary chains."""
    z = np.asarray(z, dtype=np.float64)
    ok = np.isfinite(z)
    return float(z[ok].sum() / math.sqrt(ok.sum())) if ok.any() else math.nan


@dataclass(frozen=True)
class Gradient:
    """‖∇L(w*)‖ of the full training loss at the checkpoint, and the sampler's nβ and γ that turn it into the
    descent the localized posterior can make (`descent_sd`)."""

    norm: float
    nbeta: float
    gamma: float

    @property
    def descent_sd(self) -> float:
        """nβ‖∇L(w*)‖/√γ: how far below L(w*), in posterior SDs of the loss, the localized posterior's mean sits to
        first order. Near w* it is ≈ N(w* − Σnβg, Σ) with Σ = (nβH + γI)⁻¹, so the drop is nβ·gᵀΣg in loss units and
        nβ·√(gᵀΣg) in SDs, at most nβ‖g‖/√γ where H ⪰ 0 (a saddle can do more). NaN without localization (γ = 0)."""
        if not self.gamma > 0:
            return math.nan
        return self.nbeta * self.norm / math.sqrt(self.gamma)


# ----------------------------------------------------------------------------- rows of one checkpoint

COLUMNS = (
    "series", "observable", "chain", "chains", "draws", "rhat", "rhat_max", "rhat_median", "ess", "ess_tail",
    "lag1_autocorr", "ess_ar1", "drift", "change", "rise_sd", "grad_norm", "grad_sd",
)  # fmt: skip


def _num(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def series_rows(
    series: str,
    observable: str | None,
    mean: np.ndarray,
    per_sample: np.ndarray | None = None,
    init_loss: float | None = None,
    gradient: Gradient | None = None,
) -> list[dict]:
    """The rows of one series: one over all chains (chain None) and one per chain.

    mean: (chains, draws) the series (a chain's mean tracked loss per draw, or the minibatch loss);
    per_sample: (chains, draws, samples) the tracked samples' own traces, for R̂ max / median (None: not tracked);
    init_loss: the series' value at w* (the minibatch loss: L(w*)), for `rise_sd` (None: not known);
    gradient: ∇L at w* and the sampler's nβ, γ (the minibatch series), for `grad_norm` and `grad_sd`."""
    from .mixing import ar1_mixing

    mean = np.asarray(mean, dtype=np.float64)
    c, d = mean.shape
    z, change = drift(mean)
    rho, ess_ar1 = ar1_mixing(mean)
    rise = _rise_sd(mean, init_loss)  # (chains + 1,): over all chains, then per chain
    rhat_max = rhat_median = None
    if per_sample is not None and per_sample.shape[-1] > 0:
        r = split_rhat(np.moveaxis(np.asarray(per_sample, dtype=np.float64), -1, 0))  # (samples,)
        if np.isfinite(r).any():
            rhat_max, rhat_median = _num(np.nanmax(r)), _num(np.nanmedian(r))
    base = {"series": series, "observable": observable, "chains": c, "draws": d}
    bulk, tail = bulk_tail_ess(mean)
    per_chain = [bulk_tail_ess(mean[k : k + 1]) for k in range(c)]  # (bulk, tail) of each chain alone
    rows = [
        {
            **base,
            "chain": None,
            "rhat": _num(split_rhat(mean)),
            "rhat_max": rhat_max,
            "rhat_median": rhat_median,
            "ess": _num(bulk),
            "ess_tail": _num(tail),
            "lag1_autocorr": None,
            "ess_ar1": None,
            "drift": _num(combined_drift(z)),
            "change": _num(np.mean(change)),
            "rise_sd": _num(rise[0]),
            "grad_norm": None if gradient is None else _num(gradient.norm),
            "grad_sd": None if gradient is None else _num(gradient.descent_sd),
        }
    ]
    for k in range(c):
        rows.append(
            {
                **base,
                "chain": k,
                "rhat": None,
                "rhat_max": None,
                "rhat_median": None,
                "ess": _num(per_chain[k][0]),
                "ess_tail": _num(per_chain[k][1]),
                "lag1_autocorr": _num(rho[k]),
                "ess_ar1": _num(ess_ar1[k]),
                "drift": _num(z[k]),
                "change": _num(change[k]),
                "rise_sd": _num(rise[k + 1]),
                "grad_norm": None,
                "grad_sd": None,
            }
        )
    return rows


def _rise_sd(x: np.ndarray, init: float | None) -> np.ndarray:
    """(mean − init) / sd of a (chains, draws) series, over all chains then per chain, the sd always the pooled one
    (ddof 1 over all draws); NaN without init or for a constant series."""
    out = np.full(x.shape[0] + 1, np.nan)
    sd = float(x.std(ddof=1)) if x.size > 1 else 0.0
    if init is None or not math.isfinite(init) or not sd > 0:
        return out
    out[0] = (x.mean() - init) / sd
    out[1:] = (x.mean(axis=1) - init) / sd
    return out


def statistics(
    traces: dict[str, np.ndarray],
    batch_losses: np.ndarray,
    init_loss: float | None = None,
    gradient: Gradient | None = None,
) -> list[dict]:
    """Every screen row of one checkpoint: per observable (traces: name -> (chains, draws, n) or (chains, draws,
    n, T)), series "tracked", then the minibatch loss (chains, draws), series "minibatch" with observable None;
    init_loss = L(w*), the full training loss at the checkpoint (the minibatch rows' `rise_sd`); gradient: ∇L(w*)
    and the sampler's nβ, γ (the minibatch summary row's `grad_norm`, `grad_sd`)."""
    rows: list[dict] = []
    for name, arr in traces.items():
        c, d = arr.shape[:2]
        per_sample = arr.mean(axis=3, dtype=np.float64) if arr.ndim == 4 else arr  # per sequence: mean over T
        mean = arr.reshape(c, d, -1).astype(np.float64).mean(axis=2)  # (chains, draws)
        rows += series_rows("tracked", name, mean, per_sample)
    rows += series_rows("minibatch", None, batch_losses, None, init_loss, gradient)
    return rows


# ----------------------------------------------------------------------------- verdict


GEOMETRY, CONVERGENCE = "geometry", "convergence"


@dataclass(frozen=True)
class Finding:
    """One screen that did not pass, in words."""

    level: str  # warn or fail
    what: str  # "drift", "descent", "gradient", "rhat", "ess", "draws"
    text: str
    direction: int = 0  # drift and descent: +1 up, −1 down
    series: str = ""  # "tracked" or "minibatch"

    @property
    def kind(self) -> str:
        """GEOMETRY: the checkpoint is not a local minimum (a gradient at w*, sampled loss below L(w*), a minibatch
        loss that descends over the draws); CONVERGENCE: the chains at it have not converged (R̂, ESS, drift up or of
        a tracked series, too few draws). Each has its own remedy (`hint`)."""
        down = self.what == "drift" and self.direction < 0 and self.series == "minibatch"
        return GEOMETRY if self.what in ("descent", "gradient") or down else CONVERGENCE


def _label(row: dict) -> str:
    return "minibatch loss" if row.get("series") == "minibatch" else f"mean {row.get('observable')!r} loss"


def _finite(row: dict, col: str) -> bool:
    v = row.get(col)
    return v is not None and math.isfinite(v)


def _level(value: float, warn: float, fail: float, above: bool = True) -> str:
    if above:
        return FAIL if value > fail else WARN if value > warn else OK
    return FAIL if value < fail else WARN if value < warn else OK


def _drift_findings(summary: list[dict], th: Thresholds) -> list[Finding]:
    out = []
    for r in (r for r in summary if _finite(r, "drift")):
        z = r["drift"]
        level = _level(abs(z), th.drift_warn, th.drift_fail)
        if level != OK:
            by = f" (by {r['change']:+.3g} over the draws)" if _finite(r, "change") else ""
            text = f"{_label(r)} drifts {'up' if z > 0 else 'down'} {abs(z):.1f} SE{by}"
            out.append(Finding(level, "drift", text, 1 if z > 0 else -1, r.get("series", "")))
    return out


def _rhat_finding(summary: list[dict], cols: tuple[str, ...], threshold: float, level: str) -> Finding | None:
    """The largest R̂ among these columns of the summary rows, if above threshold."""
    found = [(r[c], r, c) for r in summary for c in cols if _finite(r, c)]
    if not found:
        return None
    v, r, col = max(found, key=lambda t: t[0])
    if v <= threshold:
        return None
    of = {"rhat": "", "rhat_median": ", median over samples", "rhat_max": ", max over samples"}[col]
    shown = f"{v:.4f}" if v < 1.1 else f"{v:.3f}"
    return Finding(level, "rhat", f"split-R̂ {shown} ({_label(r)}{of})", series=r.get("series", ""))


def _descent_finding(summary: list[dict], th: Thresholds) -> Finding | None:
    found = [r for r in summary if _finite(r, "rise_sd")]
    if not found:
        return None
    r = min(found, key=lambda r: r["rise_sd"])
    level = _level(-r["rise_sd"], th.descent_warn, th.descent_fail)
    if level == OK:
        return None
    return Finding(level, "descent", f"mean sampled {_label(r)} {-r['rise_sd']:.1f} SD below L(w*)", -1,
                   r.get("series", ""))  # fmt: skip


def _gradient_finding(summary: list[dict], th: Thresholds) -> Finding | None:
    """The gradient at w* (`Gradient.descent_sd`), judged with the descent thresholds: both are SDs below L(w*)."""
    found = [r for r in summary if _finite(r, "grad_sd")]
    if not found:
        return None
    r = max(found, key=lambda r: r["grad_sd"])
    level = _level(r["grad_sd"], th.descent_warn, th.descent_fail)
    if level == OK:
        return None
    norm = f"‖∇L(w*)‖ {r['grad_norm']:.3g}" if _finite(r, "grad_norm") else "the gradient at w*"
    return Finding(level, "gradient", f"{norm} lets the posterior sit {r['grad_sd']:.1f} SD below L(w*)", -1,
                   r.get("series", ""))  # fmt: skip


def _ess_per_chain(r: dict) -> float:
    """The all-chains ESS (the smaller of bulk and tail) divided by the number of chains: what Vehtari et al.'s
    "100 per chain" holds."""
    tail = r.get("ess_tail")
    low = min(r["ess"], tail) if tail is not None and math.isfinite(tail) else r["ess"]
    return low / max(r.get("chains") or 1, 1)


def _ess_finding(summary: list[dict], th: Thresholds) -> Finding | None:
    """The smallest ESS per chain among the series, against ess_warn / ess_fail (per chain)."""
    found = [r for r in summary if _finite(r, "ess")]
    if not found:
        return None
    r = min(found, key=_ess_per_chain)
    level = _level(_ess_per_chain(r), th.ess_warn, th.ess_fail, above=False)
    if level == OK:
        return None
    c, d = r.get("chains") or 0, r.get("draws") or 0
    which = "tail" if _finite(r, "ess_tail") and r["ess_tail"] < r["ess"] else "bulk"
    total = _ess_per_chain(r) * max(c, 1)
    text = f"{which}-ESS {_ess_per_chain(r):.0f} per chain ({total:.0f} of {c} × {d} draws, {_label(r)})"
    return Finding(level, "ess", text, series=r.get("series", ""))


def findings(rows: list[dict], thresholds: Thresholds = DEFAULT_THRESHOLDS) -> list[Finding]:
    """What is wrong with one checkpoint's chains, worst first. rows: its `statistics` (or `diagnostics` view rows,
    any extra columns ignored); only the all-chains rows (chain None) are judged.

    R̂: the series' own R̂ and the median over tracked samples decide a warning; the max over samples only a
    failure (the max of many noisy R̂s grows with their number)."""
    th = thresholds
    summary = sorted(  # a fixed order, whatever order the rows come in (SQL)
        (r for r in rows if r.get("chain") is None),
        key=lambda r: (r.get("series") != "tracked", r.get("observable") or ""),
    )
    out = _drift_findings(summary, th)
    rhat = _rhat_finding(summary, ("rhat", "rhat_median", "rhat_max"), th.rhat_fail, FAIL)
    out += [
        f
        for f in (
            rhat or _rhat_finding(summary, ("rhat", "rhat_median"), th.rhat_warn, WARN),
            _descent_finding(summary, th),
            _gradient_finding(summary, th),
            _ess_finding(summary, th),
        )
        if f is not None
    ]
    draws = max((r.get("draws") or 0 for r in summary), default=0)
    if not summary or draws < MIN_ESS_DRAWS:
        out.append(Finding(WARN, "draws", f"too few draws ({draws}) to screen"))
    elif not all(_finite(r, "drift") for r in summary):
        still = ", ".join(_label(r) for r in summary if not _finite(r, "drift"))
        out.append(Finding(WARN, "draws", f"{still}: constant over the draws, not screened"))
    return sorted(out, key=lambda f: -_LEVEL[f.level])


def verdict(rows: list[dict], thresholds: Thresholds = DEFAULT_THRESHOLDS) -> tuple[str, str]:
    """(verdict, reason) of one checkpoint: "ok" / "warn" / "fail" and its findings in words ("" when ok), the
    geometry findings ("not a local minimum: ...") before the convergence ones ("not converged: ...")."""
    found = findings(rows, thresholds)
    if not found:
        return OK, ""
    parts = []
    for kind, head in ((GEOMETRY, "not a local minimum"), (CONVERGENCE, "not converged")):
        texts = [f.text for f in found if f.kind == kind]
        if texts:
            parts.append(f"{head}: " + "; ".join(texts))
    return found[0].level, "; ".join(parts)


def verdicts(rows: list[dict], thresholds: Thresholds = DEFAULT_THRESHOLDS) -> dict[str, str]:
    """The worst level of each kind of finding: {"geometry": ..., "convergence": ...}, each ok / warn / fail."""
    found = findings(rows, thresholds)
    return {
        kind: max((f.level for f in found if f.kind == kind), key=_LEVEL.__getitem__, default=OK)
        for kind in (GEOMETRY, CONVERGENCE)
    }


GEOMETRY_HINT = (
    "the checkpoint is not a local minimum: SGLD moves to lower loss next to it (the LLC reads low, often negative), "
    "and influence here mixes that descent with the posterior; read influence at minima (plateaus, the end of "
    "training), or a larger γ keeps chains near w*"
)


def hint(rows: list[dict], thresholds: Thresholds = DEFAULT_THRESHOLDS) -> str:
    """What to try: for a checkpoint that is not a local minimum, that (more sampling does not help); for chains
    that have not converged, the remedy of the worst convergence finding."""
    found = findings(rows, thresholds)
    parts = [GEOMETRY_HINT] if any(f.kind == GEOMETRY for f in found) else []
    rest = [f for f in found if f.kind == CONVERGENCE]
    if rest:
        parts.append(_convergence_hint(rest[0]))
    return "; then ".join(parts)


def _convergence_hint(worst: Finding) -> str:
    if worst.what == "drift":
        return "chains are still equilibrating: more burn-in (sampler.burn_in), or a smaller ε"
    if worst.what == "rhat":
        return "chains disagree: more burn-in and draws, a larger γ to keep chains near w*, or a smaller ε"
    if worst.what == "ess":
        return "consecutive draws are correlated: more draws or steps_between_draws (or a larger ε, keeping ε·γ/2 ≪ 1)"
    return "more draws (sampler.draws)"
