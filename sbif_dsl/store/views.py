"""The stable SQL surface: views with readable columns (study, step, sample names), never internal hashes.

They are TEMP views created on every connection, so they work on read-only connections and pick up the
trace files present at query time.
"""

from __future__ import annotations

from pathlib import Path

# Each stage of a study, with the study's name; the join that scopes every other view to a study.
_SCOPE = "study_stages ss JOIN stage_registry sr ON sr.key = ss.key"

VIEWS: dict[str, str] = {
    "studies": """
        SELECT study, title, description, spec_path, spec_hash, spec_yaml, seed, updated_at FROM study_registry""",
    "stages": f"""
        SELECT ss.study, sr.key, sr.kind, sr.step, sr.analysis, sr.label, 'complete' AS status, sr.created_at,
               sr.wall_s, sr.device, sr.seed,
               json_extract_string(sr.provenance, '$.sbif_dsl') AS sbif_version,
               json_extract_string(sr.provenance, '$.torch') AS torch_version,
               json_extract_string(sr.provenance, '$.python') AS python_version,
               json_extract_string(sr.provenance, '$.host') AS host,
               json_extract_string(sr.provenance, '$.node_ip') AS node_ip,
               TRY_CAST(json_extract_string(sr.provenance, '$.threads') AS INTEGER) AS threads
        FROM {_SCOPE}""",
    "checkpoints": f"""
        SELECT ss.study, c.step, sr.key, c.weights_sha256, c.source, c.train_loss
        FROM {_SCOPE} JOIN r_checkpoints c ON c.key = sr.key""",
    "training_curve": f"""
        SELECT DISTINCT ON (ss.study, t.step) ss.study, t.step, t.loss
        FROM {_SCOPE} JOIN r_training_curve t ON t.key = sr.key
        ORDER BY ss.study, t.step""",
    "samples": f"""
        SELECT ss.study, s.data_set, s.sample_idx, s.sample_name
        FROM {_SCOPE} JOIN r_samples s ON s.key = sr.key""",
    "batch_losses": f"""
        SELECT ss.study, sr.step, b.chain, b.draw, b.loss
        FROM {_SCOPE} JOIN r_batch_losses b ON b.key = sr.key""",
    "bif": f"""
        SELECT ss.study, sr.step, sr.analysis,
               b.source_observable, b.source_idx, src.sample_name AS source,
               b.target_observable, b.target_idx, tgt.sample_name AS target,
               b.bif_cov, b.bif_corr, b.value
        FROM {_SCOPE} JOIN r_bif b ON b.key = sr.key
        JOIN r_tracked src ON src.key = sr.parent AND src.observable = b.source_observable
                          AND src.sample_idx = b.source_idx
        JOIN r_tracked tgt ON tgt.key = sr.parent AND tgt.observable = b.target_observable
                          AND tgt.sample_idx = b.target_idx""",
    "llc": f"""
        SELECT ss.study, sr.step, sr.analysis, l.chain, l.llc, l.init_loss, l.mean_loss
        FROM {_SCOPE} JOIN r_llc l ON l.key = sr.key""",
    "llc_summary": f"""
        SELECT ss.study, sr.step, sr.analysis, avg(l.llc) AS llc_mean, stddev_samp(l.llc) AS llc_std,
               count(*) AS chains
        FROM {_SCOPE} JOIN r_llc l ON l.key = sr.key
        GROUP BY ALL ORDER BY ss.study, sr.analysis, sr.step""",
    "loss_kernel": f"""
        SELECT ss.study, sr.step, sr.analysis, k.observable, k.i, a.sample_name AS a, k.j, b.sample_name AS b,
               k.cov, k.corr
        FROM {_SCOPE} JOIN r_loss_kernel k ON k.key = sr.key
        JOIN r_tracked a ON a.key = sr.parent AND a.observable = k.observable AND a.sample_idx = k.i
        JOIN r_tracked b ON b.key = sr.parent AND b.observable = k.observable AND b.sample_idx = k.j""",
    "tokens": f"""
        SELECT ss.study, t.data_set, t.sample_idx, s.sample_name, t.pos, t.token_id, t.token_text,
               list(c.class ORDER BY c.class) FILTER (c.class IS NOT NULL) AS classes
        FROM {_SCOPE} JOIN r_tokens t ON t.key = sr.key
        JOIN r_samples s ON s.key = json_extract_string(sr.inputs, '$[0]')
                        AND s.data_set = t.data_set AND s.sample_idx = t.sample_idx
        LEFT JOIN r_token_classes c ON c.key = t.key AND c.data_set = t.data_set
                                   AND c.sample_idx = t.sample_idx AND c.pos = t.pos
        GROUP BY ALL""",
    "class_bif": f"""
        SELECT ss.study, sr.step, sr.analysis, b.observable, b.source_class, b.target_class, b.bif_cov, b.bif_corr,
               b.n_source, b.n_target
        FROM {_SCOPE} JOIN r_class_bif b ON b.key = sr.key""",
    "token_bif": f"""
        SELECT ss.study, sr.step, sr.analysis, b.observable,
               src.sample_name AS source, b.source_pos, b.target_pos, tgt.sample_name AS target,
               b.bif_cov, b.bif_corr
        FROM {_SCOPE} JOIN r_token_bif b ON b.key = sr.key
        JOIN r_tracked src ON src.key = sr.parent AND src.observable = b.observable AND src.sample_idx = b.source_idx
        JOIN r_tracked tgt ON tgt.key = sr.parent AND tgt.observable = b.observable
                          AND tgt.sample_idx = b.target_idx""",
    "induction_score": f"""
        SELECT ss.study, sr.step, sr.analysis, i.score, i.loss_first_copy, i.loss_second_copy
        FROM {_SCOPE} JOIN r_induction i ON i.key = sr.key""",
    "class_loss": f"""
        SELECT ss.study, sr.step, sr.analysis, l.observable, l.class, l.loss, l.n_tokens
        FROM {_SCOPE} JOIN r_class_loss l ON l.key = sr.key""",
}

