"""`token_bif`: token × token BIF over a slice of sequences and positions the user names (quadratic: small)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from ..keyed import NAME_PATTERN, Base
from .base import Inputs, Stage, StageOutput
from .class_bif import token_set_params
from .kind import AnalysisKind, Table, View, estimate_columns
from .traces import estimate_rows, read_traces


class TokenBifAnalysis(Base):
    """Token × token BIF for a slice the user names (quadratic: keep it small)."""

    KEYED = ("observable", "sequences", "positions")

    kind: Literal["token_bif"] = Field(description="Token × token influence over a slice.")
    name: str | None = Field(default=None, pattern=NAME_PATTERN, max_length=128, description="Name in SQL.")
    observable: str = Field(default="query", max_length=128, description="Observable with per-token losses.")
    sequences: list[Annotated[str, Field(max_length=128)]] = Field(
        min_length=1, max_length=64, description="Sample names of the sequences."
    )
    positions: list[Annotated[int, Field(ge=0, le=65536, strict=True)]] | None = Field(
        default=None, max_length=4096, description="Loss positions to keep (default: all)."
    )


def run(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    import numpy as np

    from ..errors import UsageError
    from ..influence import bif_matrices
    from ..influence.uncertainty import jackknife

    a, data_set = stage.params, stage.params["data_set"]
    observable = a["observable"]
    names = rt.dataset.sets()[data_set].names
    index = {n: i for i, n in enumerate(names)}
    missing = [s for s in a["sequences"] if s not in index]
    if missing:
        raise UsageError(f"analysis {stage.analysis!r}: no sequence {missing[0]!r} in {data_set!r} (e.g. {names[0]!r})")
    trace = read_traces(inputs, stage.inputs[0])[observable]  # (chains, draws, n, T-1)
    n_pos = trace.shape[-1]
    positions = a["positions"] if a["positions"] is not None else list(range(n_pos))
    bad = [p for p in positions if p >= n_pos]
    if bad:
        raise UsageError(f"analysis {stage.analysis!r}: position {bad[0]} is outside 0..{n_pos - 1}")
    seqs = [index[s] for s in a["sequences"]]
    sl = trace[:, :, seqs][:, :, :, positions]  # (chains, draws, n_seq, n_pos)
    (neg_cov, cov_se, df), (neg_corr, corr_se, _) = jackknife(
        lambda x: bif_matrices(x.reshape(*x.shape[:2], -1), x.reshape(*x.shape[:2], -1)),
        sl,
        scales=("raw", "fisher_z"),
    )  # (k, k) each; -Corr's SE and interval on Fisher's z
    seq_idx = np.repeat(np.array(seqs, dtype=np.int32), len(positions))
    pos_idx = np.tile(np.array(positions, dtype=np.int32), len(seqs))
    i, j = (x.ravel() for x in np.indices(neg_cov.shape))
    return StageOutput(
        tables={
            "r_token_bif": {
                "observable": [observable] * i.size,
                "source_idx": seq_idx[i],
                "source_pos": pos_idx[i],
                "target_idx": seq_idx[j],
                "target_pos": pos_idx[j],
                **estimate_rows("bif_cov", neg_cov, cov_se, df),
                **estimate_rows("bif_corr", neg_corr, corr_se, df, "fisher_z"),
            }
        }
    )


KIND = AnalysisKind(
    name="token_bif",
    # 4: bif_corr's interval on Fisher's z (inside [-1, 1]), its _se the delta-method (1 - r²)·SE_z; 3: standard
    # errors and 95% intervals; 2: keyed on its declared fields (no name)
    version=4,
    run="sbif_dsl.stages.token_bif:run",
    spec=TokenBifAnalysis,
    attach="sample",
    references=("observable",),
    params=token_set_params,
    tables=(
        Table(
            "r_token_bif",
            "observable VARCHAR, source_idx INTEGER, source_pos INTEGER, target_idx INTEGER, target_pos INTEGER, "
            + estimate_columns("bif_cov", "bif_corr"),
        ),
    ),
    views=(
        View(
            "token_bif",
            """
        SELECT ss.study, sr.step, ss.analysis, b.observable,
               src.sample_name AS source, b.source_pos, b.target_pos, tgt.sample_name AS target,
               b.bif_cov, b.bif_corr, b.bif_cov_se, b.bif_cov_lo, b.bif_cov_hi, b.bif_corr_se, b.bif_corr_lo,
               b.bif_corr_hi
        FROM {scope} JOIN r_token_bif b ON b.key = sr.key
        JOIN r_tracked src ON src.key = sr.parent AND src.observable = b.observable AND src.sample_idx = b.source_idx
        JOIN r_tracked tgt ON tgt.key = sr.parent AND tgt.observable = b.observable
                          AND tgt.sample_idx = b.target_idx""",
            "token x token influence for a named slice of sequences and positions",
        ),
    ),
)
