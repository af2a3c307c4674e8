"""One module per stage kind; each builds `Stage`s (with content keys) and runs them."""

from .base import Stage

__all__ = ["Stage"]