# Validation views (stages/loo.py, stages/agreement.py, calibrate.py). Calibration stages belong to no spec: they
# are registered under the pseudo-study '<study>:calibrate' so that `gc` keeps them; the views strip the suffix.
CALIBRATION_SUFFIX = ":calibrate"
_CAL_SCOPE = f"{_SCOPE} JOIN r_calibration c ON c.key = sr.key"
_CAL_STUDY = f"left(ss.study, length(ss.study) - {len(CALIBRATION_SUFFIX)}) AS study"
_CAL_WHERE = f"WHERE ss.study LIKE '%{CALIBRATION_SUFFIX}'"
_AVG_RANK = "rank() OVER (PARTITION BY {p} ORDER BY {x}) + (count(*) OVER (PARTITION BY {p}, {x}) - 1) / 2.0"
_AGREE = """count(*) AS n_pairs,
               CASE WHEN stddev_samp(bif) > 0 AND stddev_samp(loo) > 0 THEN corr(bif, loo) END AS pearson,
               CASE WHEN stddev_samp(bif) > 0 AND stddev_samp(loo) > 0 THEN corr({rb}, {rl}) END AS spearman,
               avg(CASE WHEN sign(bif) = sign(loo) THEN 1.0 ELSE 0.0 END) FILTER (WHERE loo <> 0) AS sign_agreement,
               sum(abs(loo) * CASE WHEN sign(bif) = sign(loo) THEN 1.0 ELSE 0.0 END) / nullif(sum(abs(loo)), 0)
                   AS sign_agreement_weighted"""

