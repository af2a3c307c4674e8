"""The DSL: frozen Pydantic models of a study spec. Every field has a description; they feed `sbif schema`."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.\-]*$"
FACTORY_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"
DEFAULT_ITEMS = ["dog", "cat", "sparrow", "robin", "lily", "rose", "oak", "pine"]


class Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------- data


class HierarchyData(Base):
    """Saxe-style hierarchy: items are leaves of a tree; binary features hang on the tree's nodes."""

    kind: Literal["hierarchy"] = Field(description="Built-in hierarchical toy data (SCIENCE.md §5).")
    branching: list[Annotated[int, Field(ge=1, le=16)]] = Field(
        default=[2, 2, 2], min_length=1, max_length=6, description="Children per node at each level below the root."
    )
    features_per_level: list[Annotated[int, Field(ge=0, le=64)]] = Field(
        default=[4, 3, 2, 1],
        description="Binary features attached to each node, from the root (shared by all items) to the leaves; "
        "length = len(branching) + 1.",
    )
    item_names: list[str] | None = Field(
        default=None, description="Names of the items (leaves), left to right. Default: dog, cat, sparrow, ... "
    )
    query_sets: dict[str, list[str]] = Field(
        default_factory=dict, description="Named query sets: subsets of items, by name, that observables can track."
    )

    @model_validator(mode="after")
    def _shapes_agree(self) -> HierarchyData:
        if len(self.features_per_level) != len(self.branching) + 1:
            raise ValueError(
                f"features_per_level needs {len(self.branching) + 1} entries (one per level incl. root and leaves), "
                f"got {len(self.features_per_level)}"
            )
        n_items = math.prod(self.branching)
        if self.item_names is not None and len(self.item_names) != n_items:
            raise ValueError(f"item_names needs {n_items} names (product of branching), got {len(self.item_names)}")
        if self.item_names is not None and len(set(self.item_names)) != len(self.item_names):
            raise ValueError("item_names must be unique")
        return self

    def names(self) -> list[str]:
        n = math.prod(self.branching)
        if self.item_names is not None:
            return list(self.item_names)
        if self.branching == [2, 2, 2]:
            return list(DEFAULT_ITEMS)
        return [f"item{i}" for i in range(n)]


class PythonData(Base):
    """User data: `factory(**options)` returns an `sbif_dsl.task.Dataset`."""

    kind: Literal["python"] = Field(description="Data built by user code.")
    factory: str = Field(pattern=FACTORY_PATTERN, description="Import path 'package.module:function'.")
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the factory.")


Data = Annotated[HierarchyData | PythonData, Field(discriminator="kind")]


# ----------------------------------------------------------------------------- models


class DeepLinearModel(Base):
    """A deep linear network x -> W_L ... W_1 x (SCIENCE.md §5); widths of input/output come from the data."""

    kind: Literal["deep_linear"] = Field(description="Built-in deep linear network.")
    hidden: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default=[16], min_length=1, description="Widths of the hidden layers."
    )
    init_scale: float = Field(default=1e-3, gt=0, description="Std of the Gaussian initialisation (small = stagewise).")
    bias: bool = Field(default=False, description="Add bias terms to each layer.")


class PythonModel(Base):
    """User model: `factory(dataset, **options)` returns a torch.nn.Module whose forward takes the inputs."""

    kind: Literal["python"] = Field(description="Model built by user code.")
    factory: str = Field(pattern=FACTORY_PATTERN, description="Import path 'package.module:function'.")
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the factory.")


Model = Annotated[DeepLinearModel | PythonModel, Field(discriminator="kind")]


# ----------------------------------------------------------------------------- checkpoints


class CheckpointSchedule(Base):
    """Which training steps are saved: explicit steps, or N log-spaced steps between 1 and the last step."""

    steps: list[Annotated[int, Field(ge=0)]] | None = Field(default=None, description="Explicit steps to save.")
    log_spaced: int | None = Field(default=None, ge=2, le=10000, description="Number of log-spaced checkpoints.")
    include_zero: bool = Field(default=True, description="Also save step 0 (the initialisation).")

    @model_validator(mode="after")
    def _one_kind(self) -> CheckpointSchedule:
        if (self.steps is None) == (self.log_spaced is None):
            raise ValueError("give exactly one of 'steps' or 'log_spaced'")
        return self


