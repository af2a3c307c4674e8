"""Language-model studies end to end through the CLI: built-in transformer, and a tiny local GPT-NeoX."""

from __future__ import annotations

import json

import pytest

from .conftest import sbif, write_spec

LM_SPEC = """\
name: tiny_lm
seed: 1
device: cpu
data:
  kind: synthetic_language
  n_train: 256
  n_query: 6
  context: 48
model:
  kind: transformer
  n_layers: 2
  n_heads: 2
  d_model: 32
training:
  optimizer: adamw
  lr: 0.001
  steps: 30
  batch_size: 16
  checkpoints: {steps: [0, 30]}
observables:
  - {name: query, data: query}
sampler: {eps: 1.0e-4, gamma: 1000, nbeta: 10, chains: 2, draws: 12, burn_in: 2, batch_size: 16}
token_classes:
  rules:
    brackets: {kind: regex, pattern: '[\\[\\]()]'}
    first: {kind: positions, positions: [1, 2]}
analyses:
  - {kind: class_bif, observable: query}
  - {kind: bif, source: query}
  - {kind: token_bif, observable: query, sequences: [seq0000, seq0001], positions: [0, 5, 10]}
  - {kind: induction_score, n_seqs: 4}
  - {kind: class_loss, observable: query}
"""


def _json(*args, cache):
    return json.loads(sbif("query", *args, "--format", "json", cache=cache).stdout)


def test_transformer_study_end_to_end(tmp_path, cache_path):
    spec = write_spec(tmp_path, LM_SPEC)
    sbif("run", str(spec), cache=cache_path)
    assert "nothing to compute" in sbif("run", str(spec), cache=cache_path).stdout

    classes = _json("SELECT * FROM class_bif WHERE step = 30", cache=cache_path)
    names = {r["source_class"] for r in classes}
    assert {"induction", "delimiters", "formatting", "digits", "word_start", "brackets", "first", "other"} <= names
    assert len(classes) == len(names) ** 2
    for r in classes:  # a block over distinct token pairs: NULL where there is none (an empty or one-token class)
        same = r["source_class"] == r["target_class"]
        empty = r["n_source"] == 0 or r["n_target"] == 0 or (same and r["n_source"] == 1)
        assert (r["bif_corr"] is None) == empty, r
        assert r["bif_corr"] is None or -1 <= r["bif_corr"] <= 1, r

    seq = _json("SELECT * FROM bif WHERE step = 30", cache=cache_path)
    assert len(seq) == 6 * 6  # per-sequence BIF over the query set

    tok = _json("SELECT * FROM token_bif WHERE step = 30", cache=cache_path)
    assert len(tok) == 36 and {r["source"] for r in tok} == {"seq0000", "seq0001"}
    assert {r["source_pos"] for r in tok} == {0, 5, 10}

    scores = _json("SELECT step, score FROM induction_score ORDER BY step", cache=cache_path)
    assert [r["step"] for r in scores] == [0, 30] and all(0 <= r["score"] <= 1 for r in scores)

    losses = _json("SELECT class, n_tokens, loss FROM class_loss WHERE step = 0", cache=cache_path)
    assert sum(r["n_tokens"] for r in losses if r["class"] == "first") == 6 * 2

    tokens = _json("SELECT * FROM tokens WHERE sample_name = 'seq0000' ORDER BY pos", cache=cache_path)
    assert len(tokens) == 47 and tokens[0]["pos"] == 0
    assert "first" in tokens[0]["classes"] and "first" not in tokens[2]["classes"]

    traces = _json("SELECT count(*) AS n FROM loss_traces", cache=cache_path)[0]["n"]
    assert traces == 2 * 2 * 12 * 6 * 47  # checkpoints × chains × draws × sequences × positions

    # trace_mixing against numpy on the same traces: lag-1 autocorrelation of each chain's mean loss per draw
    import numpy as np

    means = _json(
        "SELECT step, chain, draw, avg(loss) AS l FROM loss_traces GROUP BY ALL ORDER BY ALL", cache=cache_path
    )
    mixing = _json("SELECT * FROM trace_mixing ORDER BY step, chain", cache=cache_path)
    assert len(mixing) == 2 * 2 and all(r["draws"] == 12 and r["observable"] == "query" for r in mixing)
    for r in mixing:
        x = np.array([m["l"] for m in means if m["step"] == r["step"] and m["chain"] == r["chain"]])
        x = x - x.mean()
        rho = float((x[1:] * x[:-1]).sum() / (x * x).sum())
        assert abs(r["lag1_autocorr"] - rho) < 1e-9
        assert abs(r["ess_ar1"] - min(12, 12 * (1 - rho) / (1 + rho))) < 1e-6

    # bfloat16 sampling: only sampling and what follows recompute, and class-level influence stays put.
    query = "SELECT source_class, target_class, bif_corr FROM class_bif WHERE step = 30 ORDER BY ALL"
    f32 = _json(query, cache=cache_path)
    proc = sbif("run", str(spec), "--set", "sampler.precision=bfloat16", cache=cache_path)
    out = proc.stdout + proc.stderr
    kinds = {line.split()[1] for line in out.splitlines() if line.startswith("[")}
    assert kinds == {"sample", "class_bif", "bif", "token_bif"}, out  # training, tokens, induction score reused
    b16 = _json(query, cache=cache_path)
    pairs = [(r["source_class"], r["target_class"]) for r in f32]
    assert [(r["source_class"], r["target_class"]) for r in b16] == pairs
    assert [r["bif_corr"] for r in b16] != [r["bif_corr"] for r in f32]  # really resampled
    assert [r["bif_corr"] is None for r in b16] == [r["bif_corr"] is None for r in f32]  # undefined alike
    defined = [(a, b) for a, b in zip(f32, b16, strict=True) if a["bif_corr"] is not None]
    assert max(abs(a["bif_corr"] - b["bif_corr"]) for a, b in defined) < 0.05

    bad = write_spec(tmp_path, LM_SPEC.replace("sequences: [seq0000, seq0001]", "sequences: [nope]"), "bad.yaml")
    proc = sbif("run", str(bad), cache=cache_path, check=False)
    assert proc.returncode == 2 and "no sequence 'nope'" in proc.stderr


