"""Saxe-style hierarchical data (SCIENCE.md §5): one-hot items, binary features on the nodes of a tree."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..task import Dataset, SampleSet


def hierarchy_features(branching: list[int], features_per_level: list[int]) -> Tensor:
    """(items, features) 0/1 matrix: item i has every feature of every node on its root-to-leaf path."""
    n_items = math.prod(branching)
    columns = []
    nodes_at_level = 1
    for level, n_feat in enumerate(features_per_level):
        items_per_node = n_items // nodes_at_level
        for node in range(nodes_at_level):
            col = torch.zeros(n_items)
            col[node * items_per_node : (node + 1) * items_per_node] = 1.0
            columns.extend([col] * n_feat)
        if level < len(branching):
            nodes_at_level *= branching[level]
    return torch.stack(columns, dim=1)  # (items, features)


def squared_error(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample loss ½‖y − ŷ‖² (summed over features, as in Saxe et al.)."""
    return 0.5 * ((outputs - targets) ** 2).sum(dim=-1)  # (batch,)


def hierarchy_dataset(
    branching: list[int], features_per_level: list[int], names: list[str], query_sets: dict[str, list[str]]
) -> Dataset:
    y = hierarchy_features(branching, features_per_level)
    x = torch.eye(len(names))
    train = SampleSet(inputs=x, targets=y, names=list(names))
    index = {n: i for i, n in enumerate(names)}
    queries = {}
    for qname, members in query_sets.items():
        rows = [index[m] for m in members]
        queries[qname] = SampleSet(inputs=x[rows], targets=y[rows], names=list(members))
    return Dataset(train=train, loss=squared_error, queries=queries)