VIEWS.update(
    {
        "loo": f"""
        SELECT ss.study, l.step, sr.analysis, l.left_out_idx, l.left_out, l.target_set, l.target_idx, l.target,
               l.loss_full, l.loss_loo, l.delta
        FROM {_SCOPE} JOIN r_loo l ON l.key = sr.key""",
        "agreement_pairs": f"""
        SELECT c.study, c.analysis, c.bif_analysis, c.loo_analysis, c.value AS bif_value, b.step,
               b.source_idx, b.source, b.target_idx, b.target,
               CASE c.value WHEN 'bif_cov' THEN b.bif_cov ELSE b.bif_corr END AS bif, l.delta AS loo
        FROM (SELECT ss.study, sr.analysis, a.bif_analysis, a.loo_analysis, a.value, a.diagonal
              FROM {_SCOPE} JOIN r_agreement a ON a.key = sr.key) c
        JOIN bif b ON b.study = c.study AND b.analysis = c.bif_analysis
        JOIN loo l ON l.study = c.study AND l.analysis = c.loo_analysis AND l.step = b.step
                  AND l.left_out = b.source AND l.target = b.target
        WHERE c.diagonal OR b.source <> b.target""",
        "agreement": f"""
        WITH r AS (
            SELECT *,
                   {_AVG_RANK.format(p="study, analysis, step", x="bif")} AS rb_step,
                   {_AVG_RANK.format(p="study, analysis, step", x="loo")} AS rl_step,
                   {_AVG_RANK.format(p="study, analysis", x="bif")} AS rb_all,
                   {_AVG_RANK.format(p="study, analysis", x="loo")} AS rl_all
            FROM agreement_pairs)
        SELECT study, analysis, bif_analysis, loo_analysis, bif_value, 'checkpoint' AS scope, step,
               {_AGREE.format(rb="rb_step", rl="rl_step")}
        FROM r GROUP BY study, analysis, bif_analysis, loo_analysis, bif_value, step
        UNION ALL
        SELECT study, analysis, bif_analysis, loo_analysis, bif_value, 'overall' AS scope, NULL::BIGINT AS step,
               {_AGREE.format(rb="rb_all", rl="rl_all")}
        FROM r GROUP BY study, analysis, bif_analysis, loo_analysis, bif_value""",
        "calibration": f"""
        SELECT {_CAL_STUDY}, sr.step, c.method, c.eps, c.gamma, c.nbeta, c.chains, c.draws, c.burn_in,
               c.steps_between_draws, c.batch_size, c.llc_mean, c.llc_std, c.trend, c.half_shift, c.stationary,
               c.acceptance, c.divergences, c.init_loss, sr.wall_s, sr.key
        FROM {_CAL_SCOPE} {_CAL_WHERE}""",
        "calibration_chains": f"""
        SELECT {_CAL_STUDY}, sr.step, c.method, c.eps, c.gamma, c.nbeta, h.chain, h.llc, h.mean_loss, h.trend,
               h.half_shift, h.acceptance, h.diverged, h.diverged_at, sr.key
        FROM {_CAL_SCOPE} JOIN r_calibration_chains h ON h.key = sr.key {_CAL_WHERE}""",
        "calibration_draws": f"""
        SELECT {_CAL_STUDY}, sr.step, c.method, c.eps, c.gamma, c.nbeta, d.chain, d.draw, d.loss, d.acceptance,
               sr.key
        FROM {_CAL_SCOPE} JOIN r_calibration_draws d ON d.key = sr.key {_CAL_WHERE}""",
    }
)

VIEW_DOCS: dict[str, str] = {
    "studies": "one row per study: title, spec text and hash, seed",
    "stages": "every stage of every study: kind, checkpoint step, wall time, versions, seed, and where it ran "
    "(device, host, Ray node_ip, CPU threads)",
    "checkpoints": "checkpoint steps with weight hashes and the full training loss at that step",
    "training_curve": "training loss over optimizer steps",
    "samples": "samples of each data set (train and query sets)",
    "batch_losses": "SGLD minibatch loss per checkpoint, chain and draw (the LLC's input)",
    "loss_traces": "loss of every tracked sample (token position `pos`, 0 for per-sample losses) at every draw",
    "trace_mixing": "per chain: lag-1 autocorrelation of an observable's mean loss over draws, AR(1) effective draws",
    "bif": "BIF per checkpoint and sample pair: bif_cov = -Cov, bif_corr = -Corr (negative = helpful)",
    "llc": "LLC estimate per checkpoint and chain",
    "llc_summary": "LLC mean and std over chains per checkpoint",
    "loss_kernel": "loss kernel per checkpoint: Cov and Corr of losses (positive sign)",
    "tokens": "every tracked token (pos s = the token that loss position s predicts) with its text and classes",
    "class_bif": "class x class token influence per checkpoint: bif_cov = -Cov, bif_corr = -Corr (block means)",
    "token_bif": "token x token influence for a named slice of sequences and positions",
    "induction_score": "induction score (max over heads) and first/second-copy loss per checkpoint",
    "class_loss": "mean next-token loss per token class per checkpoint",
    "loo": "leave-one-out ground truth: delta = l_target(full run) - l_target(run without left_out) per checkpoint "
    "(negative = helpful, as the BIF)",
    "agreement_pairs": "BIF value and LOO delta side by side for every compared pair and checkpoint",
    "agreement": "BIF vs LOO: Pearson, Spearman, sign agreement per checkpoint (scope 'checkpoint') and pooled over "
    "all checkpoints (scope 'overall', step NULL)",
    "calibration": "`sbif calibrate` grid points: LLC mean/std over chains, stationarity, MALA acceptance, divergences",
    "calibration_chains": "`sbif calibrate` per chain: LLC, trend, acceptance, divergence",
    "calibration_draws": "`sbif calibrate` per draw: minibatch loss and MALA acceptance probability",
}


