"""The DSL: frozen Pydantic models of a study spec. Every field has a description; they feed `sbif schema`."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal, Union

from pydantic import BeforeValidator, Field, field_validator, model_validator

from ..keyed import FACTORY_PATTERN, NAME_PATTERN, Base

DEFAULT_ITEMS = ["dog", "cat", "sparrow", "robin", "lily", "rose", "oak", "pine"]

# ----------------------------------------------------------------------------- field types and bounds
# Numbers: an integer field takes an integer only (3; not 3.0, '3' or true). A float field takes any finite number
# or a numeric string (PyYAML reads 1e-5, without a dot, as the string '1e-5'), never true/false.
# Every count and size has an upper bound and every string a length bound, so no spec asks for the absurd.

MAX_NAME = 128  # names: studies, observables, analyses, query sets, items, token classes
MAX_TEXT = 256  # titles, paths, factories, column names
MAX_STEPS = 10_000_000  # as Training.steps
MAX_ITEMS = 1024  # hierarchy leaves (the demo has 8)


def _number(v: Any) -> Any:
    """A float field's input: numbers and numeric strings, never a bool, NaN or infinity."""
    if isinstance(v, bool):
        raise ValueError("expected a number, not true/false")
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return v  # "expected a number (got 'abc')"
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError("expected a finite number, not NaN or infinity")
    return v


Float = Annotated[float, BeforeValidator(_number), Field(strict=True)]
Bool = Annotated[bool, Field(strict=True)]
Name = Annotated[str, Field(max_length=MAX_NAME)]
Step = Annotated[int, Field(ge=0, le=MAX_STEPS, strict=True)]
SpanLength = Annotated[int, Field(ge=1, le=4096, strict=True)]


def _compile(v: str) -> Any:
    import re

    try:
        return re.compile(v)
    except re.error as e:
        raise ValueError(f"not a valid regex: {e}") from None
    except (RecursionError, OverflowError):
        raise ValueError("not a valid regex: nested too deeply") from None


# ----------------------------------------------------------------------------- data