class Training(Base):
    """Train the model in-spec from a seeded initialisation, saving checkpoints on a schedule."""

    optimizer: Literal["sgd", "adam", "adamw"] = Field(default="sgd", description="Optimizer.")
    lr: float = Field(default=0.05, gt=0, description="Learning rate.")
    momentum: float = Field(default=0.0, ge=0, lt=1, description="SGD momentum.")
    weight_decay: float = Field(default=0.0, ge=0, description="Weight decay.")
    steps: int = Field(default=3000, ge=1, le=10_000_000, description="Number of optimizer steps.")
    batch_size: int | None = Field(default=None, ge=1, description="Minibatch size; null = full batch.")
    log_every: int | None = Field(
        default=None, ge=1, description="Record the training loss every N steps (null: about 1000 points)."
    )
    checkpoints: CheckpointSchedule = Field(description="Which steps to save as checkpoints.")

    @model_validator(mode="after")
    def _steps_in_range(self) -> Training:
        bad = [s for s in (self.checkpoints.steps or []) if s > self.steps]
        if bad:
            raise ValueError(f"checkpoint steps {bad} exceed training.steps={self.steps}")
        return self

    def checkpoint_steps(self) -> list[int]:
        if self.checkpoints.steps is not None:
            steps = set(self.checkpoints.steps)
        else:
            n = self.checkpoints.log_spaced
            steps = {round(math.exp(math.log(self.steps) * i / (n - 1))) for i in range(n)}
        if self.checkpoints.include_zero:
            steps.add(0)
        return sorted(steps)


class LoadedCheckpoints(Base):
    """Checkpoints loaded from local files; the step is parsed from each path."""

    glob: str = Field(description="Glob of checkpoint files (state_dict .pt), relative to the spec file.")
    step_pattern: str = Field(
        default=r"(\d+)", description="Regex applied to the file name; its first group is the step."
    )

    @field_validator("step_pattern")
    @classmethod
    def _has_group(cls, v: str) -> str:
        import re

        try:
            if re.compile(v).groups < 1:
                raise ValueError("step_pattern needs one capturing group, e.g. 'step(\\d+)'")
        except re.error as e:
            raise ValueError(f"step_pattern is not a valid regex: {e}") from None
        return v


# ----------------------------------------------------------------------------- sampling and analyses


class Observable(Base):
    """A sample set whose per-sample losses are recorded at every SGLD draw."""

    name: str = Field(pattern=NAME_PATTERN, description="Name used by analyses and in SQL.")
    data: str = Field(default="train", description="'train' or the name of a query set of the data.")


class Sampler(Base):
    """SGLD / RMSProp-SGLD around each checkpoint (SCIENCE.md §2)."""

    method: Literal["sgld", "rmsprop_sgld"] = Field(default="sgld", description="Sampler update rule.")
    eps: float = Field(default=1e-5, gt=0, le=1, description="Step size ε.")
    gamma: float = Field(default=1e5, ge=0, description="Localization strength γ.")
    nbeta: float | None = Field(default=None, gt=0, description="Inverse temperature nβ; null = B/ln B.")
    chains: int = Field(default=8, ge=1, le=4096, description="Independent chains (run stacked).")
    draws: int = Field(default=400, ge=2, le=1_000_000, description="Recorded draws per chain.")
    burn_in: int = Field(default=100, ge=0, description="Steps before the first draw.")
    steps_between_draws: int = Field(default=1, ge=1, description="SGLD steps per recorded draw.")
    batch_size: int | None = Field(default=None, ge=1, description="Minibatch size; null = full batch.")
    noise_level: float = Field(default=1.0, ge=0, description="Noise σ (1 keeps the sampling guarantee).")
    weight_decay: float = Field(default=0.0, ge=0, description="λ, an extra pull towards 0.")
    rmsprop_alpha: float = Field(default=0.99, gt=0, lt=1, description="RMSProp decay α.")
    rmsprop_eps: float = Field(default=0.1, gt=0, description="RMSProp eps.")

    @model_validator(mode="after")
    def _stable_localization(self) -> Sampler:
        pull = self.eps * self.gamma / 2
        if self.method == "sgld" and pull >= 1:
            raise ValueError(
                f"eps*gamma/2 = {pull:g} >= 1: the localization step overshoots and chains diverge; "
                "use a smaller eps or gamma"
            )
        return self


class BifAnalysis(Base):
    """BIF = -Cov(l_source, l_target) and -Corr over pooled draws (negative = helpful)."""

    kind: Literal["bif"] = Field(description="Bayesian influence function.")
    name: str | None = Field(default=None, pattern=NAME_PATTERN, description="Name in SQL (default 'bif').")
    source: str = Field(default="train", description="Observable whose samples exert influence.")
    target: str | None = Field(default=None, description="Observable influenced (default: source).")
    normalize: Literal["none", "pearson"] = Field(
        default="pearson", description="Which value fills the `value` column: -Cov (none) or -Corr (pearson)."
    )


class LlcAnalysis(Base):
    """Local learning coefficient per checkpoint and chain (SCIENCE.md §3)."""

    kind: Literal["llc"] = Field(description="Local learning coefficient.")
    name: str | None = Field(default=None, pattern=NAME_PATTERN, description="Name in SQL (default 'llc').")


