"""BIF estimators: covariances of loss traces pooled over chains and draws."""

from .bif import bif_matrices, class_bif, loss_kernel

__all__ = ["bif_matrices", "class_bif", "loss_kernel"]