class HierarchyData(Base):
    """Saxe-style hierarchy: items are leaves of a tree; binary features hang on the tree's nodes."""

    KEYED = ("kind", "branching", "features_per_level", "item_names", "query_sets")

    kind: Literal["hierarchy"] = Field(description="Built-in hierarchical toy data (SCIENCE.md §5).")
    branching: list[Annotated[int, Field(ge=1, le=16, strict=True)]] = Field(
        default=[2, 2, 2], min_length=1, max_length=6, description="Children per node at each level below the root."
    )
    features_per_level: list[Annotated[int, Field(ge=0, le=64, strict=True)]] = Field(
        default=[4, 3, 2, 1],
        max_length=7,
        description="Binary features attached to each node, from the root (shared by all items) to the leaves; "
        "length = len(branching) + 1.",
    )
    item_names: list[Name] | None = Field(
        default=None,
        max_length=MAX_ITEMS,
        description="Names of the items (leaves), left to right. Default: dog, cat, sparrow, ... ",
    )
    query_sets: dict[Name, list[Name]] = Field(
        default_factory=dict,
        max_length=256,
        description="Named query sets: subsets of items, by name, that observables can track.",
    )

    @model_validator(mode="after")
    def _shapes_agree(self) -> HierarchyData:
        if len(self.features_per_level) != len(self.branching) + 1:
            raise ValueError(
                f"features_per_level needs {len(self.branching) + 1} entries (one per level incl. root and leaves), "
                f"got {len(self.features_per_level)}"
            )
        n_items = math.prod(self.branching)
        if n_items > MAX_ITEMS:
            raise ValueError(f"branching {self.branching} makes {n_items} items; at most {MAX_ITEMS}")
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

    KEYED = ("kind", "factory", "options")

    kind: Literal["python"] = Field(description="Data built by user code.")
    factory: str = Field(
        pattern=FACTORY_PATTERN, max_length=MAX_TEXT, description="Import path 'package.module:function'."
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the factory.")


class TokenizerSpec(Base):
    """Built-in byte-level tokenizer, or a local Hugging Face tokenizer.json (never downloaded)."""

    KEYED = ("kind", "path")

    kind: Literal["byte", "hf"] = Field(default="byte", description="byte = UTF-8 bytes; hf = tokenizer.json file.")
    path: str | None = Field(
        default=None, max_length=4096, description="Local tokenizer.json (kind: hf), relative to the spec."
    )

    @model_validator(mode="after")
    def _path_for_hf(self) -> TokenizerSpec:
        if self.kind == "hf" and not self.path:
            raise ValueError("tokenizer kind 'hf' needs a local 'path' to tokenizer.json")
        return self


class SyntheticLanguageData(Base):
    """Seeded text with known structure: Zipfian words, delimiters, code-like lines, numbers, and a random
    span repeated in every window so that induction pays off. Byte-level tokens."""

    KEYED = (
        "kind",
        "n_train",
        "n_query",
        "context",
        "vocab_words",
        "zipf_exponent",
        "repeat_fraction",
        "span_len",
        "p_code",
        "p_delimiter",
        "p_number",
    )

    kind: Literal["synthetic_language"] = Field(description="Built-in synthetic language.")
    n_train: int = Field(default=4096, ge=1, le=1_000_000, strict=True, description="Training windows.")
    n_query: int = Field(default=64, ge=0, le=100_000, strict=True, description="Held-out windows in the 'query' set.")
    context: int = Field(default=64, ge=8, le=4096, strict=True, description="Tokens per window.")
    vocab_words: int = Field(default=400, ge=10, le=1_000_000, strict=True, description="Lexicon size.")
    zipf_exponent: Float = Field(default=1.1, gt=0, le=100, description="Word frequency exponent.")
    repeat_fraction: Float = Field(default=1.0, ge=0, le=1, description="Fraction of windows with a repeated span.")
    span_len: tuple[SpanLength, SpanLength] = Field(
        default=(8, 20), description="Min and max length of the repeated span."
    )
    p_code: Float = Field(default=0.3, ge=0, le=1, description="Probability of a code-like line (indentation).")
    p_delimiter: Float = Field(default=0.12, ge=0, le=1, description="Probability of a delimited group.")
    p_number: Float = Field(default=0.08, ge=0, le=1, description="Probability of a number.")

    def options(self) -> dict:
        return self.model_dump(exclude={"kind", "n_train", "n_query", "context"})


class TextFilesData(Base):
    """Windows over local text files (globs relative to the spec)."""

    KEYED = ("kind", "paths", "context", "stride", "query_fraction", "max_windows", "tokenizer")

    kind: Literal["text_files"] = Field(description="Local text files.")
    paths: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(
        min_length=1, max_length=1000, description="Files or globs, relative to the spec file."
    )
    context: int = Field(default=64, ge=2, le=65536, strict=True, description="Tokens per window.")
    stride: int | None = Field(
        default=None, ge=1, le=65536, strict=True, description="Window stride (default: context)."
    )
    query_fraction: Float = Field(default=0.1, ge=0, lt=1, description="Tail of the token stream held out as 'query'.")
    max_windows: int | None = Field(
        default=None, ge=1, le=100_000_000, strict=True, description="Cap on training windows."
    )
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec, description="How text becomes tokens.")


class DigitsData(Base):
    """scikit-learn's bundled digits (1797 8×8 grey images, 10 classes; no download; needs the `digits` extra):
    a seeded split into the training set and a held-out 'test' set, cross-entropy loss."""

    KEYED = ("kind", "n_train", "n_test", "split_seed")

    kind: Literal["digits"] = Field(description="Built-in digits (scikit-learn's load_digits).")
    n_train: int = Field(default=1000, ge=1, le=1797, strict=True, description="Training images.")
    n_test: int = Field(default=100, ge=0, le=1796, strict=True, description="Held-out images in the 'test' set.")
    split_seed: int = Field(default=0, ge=0, le=2**31 - 1, strict=True, description="Seed of the train/test split.")

    @model_validator(mode="after")
    def _fits(self) -> DigitsData:
        if self.n_train + self.n_test > 1797:
            raise ValueError(f"n_train + n_test = {self.n_train + self.n_test}; there are 1797 images")
        return self


Data = Annotated[
    HierarchyData | PythonData | SyntheticLanguageData | TextFilesData | DigitsData, Field(discriminator="kind")
]


# ----------------------------------------------------------------------------- models