class LossKernelAnalysis(Base):
    """Loss kernel: Cov and Corr of an observable's losses with themselves (positive sign)."""

    kind: Literal["loss_kernel"] = Field(description="Loss kernel (arXiv 2509.26537).")
    name: str | None = Field(default=None, pattern=NAME_PATTERN, description="Name in SQL.")
    observable: str = Field(default="train", description="Observable to correlate with itself.")


Analysis = Annotated[BifAnalysis | LlcAnalysis | LossKernelAnalysis, Field(discriminator="kind")]


def analysis_name(a: Any) -> str:
    return a.name or a.kind


# ----------------------------------------------------------------------------- report (cosmetic: never keyed)


class DetectSettings(Base):
    """Transition detection parameters used by the report (see sbif_dsl.report.DetectParams)."""

    prominence: float = Field(default=0.2, gt=0, le=1, description="Peak prominence, relative to the curve range.")
    min_abs: float = Field(default=0.0, ge=0, description="Sign changes must leave the band ±min_abs around 0.")
    min_rel: float = Field(default=0.05, ge=0, le=1, description="... or ±min_rel × the curve's max |value|.")
    min_run: int = Field(default=2, ge=1, le=20, description="Checkpoints a sign must persist on each side.")
    noise_k: float = Field(default=3.0, ge=0, description="Noise floor in robust noise sigmas (0 = off).")
    curve_smooth: int = Field(default=1, ge=1, le=50, description="Moving average over checkpoints (1 = off).")
    min_change: float = Field(default=0.05, ge=0, le=1, description="Changepoints: minimum change, relative.")
    merge_decades: float = Field(default=0.1, ge=0, description="Events closer than this (decades) merge.")
    value: Literal["bif_corr", "bif_cov"] = Field(default="bif_corr", description="Influence column to analyse.")


class ReportSection(Base):
    """A user section: a SQL query over the views and a chart."""

    title: str = Field(description="Section heading.")
    sql: str = Field(min_length=1, description="SQL over the documented views.")
    chart: Literal["line", "heatmap", "bar", "table"] = Field(default="table", description="Chart type.")
    x: str | None = Field(default=None, description="Column for the x encoding.")
    y: str | None = Field(default=None, description="Column for the y encoding.")
    color: str | None = Field(default=None, description="Column for colour.")
    log_x: bool = Field(default=False, description="Log-scale the x axis.")


class Report(Base):
    """What the HTML report shows. Cosmetic: changing it recomputes nothing."""

    title: str | None = Field(default=None, description="Report title (default: the study title or name).")
    pairs: list[tuple[str, str]] = Field(
        default_factory=list, description="Sample pairs [source, target] whose influence trajectories are plotted."
    )
    heatmap_steps: list[int] | None = Field(
        default=None, description="Checkpoint steps for BIF heatmaps (default: a few spread over training)."
    )
    detect: DetectSettings = Field(default_factory=DetectSettings, description="Transition detection.")
    sections: list[ReportSection] = Field(default_factory=list, description="User sections.")


# ----------------------------------------------------------------------------- study


class Study(Base):
    """One study: model, checkpoints, data, observables, sampler, analyses and report."""

    name: str = Field(pattern=NAME_PATTERN, description="Study name; how SQL views refer to it.")
    title: str | None = Field(default=None, description="Human title (cosmetic).")
    description: str | None = Field(default=None, description="Free text (cosmetic).")
    seed: int = Field(default=0, ge=0, lt=2**63, description="Study seed; every stage's seed derives from it.")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto = CUDA when present.")
    dtype: Literal["float32", "float64"] = Field(default="float32", description="Floating dtype of weights.")
    model: Model = Field(description="The model.")
    data: Data = Field(description="The data.")
    training: Training | None = Field(default=None, description="Train in-spec (or give `checkpoints`).")
    checkpoints: LoadedCheckpoints | None = Field(default=None, description="Load checkpoints from files.")
    observables: list[Observable] = Field(
        default_factory=lambda: [Observable(name="train", data="train")],
        min_length=1,
        description="Sample sets tracked at every draw.",
    )
    sampler: Sampler = Field(default_factory=Sampler, description="SGLD settings.")
    analyses: list[Analysis] = Field(
        default_factory=lambda: [BifAnalysis(kind="bif"), LlcAnalysis(kind="llc")],
        description="Analyses per checkpoint.",
    )
    report: Report = Field(default_factory=Report, description="HTML report settings (cosmetic).")

    @model_validator(mode="after")
    def _one_checkpoint_source(self) -> Study:
        if (self.training is None) == (self.checkpoints is None):
            raise ValueError("give exactly one of 'training' (train in-spec) or 'checkpoints' (load from files)")
        return self
