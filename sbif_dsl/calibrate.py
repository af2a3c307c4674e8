"""`sbif calibrate`: sweep sampler settings (ε × γ × nβ × method, or any sampler field) at one checkpoint and
report, per setting, the LLC with its spread over chains, stationarity of the loss trace, the MALA acceptance
estimate and divergences; then recommend a setting and say why.

Each grid point is a cached stage keyed like a sample stage (resolved sampler settings, seed, dtype, device,
the checkpoint and dataset keys; same seed too, so the spec's own setting reproduces its sample stage's chains).
The stages belong to no spec: they are registered under the pseudo-study '<study>:calibrate', which `cache gc`
keeps and the `calibration`, `calibration_chains` and `calibration_draws` views read.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import yaml
from pydantic import ValidationError

from .errors import UsageError
from .sampling.diagnostics import STATIONARY_MAX_DRIFT
from .spec.models import Sampler
from .stages.base import Stage
from .stages.calibration import CALIBRATION_SUFFIX, build_stage, fmt

MIN_ACCEPTANCE = 0.9  # below this the unadjusted chain differs noticeably from an exact one (discretization bias)
GRID_ORDER = ["method", "eps", "gamma", "nbeta"]


# ----------------------------------------------------------------------------- the grid


def parse_grid(items: list[str], methods: str | None) -> dict[str, list]:
    """['eps=1e-5,1e-4', 'gamma=1e3'] -> {'eps': [1e-5, 1e-4], 'gamma': [1000.0]} (values parsed as YAML)."""
    grid: dict[str, list] = {}
    allowed = sorted(f for f in Sampler.model_fields if f != "auto")  # the auto policy is a block, not a value
    for item in [*items, *([f"method={methods}"] if methods else [])]:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not values.strip():
            raise UsageError(f"--grid {item!r}: expected KEY=V1,V2,... e.g. eps=1e-5,1e-4")
        if key not in allowed:
            raise UsageError(f"--grid {item!r}: {key!r} is not a sampler field; fields: {', '.join(allowed)}")
        parsed = []
        for text in values.split(","):
            try:
                parsed.append(yaml.safe_load(text.strip()))
            except yaml.YAMLError:
                parsed.append(text.strip())
        grid[key] = parsed
    return grid


@dataclass
class GridPoint:
    overrides: dict
    sampler: Sampler | None = None  # None when the combination is invalid
    problem: str = ""
    stage: Stage | None = None
    summary: dict = field(default_factory=dict)

    def label(self) -> str:
        return " ".join(f"{k}={_fmt(v)}" for k, v in self.overrides.items())


def expand(base: Sampler, grid: dict[str, list]) -> list[GridPoint]:
    """Cartesian product in a fixed key order; each point is validated as a whole sampler block."""
    keys = [k for k in GRID_ORDER if k in grid] + [k for k in grid if k not in GRID_ORDER]
    points = []
    for values in itertools.product(*(grid[k] for k in keys)):
        overrides = dict(zip(keys, values, strict=True))
        try:
            sampler = Sampler.model_validate({**base.model_dump(), **overrides})
            if sampler.adaptive:
                fixed = "calibration scores fixed settings: give eps and draws numbers (e.g. --grid eps=1e-5 draws=400)"
                points.append(GridPoint(overrides, None, f"eps/draws auto: {fixed}"))
                continue
            points.append(GridPoint(overrides, sampler))
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "sampler"
            points.append(GridPoint(overrides, None, f"{where}: {err['msg']}".replace("Value error, ", "")))
    return points


def default_grid(base: Sampler) -> dict[str, list]:
    """Without --grid: the spec's ε, a tenth of it and ten times it (eps: auto has no value to sweep around)."""
    if base.eps == "auto":
        raise UsageError("the spec's sampler.eps is auto: give values to score, e.g. --grid eps=1e-6,1e-5 draws=400")
    return {"eps": [base.eps / 10, base.eps, base.eps * 10]}


# ----------------------------------------------------------------------------- recommendation


