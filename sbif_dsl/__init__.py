"""sbif_dsl: declarative, cached studies of stagewise Bayesian influence.

    import sbif_dsl as sb
    study = sb.load("specs/toy_hierarchy.yaml")
    study.run()
    study.sql("SELECT step, bif_corr FROM bif WHERE source = 'dog' AND target = 'cat' ORDER BY step")

See sbif_dsl/api.py and docs/python_api.md. Importing the package imports no torch.
"""

__version__ = "0.1.0"

from .api import Connection, RunResult, Study, connect, load, views  # noqa: E402
from .errors import (  # noqa: E402
    CacheLockedError,
    ContractError,
    MissingResultsError,
    NonFiniteError,
    SbifError,
    SpecError,
    UsageError,
)

__all__ = [
    "CacheLockedError",
    "Connection",
    "ContractError",
    "MissingResultsError",
    "NonFiniteError",
    "RunResult",
    "SbifError",
    "SpecError",
    "Study",
    "Sweep",
    "SweepResult",
    "UsageError",
    "__version__",
    "connect",
    "load",
    "views",
]


def __getattr__(name: str):
    """`sb.Sweep` / `sb.SweepResult` load on first use (they import the spec package)."""
    if name in ("Sweep", "SweepResult"):
        from . import sweep

        return getattr(sweep, name)
    raise AttributeError(f"module 'sbif_dsl' has no attribute {name!r}")
