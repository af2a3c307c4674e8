"""Datasets: built-ins and the `kind: python` factory path."""