def _tiny_neox(tmp_path):
    transformers = pytest.importorskip("transformers")
    import torch

    config = transformers.GPTNeoXConfig(
        vocab_size=256,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        rotary_pct=0.25,
    )
    model_dir = tmp_path / "neox"
    config.save_pretrained(model_dir)
    for step in (100, 200):
        torch.manual_seed(step)
        transformers.GPTNeoXForCausalLM(config).save_pretrained(tmp_path / "revisions" / f"step{step}")
    return model_dir


def test_hf_causal_lm_end_to_end(tmp_path, cache_path):
    _tiny_neox(tmp_path)
    spec = write_spec(
        tmp_path,
        """\
        name: neox
        seed: 2
        device: cpu
        data: {kind: synthetic_language, n_train: 64, n_query: 4, context: 48}
        model: {kind: hf_causal_lm, path: neox}
        checkpoints: {glob: "revisions/step*", step_pattern: "step(\\\\d+)"}
        observables: [{name: query, data: query}]
        sampler: {eps: 1.0e-4, gamma: 1000, nbeta: 10, chains: 2, draws: 8, burn_in: 2, batch_size: 8}
        analyses:
          - {kind: bif, source: query}
          - {kind: class_bif, observable: query}
          - {kind: induction_score, n_seqs: 4}
        """,
    )
    sbif("run", str(spec), cache=cache_path)
    ckpts = _json("SELECT step, source FROM checkpoints ORDER BY step", cache=cache_path)
    assert [c["step"] for c in ckpts] == [100, 200] and ckpts[0]["source"].endswith("step100")
    bif = _json("SELECT step, count(*) AS n FROM bif GROUP BY step ORDER BY step", cache=cache_path)
    assert [b["n"] for b in bif] == [16, 16]
    assert _json("SELECT count(*) AS n FROM class_bif", cache=cache_path)[0]["n"] > 0
    assert len(_json("SELECT * FROM induction_score", cache=cache_path)) == 2
    assert "nothing to compute" in sbif("run", str(spec), cache=cache_path).stdout