class DeepLinearModel(Base):
    """A deep linear network x -> W_L ... W_1 x (SCIENCE.md §5); widths of input/output come from the data."""

    KEYED = ("kind", "hidden", "init_scale", "bias")

    kind: Literal["deep_linear"] = Field(description="Built-in deep linear network.")
    hidden: list[Annotated[int, Field(ge=1, le=4096, strict=True)]] = Field(
        default=[16], min_length=1, max_length=64, description="Widths of the hidden layers."
    )
    init_scale: Float = Field(
        default=1e-3, gt=0, le=1e6, description="Std of the Gaussian initialisation (small = stagewise)."
    )
    bias: Bool = Field(default=False, description="Add bias terms to each layer.")


class PythonModel(Base):
    """User model: `factory(dataset, **options)` returns a torch.nn.Module whose forward takes the inputs."""

    KEYED = ("kind", "factory", "options")

    kind: Literal["python"] = Field(description="Model built by user code.")
    factory: str = Field(
        pattern=FACTORY_PATTERN, max_length=MAX_TEXT, description="Import path 'package.module:function'."
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the factory.")


class TransformerModel(Base):
    """Built-in decoder-only transformer (attention-only by default: induction heads form as a clean stage)."""

    KEYED = (
        "kind",
        "n_layers",
        "n_heads",
        "d_model",
        "d_head",
        "mlp",
        "d_mlp",
        "positions",
        "layer_norm",
        "init_std",
    )

    kind: Literal["transformer"] = Field(description="Built-in transformer.")
    n_layers: int = Field(default=2, ge=1, le=64, strict=True, description="Layers.")
    n_heads: int = Field(default=4, ge=1, le=128, strict=True, description="Attention heads per layer.")
    d_model: int = Field(default=64, ge=4, le=16384, strict=True, description="Residual stream width.")
    d_head: int | None = Field(
        default=None, ge=1, le=16384, strict=True, description="Head width (default d_model / n_heads)."
    )
    mlp: Bool = Field(default=False, description="Add MLP blocks (false = attention-only).")
    d_mlp: int | None = Field(default=None, ge=1, le=65536, strict=True, description="MLP width (default 4·d_model).")
    positions: Literal["learned", "shortformer"] = Field(
        default="shortformer", description="shortformer: positions enter queries/keys only."
    )
    layer_norm: Bool = Field(default=True, description="Pre-LayerNorm.")
    init_std: Float = Field(default=0.02, gt=0, le=1e6, description="Std of the weight initialisation.")


class HFCausalLM(Base):
    """A Hugging Face causal LM from a LOCAL directory (config.json); checkpoints are local revision folders."""

    KEYED = ("kind", "path")

    kind: Literal["hf_causal_lm"] = Field(description="Hugging Face causal LM (optional extra: transformers).")
    path: str = Field(
        max_length=4096, description="Local folder with config.json (architecture), relative to the spec."
    )


class MLPModel(Base):
    """A multilayer perceptron for vector inputs; the input width comes from the data, the output width from the
    data's classes (classification) or its target width. Torch's default initialisation, seeded."""

    KEYED = ("kind", "hidden", "activation")

    kind: Literal["mlp"] = Field(description="Built-in multilayer perceptron.")
    hidden: list[Annotated[int, Field(ge=1, le=65536, strict=True)]] = Field(
        default=[32], min_length=1, max_length=64, description="Widths of the hidden layers."
    )
    activation: Literal["relu", "tanh", "gelu"] = Field(default="relu", description="Nonlinearity between layers.")


Model = Annotated[DeepLinearModel | PythonModel | TransformerModel | HFCausalLM | MLPModel, Field(discriminator="kind")]


# ----------------------------------------------------------------------------- checkpoints


class CheckpointSchedule(Base):
    """Which training steps are saved: explicit steps, or N log-spaced steps between 1 and the last step."""

    steps: list[Step] | None = Field(
        default=None, min_length=1, max_length=10_000, description="Explicit steps to save."
    )
    log_spaced: int | None = Field(
        default=None, ge=2, le=10000, strict=True, description="Number of log-spaced checkpoints."
    )
    include_zero: Bool = Field(default=True, description="Also save step 0 (the initialisation).")

    @model_validator(mode="after")
    def _one_kind(self) -> CheckpointSchedule:
        if (self.steps is None) == (self.log_spaced is None):
            raise ValueError("give exactly one of 'steps' or 'log_spaced'")
        return self


class Training(Base):
    """Train the model in-spec from a seeded initialisation, saving checkpoints on a schedule."""

    KEYED = ("optimizer", "lr", "momentum", "weight_decay", "steps", "batch_size")
    UNKEYED = ("log_every", "checkpoints")  # logging; which steps exist (one stage each)

    optimizer: Literal["sgd", "adam", "adamw"] = Field(default="sgd", description="Optimizer.")
    lr: Float = Field(default=0.05, gt=0, le=1e6, description="Learning rate.")
    momentum: Float = Field(default=0.0, ge=0, lt=1, description="SGD momentum.")
    weight_decay: Float = Field(default=0.0, ge=0, description="Weight decay.")
    steps: int = Field(default=3000, ge=1, le=MAX_STEPS, strict=True, description="Number of optimizer steps.")
    batch_size: int | None = Field(
        default=None, ge=1, le=10_000_000, strict=True, description="Minibatch size; null = full batch."
    )
    log_every: int | None = Field(
        default=None,
        ge=1,
        le=MAX_STEPS,
        strict=True,
        description="Record the training loss every N steps (null: about 1000 points).",
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

    glob: str = Field(
        min_length=1,
        max_length=4096,
        description="Glob of checkpoint files (state_dict .pt) or Hugging Face revision folders, relative to the spec.",
    )
    step_pattern: str = Field(
        default=r"(\d+)", max_length=1000, description="Regex applied to the file name; its first group is the step."
    )

    @field_validator("step_pattern")
    @classmethod
    def _has_group(cls, v: str) -> str:
        if _compile(v).groups < 1:
            raise ValueError("step_pattern needs one capturing group, e.g. 'step(\\d+)'")
        return v


# ----------------------------------------------------------------------------- token classes


class InductionRule(Base):
    KEYED = ("kind",)

    kind: Literal["induction"] = Field(description="The bigram (t[k-1], t[k]) occurred earlier in the context.")


class RegexRule(Base):
    KEYED = ("kind", "pattern")
    KEYED_IF_SET = ("mode",)  # added after caches existed: the default keeps their keys

    kind: Literal["regex"] = Field(description="Decoded token text matches a regex (left context visible).")
    pattern: str = Field(
        min_length=1, max_length=1000, description="Python regex, applied from the token's first character."
    )
    mode: Literal["search", "match", "fullmatch"] = Field(
        default="search",
        description="search: anywhere in the token; match: at its start; fullmatch: the whole token "
        "(as the built-in structural classes use them).",
    )

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        _compile(v)
        return v


class TokenIdsRule(Base):
    KEYED = ("kind", "ids")

    kind: Literal["token_ids"] = Field(description="Token id in a list.")
    ids: list[Annotated[int, Field(ge=0, le=10_000_000, strict=True)]] = Field(
        min_length=1, max_length=100_000, description="Token ids."
    )


class PositionsRule(Base):
    KEYED = ("kind", "positions")

    kind: Literal["positions"] = Field(description="Token at given positions of the window.")
    positions: list[Annotated[int, Field(ge=-65536, le=65536, strict=True)]] = Field(
        min_length=1, max_length=65536, description="Positions 1..T-1 (negative: from the end)."
    )


class PythonRule(Base):
    KEYED = ("kind", "factory")

    kind: Literal["python"] = Field(description="User predicate: tokens [n, T] -> bool mask [n, T].")
    factory: str = Field(
        pattern=FACTORY_PATTERN, max_length=MAX_TEXT, description="Import path 'package.module:function'."
    )


TokenRule = Annotated[
    InductionRule | RegexRule | TokenIdsRule | PositionsRule | PythonRule, Field(discriminator="kind")
]


class TokenClasses(Base):
    """Named token classes applied to every tracked token (of the token a loss position predicts)."""

    KEYED = ("structural", "induction", "rules", "remainder")

    structural: Literal["default", "none"] = Field(
        default="default",
        description="default = built-in delimiters, formatting, punctuation, digits, word_start, word_continuation.",
    )
    induction: Bool = Field(default=True, description="Add the 'induction' class.")
    rules: dict[Name, TokenRule] = Field(default_factory=dict, max_length=256, description="Extra classes by name.")
    remainder: str = Field(
        default="other", pattern=NAME_PATTERN, max_length=MAX_NAME, description="Class of tokens no rule claims."
    )


# ----------------------------------------------------------------------------- sampling and analyses


def _default_loss_kind(v: Any) -> Any:
    """An observable without `kind:` is a loss observable (every spec from before observable kinds)."""
    return {**v, "kind": "loss"} if isinstance(v, dict) and "kind" not in v else v


# The observable kinds' spec models live with their kinds (sbif_dsl/observables/<kind>.py), listed once in kinds.py.
from ..observables.kinds import OBSERVABLES  # noqa: E402
from ..observables.loss import LossObservable  # noqa: E402

Observable = Annotated[
    Union[tuple(k.spec for k in OBSERVABLES)],  # noqa: UP007
    Field(discriminator="kind"),
    BeforeValidator(_default_loss_kind),
]


MAX_PULL = 0.1  # εγ/2 above this: the localization step alone inflates every variance by ≥ 1/(1 − εγ/4) ≈ 2.6%


class Auto(Base):
    """The adaptive sampler's policy (sbif_dsl/sampling/auto.py), used where eps or draws is `auto`."""

    KEYED = ("target_acceptance", "max_pull", "adapt_steps", "window", "max_burn_in", "check_every", "max_draws",
             "max_seconds")  # fmt: skip

    target_acceptance: Float = Field(default=0.9, gt=0, lt=1, description="MALA acceptance ε is adapted to.")
    max_pull: Float = Field(default=MAX_PULL, gt=0, le=0.5, description="εγ/2 at most this.")
    adapt_steps: int = Field(default=300, ge=10, le=1_000_000, strict=True, description="Step-size warm-up steps.")
    window: int = Field(default=100, ge=8, le=100_000, strict=True, description="Burn-in window (steps).")
    max_burn_in: int = Field(default=20_000, ge=16, le=10_000_000, strict=True, description="Burn-in budget (steps).")
    check_every: int = Field(default=100, ge=8, le=100_000, strict=True, description="Draws between screen checks.")
    max_draws: int = Field(default=4000, ge=8, le=1_000_000, strict=True, description="Draws budget per chain.")
    max_seconds: Float | None = Field(
        default=None, gt=0, le=1e7, description="Wall-time budget per checkpoint (draws kept then vary by machine)."
    )

    @field_validator("max_seconds", mode="before")
    @classmethod
    def _seconds_number(cls, v: Any) -> Any:  # as Float (an Optional Float would spoil the JSON Schema)
        return v if v is None else _number(v)


class Sampler(Base):
    """SGLD / RMSProp-SGLD around each checkpoint (SCIENCE.md §2)."""

    KEYED = (
        "method",
        "eps",
        "gamma",
        "chains",
        "draws",
        "burn_in",
        "steps_between_draws",
        "noise_level",
        "weight_decay",
        "rmsprop_alpha",
        "rmsprop_eps",
        "precision",
        "auto",
    )
    UNKEYED = ("nbeta", "batch_size")  # enter resolved (stages/sample.py: nβ = B/ln B, B capped at n)

    method: Literal["sgld", "rmsprop_sgld"] = Field(default="sgld", description="Sampler update rule.")
    eps: Annotated[float, Field(strict=True, gt=0, le=1), BeforeValidator(_number)] | Literal["auto"] = Field(
        default=1e-5, description="Step size ε, or auto: adapted to a MALA acceptance (sampler.auto)."
    )
    gamma: Float = Field(default=1e5, ge=0, le=1e12, description="Localization strength γ.")
    nbeta: float | None = Field(
        default=None, gt=0, le=1e12, strict=True, description="Inverse temperature nβ; null = B/ln B."
    )
    chains: int = Field(default=8, ge=1, le=4096, strict=True, description="Independent chains (run stacked).")
    draws: Annotated[int, Field(strict=True, ge=2, le=1_000_000)] | Literal["auto"] = Field(
        default=400, description="Recorded draws per chain, or auto: burn-in measured, draws until the screens pass."
    )
    burn_in: int = Field(default=100, ge=0, le=1_000_000, strict=True, description="Steps before the first draw.")
    steps_between_draws: int = Field(
        default=1, ge=1, le=10_000, strict=True, description="SGLD steps per recorded draw."
    )
    batch_size: int | None = Field(
        default=None, ge=1, le=10_000_000, strict=True, description="Minibatch size; null = full batch."
    )
    noise_level: Float = Field(default=1.0, ge=0, description="Noise σ (1 keeps the sampling guarantee).")
    weight_decay: Float = Field(default=0.0, ge=0, description="λ, an extra pull towards 0.")
    rmsprop_alpha: Float = Field(default=0.99, gt=0, lt=1, description="RMSProp decay α.")
    rmsprop_eps: Float = Field(default=0.1, gt=0, description="RMSProp eps.")
    precision: Literal["float32", "bfloat16"] = Field(
        default="float32",
        description="Compute precision of the model while sampling: bfloat16 autocasts its matmuls (weights, "
        "updates and recorded losses stay float32; effect measured in README).",
    )
    auto: Auto = Field(default_factory=Auto, description="Policy of eps: auto / draws: auto (keyed only then).")

    @property
    def adaptive(self) -> bool:
        """Whether the adaptive sampler runs (eps or draws auto): its `auto` policy is then part of the key."""
        return self.eps == "auto" or self.draws == "auto"

    def pull(self) -> float | None:
        """εγ/2 of a fixed ε (None for eps: auto, which keeps it ≤ auto.max_pull)."""
        return None if self.eps == "auto" else self.eps * self.gamma / 2

    def warnings(self) -> list[tuple[tuple, str]]:
        """(field path, message) of settings that run but bias the result."""
        pull = self.pull()
        if pull is not None and pull > MAX_PULL:
            return [
                (
                    ("sampler", "eps"),
                    f"eps*gamma/2 = {pull:g} > {MAX_PULL:g}: the localization step alone inflates every variance by "
                    f">= 1/(1 - eps*gamma/4) = {1 / (1 - pull / 2):.3g}x (every -Cov biased by that much); "
                    "use a smaller eps, or eps: auto",
                )
            ]
        return []

    @field_validator("nbeta", mode="before")
    @classmethod
    def _nbeta_number(cls, v: Any) -> Any:  # as Float (an Optional Float would spoil the JSON Schema)
        return v if v is None else _number(v)

    @model_validator(mode="after")
    def _stable_localization(self) -> Sampler:
        pull = self.pull()
        if self.method == "sgld" and pull is not None and pull >= 1:
            raise ValueError(
                f"eps*gamma/2 = {pull:g} >= 1: the localization step overshoots and chains diverge; "
                "use a smaller eps or gamma"
            )
        return self


# The analysis kinds' spec models live with their kinds (sbif_dsl/stages/<kind>.py); ANALYSES lists them once.
from ..stages.kinds import ANALYSES, ANALYSIS  # noqa: E402 - after the models the stage modules need

Analysis = Annotated[Union[tuple(k.spec for k in ANALYSES)], Field(discriminator="kind")]  # noqa: UP007


def analysis_name(a: Any) -> str:
    return a.name or a.kind


# ----------------------------------------------------------------------------- report (cosmetic: never keyed)


class DetectSettings(Base):
    """Transition detection parameters used by the report (see sbif_dsl.report.DetectParams)."""

    prominence: Float = Field(default=0.2, gt=0, le=1, description="Peak prominence, relative to the curve range.")
    min_abs: Float = Field(default=0.0, ge=0, description="Sign changes must leave the band ±min_abs around 0.")
    min_rel: Float = Field(default=0.05, ge=0, le=1, description="... or ±min_rel × the curve's max |value|.")
    min_run: int = Field(
        default=2, ge=1, le=20, strict=True, description="Checkpoints a sign must persist on each side."
    )
    noise_k: Float = Field(default=3.0, ge=0, description="Noise floor in robust noise sigmas (0 = off).")
    curve_smooth: int = Field(
        default=1, ge=1, le=50, strict=True, description="Moving average over checkpoints (1 = off)."
    )
    min_change: Float = Field(default=0.05, ge=0, le=1, description="Changepoints: minimum change, relative.")
    merge_decades: Float = Field(default=0.1, ge=0, description="Events closer than this (decades) merge.")
    value: Literal["bif_corr", "bif_cov"] = Field(default="bif_corr", description="Influence column to analyse.")


class ReportSection(Base):
    """A user section: a SQL query over the views and a chart."""

    title: str = Field(max_length=MAX_TEXT, description="Section heading.")
    sql: str = Field(min_length=1, max_length=100_000, description="SQL over the documented views.")
    chart: Literal["line", "heatmap", "bar", "table"] = Field(default="table", description="Chart type.")
    x: str | None = Field(default=None, max_length=MAX_TEXT, description="Column for the x encoding.")
    y: str | None = Field(default=None, max_length=MAX_TEXT, description="Column for the y encoding.")
    color: str | None = Field(default=None, max_length=MAX_TEXT, description="Column for colour.")
    log_x: Bool = Field(default=False, description="Log-scale the x axis.")


class Report(Base):
    """What the HTML report shows. Cosmetic: changing it recomputes nothing."""

    title: str | None = Field(
        default=None, max_length=MAX_TEXT, description="Report title (default: the study title or name)."
    )
    pairs: list[tuple[Name, Name]] = Field(
        default_factory=list,
        max_length=1000,
        description="Sample pairs [source, target] whose influence trajectories are plotted.",
    )
    class_pairs: list[tuple[Name, Name]] = Field(
        default_factory=list,
        max_length=1000,
        description="Token-class pairs [source, target] whose influence is plotted.",
    )
    heatmap_steps: list[Step] | None = Field(
        default=None,
        max_length=100,
        description="Checkpoint steps for BIF heatmaps (default: a few spread over training).",
    )
    detect: DetectSettings = Field(default_factory=DetectSettings, description="Transition detection.")
    sections: list[ReportSection] = Field(default_factory=list, max_length=100, description="User sections.")


class Diagnostics(Base):
    """Thresholds of the convergence screens (sbif_dsl/sampling/screens.py explains the statistics and defaults).

    Display only, never keyed: they change which checkpoints `sbif run` flags and what the report shows, and
    recompute nothing. The stage stores the raw statistics, and the `verdict`/`reason` columns of the `diagnostics`
    view are computed with these defaults (they stay the same whatever this block says)."""

    UNKEYED = (  # display only
        "rhat_warn", "rhat_fail", "ess_warn", "ess_fail", "drift_warn", "drift_fail", "descent_warn", "descent_fail",
    )  # fmt: skip

    rhat_warn: Float = Field(default=1.01, gt=1, le=100, description="Split-R̂ above this warns.")
    rhat_fail: Float = Field(default=1.1, gt=1, le=100, description="Split-R̂ above this fails.")
    ess_warn: Float = Field(default=100.0, ge=0, le=1e12, description="Bulk ESS below this warns.")
    ess_fail: Float = Field(default=20.0, ge=0, le=1e12, description="Bulk ESS below this fails.")
    drift_warn: Float = Field(
        default=3.0, gt=0, le=1e6, description="|drift| (standard errors of the combined slope) above this warns."
    )
    drift_fail: Float = Field(default=6.0, gt=0, le=1e6, description="|drift| above this fails.")
    descent_warn: Float = Field(
        default=1.0,
        gt=0,
        le=1e6,
        description="Mean sampled minibatch loss this many of its SDs below L(w*) warns (not a local minimum).",
    )
    descent_fail: Float = Field(default=3.0, gt=0, le=1e6, description="... this many SDs below L(w*) fails.")

    @model_validator(mode="after")
    def _ordered(self) -> Diagnostics:
        if (
            self.rhat_fail < self.rhat_warn
            or self.drift_fail < self.drift_warn
            or self.descent_fail < self.descent_warn
            or self.ess_fail > self.ess_warn
        ):
            raise ValueError("a fail threshold must be at least as far out as its warn threshold")
        return self


# ----------------------------------------------------------------------------- sweep

MAX_SWEEP_CELLS = 1000  # more cells than this is refused unless `max_cells` confirms the count
SWEEP_FIXED = ("name", "title", "description", "report", "diagnostics", "sweep")  # not result-affecting
SweepValues = Annotated[list[Any], Field(min_length=1, max_length=10_000)]


class Sweep(Base):
    """A grid of derived studies (cells), each the spec with one value per axis (dotted paths, as `--set`).

    `grid` axes multiply; each `zip` group is one axis of paired values (its lists are equally long, the i-th
    values go together). Each cell is a study named after its values, e.g. `toy_sweep[gamma=1e4,eps=1e-5]`;
    cells share every stage whose key their values leave unchanged (train once, sample per sampler setting)."""

    grid: dict[str, SweepValues] = Field(
        default_factory=dict, max_length=32, description="Axis (dotted field path) -> values; axes multiply."
    )
    zip: list[dict[str, SweepValues]] = Field(
        default_factory=list,
        max_length=32,
        description="Groups of paired axes: within a group the lists are equally long and vary together.",
    )
    max_cells: int = Field(
        default=MAX_SWEEP_CELLS,
        ge=1,
        le=10_000,
        strict=True,
        description=f"Confirms a grid larger than {MAX_SWEEP_CELLS} cells (a larger one is refused).",
    )

    @model_validator(mode="after")
    def _axes(self) -> Sweep:
        paths = [*self.grid, *(p for group in self.zip for p in group)]
        if not paths:
            raise ValueError("a sweep needs at least one axis under 'grid' or 'zip'")
        for p in paths:
            if paths.count(p) > 1:
                raise ValueError(f"axis {p!r} is given twice; give each field one axis")
            parts = p.split(".")
            if not p or len(p) > 200 or any(not part for part in parts):
                raise ValueError(f"axis {p!r}: expected a dotted field path, e.g. sampler.gamma")
            if parts[0] in SWEEP_FIXED:
                raise ValueError(
                    f"axis {p!r}: '{parts[0]}' does not change any result (cells would be the same study); "
                    "sweep over fields of the model, data, training, observables, sampler or analyses"
                )
        for axis in self.axes():
            seen = [json.dumps(setting, sort_keys=True, default=str) for setting in axis]
            twice = next((setting for setting, text in zip(axis, seen) if seen.count(text) > 1), None)
            if twice is not None:
                shown = ", ".join(f"{p}={v!r}" for p, v in twice)
                raise ValueError(f"{shown} is given twice on one axis (two cells would be one study); keep one")
        for i, group in enumerate(self.zip):
            lengths = {p: len(v) for p, v in group.items()}
            if len(set(lengths.values())) > 1:
                shown = ", ".join(f"{p}: {n}" for p, n in lengths.items())
                raise ValueError(f"zip group {i}: paired axes need lists of one length (got {shown})")
        return self

    def axes(self) -> list[list[tuple[str, Any]]]:
        """One list per axis of the grid (each zip group is one axis): its values as [(path, value), ...]."""
        out = [[((p, v),) for v in values] for p, values in self.grid.items()]
        out += [list(zip(*([(p, v) for v in vals] for p, vals in g.items()))) for g in self.zip]
        return out

    def count(self) -> int:
        return math.prod(len(axis) for axis in self.axes())


# ----------------------------------------------------------------------------- study


class Study(Base):
    """One study: model, checkpoints, data, observables, sampler, analyses and report."""

    name: str = Field(pattern=NAME_PATTERN, max_length=MAX_NAME, description="Study name; how SQL views refer to it.")
    title: str | None = Field(default=None, max_length=MAX_TEXT, description="Human title (cosmetic).")
    description: str | None = Field(default=None, max_length=10_000, description="Free text (cosmetic).")
    seed: int = Field(
        default=0, ge=0, lt=2**63, strict=True, description="Study seed; every stage's seed derives from it."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto = CUDA when present.")
    dtype: Literal["float32", "float64"] = Field(default="float32", description="Floating dtype of weights.")
    model: Model = Field(description="The model.")
    data: Data = Field(description="The data.")
    training: Training | None = Field(default=None, description="Train in-spec (or give `checkpoints`).")
    checkpoints: LoadedCheckpoints | None = Field(default=None, description="Load checkpoints from files.")
    observables: list[Observable] = Field(
        default_factory=lambda: [LossObservable(name="train", data="train")],
        min_length=1,
        max_length=256,
        description="What is recorded at every draw: losses of sample sets (the default kind), functions of "
        "their outputs, induction scores, user hooks.",
    )
    sampler: Sampler = Field(default_factory=Sampler, description="SGLD settings.")
    analyses: list[Analysis] = Field(
        default_factory=lambda: [ANALYSIS["bif"].spec(kind="bif"), ANALYSIS["llc"].spec(kind="llc")],
        max_length=100,
        description="Analyses per checkpoint.",
    )
    token_classes: TokenClasses | None = Field(
        default=None, description="Token classes for language models (class_bif, class_loss)."
    )
    report: Report = Field(default_factory=Report, description="HTML report settings (cosmetic).")
    diagnostics: Diagnostics = Field(
        default_factory=Diagnostics,
        description="Convergence-screen thresholds: what `sbif run` flags (display only, never keyed).",
    )
    sweep: Sweep | None = Field(
        default=None, description="Run the study as a grid of cells over these fields (see `Sweep`)."
    )

    @model_validator(mode="after")
    def _one_checkpoint_source(self) -> Study:
        if (self.training is None) == (self.checkpoints is None):
            raise ValueError("give exactly one of 'training' (train in-spec) or 'checkpoints' (load from files)")
        return self
