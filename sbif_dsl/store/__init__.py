"""Storage: DuckDB registry and results, artifact files, atomic commit, locking, gc, SQL views."""

from .duck import StageOutput, StageRecord, Store, default_cache_path, fetch_frame

__all__ = ["StageOutput", "StageRecord", "Store", "default_cache_path", "fetch_frame"]