def traces_view_sql(objects_dir: Path) -> str:
    """Trace files are Parquet artifacts named objects/<kk>/<key>/traces.parquet."""
    files = list(objects_dir.glob("*/*/traces.parquet"))
    if not files:
        return """SELECT NULL::VARCHAR AS study, NULL::BIGINT AS step, NULL::VARCHAR AS observable,
                  NULL::INTEGER AS sample_idx, NULL::VARCHAR AS sample_name, NULL::INTEGER AS pos,
                  NULL::INTEGER AS chain, NULL::INTEGER AS draw, NULL::FLOAT AS loss WHERE false"""
    pattern = str(objects_dir / "*" / "*" / "traces.parquet").replace("'", "''")
    return f"""
        SELECT ss.study, sr.step, t.observable, t.sample_idx, k.sample_name, t.pos, t.chain, t.draw, t.loss
        FROM read_parquet('{pattern}', filename = true) t
        JOIN {_SCOPE} ON sr.key = split_part(replace(t.filename, '\\', '/'), '/', -2)
        JOIN r_tracked k ON k.key = sr.key AND k.observable = t.observable AND k.sample_idx = t.sample_idx"""


def _temp_missing_tables(con) -> None:
    """A cache written by an older version lacks newer r_* tables until its next write: give a (read-only)
    connection empty TEMP stand-ins, so every view exists and simply shows no rows for them."""
    from .schema import TABLES

    have = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE NOT temporary").fetchall()}
    for stmt in TABLES.split(";"):
        words = stmt.split()
        if len(words) > 5 and words[5].startswith("r_") and words[5] not in have:
            con.execute(stmt.replace("CREATE TABLE IF NOT EXISTS", "CREATE TEMP TABLE IF NOT EXISTS", 1))


def create_views(con, objects_dir: Path, extra: dict[str, str] | None = None) -> None:
    _temp_missing_tables(con)
    for name, sql in {**VIEWS, **(extra or {})}.items():
        con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {sql}")
    con.execute(f"CREATE OR REPLACE TEMP VIEW loss_traces AS {traces_view_sql(objects_dir)}")
    con.execute(f"CREATE OR REPLACE TEMP VIEW trace_mixing AS {TRACE_MIXING}")


# How correlated consecutive draws are: few effective draws make BIF entries noisy (benchmarks/README.md).
# Per chain, on the mean loss of an observable's tracked units at each draw; ESS under an AR(1) model.
TRACE_MIXING = """
    WITH m AS (SELECT study, step, observable, chain, draw, avg(loss) AS l FROM loss_traces GROUP BY ALL),
    d AS (SELECT *, l - avg(l) OVER (PARTITION BY study, step, observable, chain) AS x FROM m),
    p AS (SELECT *, lag(x) OVER (PARTITION BY study, step, observable, chain ORDER BY draw) AS x_prev FROM d)
    SELECT study, step, observable, chain, count(*) AS draws,
           sum(x * x_prev) / nullif(sum(x * x), 0) AS lag1_autocorr,
           least(count(*), count(*) * (1 - sum(x * x_prev) / nullif(sum(x * x), 0))
                                     / (1 + sum(x * x_prev) / nullif(sum(x * x), 0))) AS ess_ar1
    FROM p GROUP BY study, step, observable, chain"""


def sql_columns(sql: str) -> list[str]:
    """Columns a query over the views returns, checked against an empty in-memory schema (no cache needed).

    Raises duckdb.Error with DuckDB's message when the SQL is invalid or names unknown views/columns.
    """
    import tempfile

    import duckdb

    from .schema import TABLES

    with duckdb.connect(":memory:") as con, tempfile.TemporaryDirectory() as empty:
        con.execute(TABLES)
        create_views(con, Path(empty))
        return [row[0] for row in con.execute(f"DESCRIBE {sql}").fetchall()]
