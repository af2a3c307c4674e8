#!/usr/bin/env bash
# Make benchmarks/.venv-dattri: a side environment holding dattri 0.3 that sees the project's own environment
# (same torch, numpy, sbif_dsl) through a .pth hook, as setup_devinterp.sh does for devinterp. Nothing is installed
# into the project's venv.
#
#   bash benchmarks/setup_dattri.sh                      # from PyPI
#   bash benchmarks/setup_dattri.sh --find-links WHEELS  # offline, from a folder of carried wheels
#
# PROJECT_PYTHON (default .venv/bin/python) names the project's interpreter.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
project_python="${PROJECT_PYTHON:-$root/.venv/bin/python}"
side="$here/.venv-dattri"
pip_args=()
if [[ "${1:-}" == "--find-links" ]]; then
  pip_args=(--no-index --find-links "$2")
fi

base_python="$("$project_python" -c 'import sys; print(sys._base_executable)')"
project_site="$("$project_python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$base_python" -m venv "$side"
side_site="$("$side/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "import site; site.addsitedir('$project_site')" > "$side_site/_sbif_project_env.pth"
"$side/bin/python" -m pip install --quiet "${pip_args[@]}" "dattri==0.3.0"
"$side/bin/python" - <<'PY'
import dattri, torch, importlib.metadata as md
print("dattri", md.version("dattri"), "| torch", torch.__version__, "from", torch.__file__)
PY
