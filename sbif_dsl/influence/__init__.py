"""BIF estimators: covariances of loss traces pooled over chains and draws."""

from .agreement import agreement
from .bif import bif_matrices, class_bif, class_bif_cross, loss_kernel

__all__ = ["agreement", "bif_matrices", "class_bif", "class_bif_cross", "loss_kernel"]