def verdict(s: dict) -> list[str]:
    """Why a setting is not healthy (empty: healthy)."""
    why = []
    if s["divergences"]:
        why.append(f"{s['divergences']} chain(s) diverged")
    if not s["stationary"]:
        why.append(
            f"loss trace drifts (trend {s['trend']:+.2f}, half shift {s['half_shift']:+.2f} std; "
            f"limit ±{STATIONARY_MAX_DRIFT})"
        )
    if not (s["llc_mean"] > 0):
        why.append("LLC <= 0 (chains found lower loss than the checkpoint: not a local minimum at this nβ, γ)")
    if not (s["acceptance"] >= MIN_ACCEPTANCE):
        why.append(f"MALA acceptance {s['acceptance']:.3f} < {MIN_ACCEPTANCE} (step too large for the curvature)")
    return why


def recommend(points: list[GridPoint]) -> tuple[GridPoint | None, list[str]]:
    """Healthy settings (no divergence, stationary, LLC > 0, acceptance >= 0.9); among them the smallest γ (least
    localization bias), then the largest ε (fastest mixing per step), then the smallest relative LLC spread over
    chains. Sampler health cannot choose nβ (a modelling choice) nor tell how much γ a BIF study wants; the table
    shows what each costs. If only the LLC check fails everywhere
    (a checkpoint mid-training), the most local (highest LLC) stable setting with good acceptance. Returns
    (choice, explanation lines)."""
    ran = [p for p in points if p.summary]
    healthy = [p for p in ran if not verdict(p.summary)]
    if healthy:

        def rel_std(p: GridPoint) -> float:
            s = p.summary
            return s["llc_std"] / abs(s["llc_mean"]) if s["llc_mean"] and not math.isnan(s["llc_std"]) else math.inf

        best = max(healthy, key=lambda p: (-p.sampler.gamma, p.sampler.eps, -rel_std(p)))
        s = best.summary
        return best, [
            f"{len(healthy)} of {len(ran)} settings are healthy (no divergence, stationary loss trace, LLC > 0, "
            f"MALA acceptance >= {MIN_ACCEPTANCE}).",
            "Among them: the weakest localization γ (it pulls the posterior, and the LLC, least towards w*), then the "
            "largest step size (fastest mixing per step), then the smallest LLC spread over chains "
            f"(here std/mean = {rel_std(best):.3f}).",
            f"LLC {s['llc_mean']:.4g} ± {s['llc_std']:.2g}, acceptance {s['acceptance']:.3f}, trend {s['trend']:+.2f}.",
        ]
    stable = [p for p in ran if not p.summary["divergences"] and p.summary["stationary"]]
    accepted = [p for p in stable if p.summary["acceptance"] >= MIN_ACCEPTANCE]
    if accepted:  # only the LLC check fails: the checkpoint is not a local minimum (training still moves here)
        best = max(accepted, key=lambda p: p.summary["llc_mean"])
        return best, [
            "No setting has LLC > 0: the chains descend from this checkpoint, so it is not a local minimum at these "
            "settings (expected mid-training; the LLC is then not meaningful, the BIF still is).",
            f"This is the most local (highest LLC, {best.summary['llc_mean']:.4g}) of the stable, stationary settings "
            f"with MALA acceptance >= {MIN_ACCEPTANCE}: weak localization lets chains drift to other phases.",
        ]
    if stable:
        best = max(stable, key=lambda p: p.summary["acceptance"])
        return best, [
            "No setting passes every check; this is the stable, stationary one with the highest MALA acceptance.",
            f"Its problems: {'; '.join(verdict(best.summary))}.",
            "Hint: add smaller eps values (acceptance) or larger gamma (localization) to the grid.",
        ]
    return None, ["No setting is both finite and stationary. Hint: smaller eps, larger gamma, more burn_in."]


# ----------------------------------------------------------------------------- orchestration


@dataclass
class Calibration:
    step: int
    points: list[GridPoint]
    choice: GridPoint | None
    why: list[str]
    ran: int


