"""sbif_dsl: declarative, cached studies of stagewise Bayesian influence."""

__version__ = "0.1.0"
