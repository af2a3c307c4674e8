"""DuckDB tables of the cache. Result tables (r_*) carry the key of the stage that wrote them."""

SCHEMA_VERSION = 1

TABLES = """
CREATE TABLE IF NOT EXISTS meta (name VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS stage_registry (
    key VARCHAR PRIMARY KEY,
    kind VARCHAR NOT NULL,
    version INTEGER NOT NULL,
    step BIGINT,
    analysis VARCHAR,
    parent VARCHAR,
    label VARCHAR,
    fields JSON,
    inputs JSON,
    provenance JSON,
    device VARCHAR,
    seed BIGINT,
    wall_s DOUBLE,
    created_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS artifacts (
    key VARCHAR NOT NULL, name VARCHAR NOT NULL, relpath VARCHAR NOT NULL, sha256 VARCHAR NOT NULL,
    bytes BIGINT NOT NULL, PRIMARY KEY (key, name)
);
CREATE TABLE IF NOT EXISTS study_registry (
    study VARCHAR PRIMARY KEY, title VARCHAR, description VARCHAR, spec_path VARCHAR, spec_hash VARCHAR,
    spec_yaml VARCHAR, seed BIGINT, updated_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS study_stages (study VARCHAR NOT NULL, key VARCHAR NOT NULL, PRIMARY KEY (study, key));
CREATE TABLE IF NOT EXISTS r_samples (
    key VARCHAR, data_set VARCHAR, sample_idx INTEGER, sample_name VARCHAR
);
CREATE TABLE IF NOT EXISTS r_checkpoints (
    key VARCHAR, step BIGINT, weights_sha256 VARCHAR, source VARCHAR, lineage VARCHAR, train_loss DOUBLE
);
CREATE TABLE IF NOT EXISTS r_training_curve (key VARCHAR, lineage VARCHAR, step BIGINT, loss DOUBLE);
CREATE TABLE IF NOT EXISTS r_tracked (
    key VARCHAR, observable VARCHAR, data_set VARCHAR, sample_idx INTEGER, sample_name VARCHAR
);
CREATE TABLE IF NOT EXISTS r_batch_losses (key VARCHAR, chain INTEGER, draw INTEGER, loss DOUBLE);
CREATE TABLE IF NOT EXISTS r_bif (
    key VARCHAR, source_observable VARCHAR, source_idx INTEGER, target_observable VARCHAR, target_idx INTEGER,
    bif_cov DOUBLE, bif_corr DOUBLE, value DOUBLE
);
CREATE TABLE IF NOT EXISTS r_llc (key VARCHAR, chain INTEGER, llc DOUBLE, init_loss DOUBLE, mean_loss DOUBLE);
CREATE TABLE IF NOT EXISTS r_loss_kernel (
    key VARCHAR, observable VARCHAR, i INTEGER, j INTEGER, cov DOUBLE, corr DOUBLE
);
CREATE TABLE IF NOT EXISTS r_tokens (
    key VARCHAR, data_set VARCHAR, sample_idx INTEGER, pos INTEGER, token_id BIGINT, token_text VARCHAR
);
CREATE TABLE IF NOT EXISTS r_token_classes (
    key VARCHAR, data_set VARCHAR, sample_idx INTEGER, pos INTEGER, class VARCHAR
);
CREATE TABLE IF NOT EXISTS r_class_bif (
    key VARCHAR, observable VARCHAR, source_class VARCHAR, target_class VARCHAR, bif_cov DOUBLE, bif_corr DOUBLE,
    n_source BIGINT, n_target BIGINT
);
CREATE TABLE IF NOT EXISTS r_token_bif (
    key VARCHAR, observable VARCHAR, source_idx INTEGER, source_pos INTEGER, target_idx INTEGER, target_pos INTEGER,
    bif_cov DOUBLE, bif_corr DOUBLE
);
CREATE TABLE IF NOT EXISTS r_induction (key VARCHAR, score DOUBLE, loss_first_copy DOUBLE, loss_second_copy DOUBLE);
CREATE TABLE IF NOT EXISTS r_class_loss (key VARCHAR, observable VARCHAR, class VARCHAR, loss DOUBLE, n_tokens BIGINT);
CREATE TABLE IF NOT EXISTS r_loo (
    key VARCHAR, step BIGINT, left_out_idx INTEGER, left_out VARCHAR, target_set VARCHAR, target_idx INTEGER,
    target VARCHAR, loss_full DOUBLE, loss_loo DOUBLE, delta DOUBLE
);
CREATE TABLE IF NOT EXISTS r_agreement (
    key VARCHAR, bif_analysis VARCHAR, loo_analysis VARCHAR, value VARCHAR, diagonal BOOLEAN
);
CREATE TABLE IF NOT EXISTS r_calibration (
    key VARCHAR, method VARCHAR, eps DOUBLE, gamma DOUBLE, nbeta DOUBLE, chains INTEGER, draws INTEGER,
    burn_in INTEGER, steps_between_draws INTEGER, batch_size INTEGER, init_loss DOUBLE, llc_mean DOUBLE,
    llc_std DOUBLE, trend DOUBLE, half_shift DOUBLE, stationary BOOLEAN, acceptance DOUBLE, divergences INTEGER
);
CREATE TABLE IF NOT EXISTS r_calibration_chains (
    key VARCHAR, chain INTEGER, llc DOUBLE, mean_loss DOUBLE, trend DOUBLE, half_shift DOUBLE, acceptance DOUBLE,
    diverged BOOLEAN, diverged_at INTEGER
);
CREATE TABLE IF NOT EXISTS r_calibration_draws (
    key VARCHAR, chain INTEGER, draw INTEGER, loss DOUBLE, acceptance DOUBLE
);
"""

RESULT_TABLES = [
    "r_samples",
    "r_checkpoints",
    "r_training_curve",
    "r_tracked",
    "r_batch_losses",
    "r_bif",
    "r_llc",
    "r_loss_kernel",
    "r_tokens",
    "r_token_classes",
    "r_class_bif",
    "r_token_bif",
    "r_induction",
    "r_class_loss",
    "r_loo",
    "r_agreement",
    "r_calibration",
    "r_calibration_chains",
    "r_calibration_draws",
]
