"""Observable kinds: what the sample stage records at every SGLD draw, one module per kind (listed in `kinds.py`).

The BIF is defined for any observable φ: BIF(z_i, φ) = −Cov(l_i, φ) over the local posterior (SCIENCE.md §1). A
kind module declares its spec model (`kind: Literal[...]`) and how to measure it (`measure(rt, spec) -> Measure`);
this package imports nothing heavy at module level, since the spec package builds the `observables:` union from it.
"""
