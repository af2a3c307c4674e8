"""scikit-learn's bundled digits (1797 8×8 images, 10 classes; no download): a small real classification task."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from ..errors import UsageError
from ..task import Dataset, SampleSet

N_DIGITS = 1797


def cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample cross-entropy of logits (batch, classes) against class ids (batch,)."""
    return F.cross_entropy(outputs, targets, reduction="none")  # (batch,)


def digits_dataset(n_train: int, n_test: int, split_seed: int) -> Dataset:
    """A seeded split: n_train training images and n_test held-out ones (the 'test' set); pixels scaled to [0, 1].
    Names are the images' indices in scikit-learn's array, so they do not depend on the split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UsageError(
            "data kind 'digits' needs scikit-learn; hint: pip install 'sbif_dsl[digits]' (or scikit-learn)"
        ) from None
    if n_train + n_test > N_DIGITS:
        raise UsageError(f"data (digits): n_train + n_test = {n_train + n_test} exceeds the {N_DIGITS} images")
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0  # (1797, 64)
    y = torch.tensor(d.target, dtype=torch.long)  # (1797,)
    order = torch.randperm(N_DIGITS, generator=torch.Generator().manual_seed(split_seed))
    tr, te = order[:n_train], order[n_train : n_train + n_test]

    def subset(idx: Tensor) -> SampleSet:
        return SampleSet(inputs=x[idx], targets=y[idx], names=[f"digit{int(i):04d}" for i in idx])

    return Dataset(train=subset(tr), loss=cross_entropy, queries={"test": subset(te)}, meta={"classes": 10})
