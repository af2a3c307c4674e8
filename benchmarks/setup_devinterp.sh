#!/usr/bin/env bash
# Make benchmarks/.venv-devinterp: a side environment that holds devinterp and its extra dependencies and
# sees the project's own environment (same torch, same numpy, same sbif_dsl) through a .pth hook.
# The project's default install is untouched: nothing is installed into the project's venv.
#
#   bash benchmarks/setup_devinterp.sh                      # from PyPI
#   bash benchmarks/setup_devinterp.sh --find-links WHEELS  # offline, from a folder of carried wheels
#
# PROJECT_PYTHON (default .venv/bin/python) names the project's interpreter, e.g. on a GPU machine whose
# CUDA torch lives elsewhere.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
project_python="${PROJECT_PYTHON:-$root/.venv/bin/python}"
side="$here/.venv-devinterp"
pip_args=()
if [[ "${1:-}" == "--find-links" ]]; then
  pip_args=(--no-index --find-links "$2")
fi

base_python="$("$project_python" -c 'import sys; print(sys._base_executable)')"
project_site="$("$project_python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$base_python" -m venv "$side"
side_site="$("$side/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# addsitedir (not a bare path) so the project's own .pth files (the editable sbif_dsl install) are processed too.
echo "import site; site.addsitedir('$project_site')" > "$side_site/_sbif_project_env.pth"
"$side/bin/python" -m pip install --quiet "${pip_args[@]}" "devinterp==2.0.1"
"$side/bin/python" - <<'PY'
import devinterp, torch, sbif_dsl, importlib.metadata as md
print("devinterp", md.version("devinterp"), "| torch", torch.__version__, "from", torch.__file__)
PY
