"""Import and call user factories (`kind: python`), fingerprinting their code so edits invalidate the cache."""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import ContractError
from .hashing import file_sha256, sha256_hex


def resolve(factory: str, base_dir: Path | None = None) -> Callable:
    """'pkg.module:function' -> the function; the spec's folder is importable while the module is imported (for
    modules next to the spec), and taken off sys.path again so that one spec's folder cannot shadow another's."""
    module_name, _, func_name = factory.partition(":")
    added = base_dir is not None and str(base_dir) not in sys.path
    if added:
        sys.path.insert(0, str(base_dir))
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ContractError(
            f"factory {factory!r}: cannot import module {module_name!r} ({e}); "
            "hint: install it or put it next to the spec file"
        ) from None
    finally:
        if added:
            sys.path.remove(str(base_dir))
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise ContractError(f"factory {factory!r}: module {module_name!r} has no callable {func_name!r}")
    return fn


def code_fingerprint(fn: Callable) -> str:
    """Hash of the source file defining `fn`: anything we cannot fingerprint forces a miss, never a hit."""
    try:
        path = inspect.getsourcefile(fn)
        if path and Path(path).exists():
            return file_sha256(path)
    except TypeError:
        pass
    return sha256_hex(f"unfingerprintable:{id(fn)}:{__import__('time').time_ns()}")