def pick_checkpoint(checkpoints: list[Stage], step: int | None) -> Stage:
    steps = [c.step for c in checkpoints]
    if step is None:
        return checkpoints[-1]
    for c in checkpoints:
        if c.step == step:
            return c
    raise UsageError(f"--checkpoint {step}: not a checkpoint of this spec; steps: {', '.join(map(str, steps))}")


def calibrate(rt, store, grid: dict[str, list], step: int | None = None, report=None, backend=None) -> Calibration:
    """Run the missing grid-point stages (and the checkpoint they need); call inside `store.writer()`."""
    from .executor import run_stages
    from .plan import checkpoint_stages
    from .stages import dataset

    ds = dataset.build(rt)
    checkpoints = checkpoint_stages(rt, store, ds.key)
    ckpt = pick_checkpoint(checkpoints, step)
    points = expand(rt.study.sampler, grid or default_grid(rt.study.sampler))
    seen: dict[str, Stage] = {}
    for p in points:
        if p.sampler is not None:
            p.stage = seen.setdefault((st := build_stage(rt, ckpt, ds.key, p.sampler)).key, st)
    upstream = [ds, *checkpoints[: checkpoints.index(ckpt) + 1]]  # training resumes through earlier checkpoints
    done = store.complete_keys([s.key for s in [*upstream, *seen.values()]])
    needed = _needed(ckpt, upstream, done) + [s for s in seen.values() if s.key not in done]
    summary = run_stages(rt, store, needed, report=report, backend=backend)
    store.add_to_study(rt.study.name + CALIBRATION_SUFFIX, [ds.key, ckpt.key, *seen])
    summaries = store.rows("r_calibration", list(seen), SUMMARY_COLUMNS)
    for p in points:
        if p.stage is not None:
            p.summary = {c: (math.nan if v is None else v) for c, v in summaries[p.stage.key].items()}
    choice, why = recommend(points)
    return Calibration(ckpt.step, points, choice, why, len(summary.ran))


def _needed(target: Stage, upstream: list[Stage], done: set[str]) -> list[Stage]:
    """The uncached stages `target` needs, through warm starts and inputs, in plan order."""
    by_key = {s.key: s for s in upstream}
    want: set[str] = set()
    stack = [target.key]
    while stack:
        key = stack.pop()
        if key in done or key in want or key not in by_key:
            continue
        want.add(key)
        stack.extend(by_key[key].needs())
    return [s for s in upstream if s.key in want]


SUMMARY_COLUMNS = ["llc_mean", "llc_std", "trend", "half_shift", "stationary", "acceptance", "divergences"]


# ----------------------------------------------------------------------------- printing

_fmt = fmt


def format_table(cal: Calibration) -> list[str]:
    keys = list(cal.points[0].overrides) if cal.points else []
    head = "  ".join(f"{k:>12s}" for k in keys)
    cols = f"{'llc':>10s} {'± std':>9s}  {'trend':>6s} {'shift':>6s} {'stat':>4s}  {'accept':>6s} {'div':>3s}"
    lines = [f"{head}  {cols}  verdict"]
    for p in cal.points:
        vals = "  ".join(f"{_fmt(p.overrides[k]):>12s}" for k in keys)
        if not p.summary:
            lines.append(f"{vals}  skipped: {p.problem}")
            continue
        s = p.summary
        problems = "; ".join(v.split(" (")[0] for v in verdict(s))
        mark = "<- recommended" if p is cal.choice else (problems or "ok")
        lines.append(
            f"{vals}  {s['llc_mean']:10.4g} {s['llc_std']:9.2g}  {s['trend']:+6.2f} {s['half_shift']:+6.2f} "
            f"{'yes' if s['stationary'] else 'no':>4s}  {s['acceptance']:6.3f} {s['divergences']:3d}  {mark}"
        )
    return lines


def format_recommendation(cal: Calibration) -> list[str]:
    if cal.choice is None:
        return ["recommendation: none", *[f"  {w}" for w in cal.why]]
    p = cal.choice
    sets = " ".join(f"--set sampler.{k}={_fmt(v)}" for k, v in p.overrides.items())
    return [f"recommendation: {p.label()}", *[f"  {w}" for w in cal.why], f"  apply with: {sets}"]
