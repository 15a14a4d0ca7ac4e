#!/usr/bin/env bash
# Create benchmarks/.venv-ray: a separate venv with Ray + numpy for bench_core.py.
# Ray is kept out of the project's venv (it conflicts with starburst's dependency pins).
#
#   bash benchmarks/setup_ray.sh            # ray==2.60.0 (the version the README figures used)
#   RAY_SPEC=ray bash benchmarks/setup_ray.sh   # latest Ray
#   PYTHON=python3.12 bash benchmarks/setup_ray.sh
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv-ray"
PYTHON="${PYTHON:-python3}"
RAY_SPEC="${RAY_SPEC:-ray==2.60.0}"

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install --disable-pip-version-check -q "$RAY_SPEC" numpy
end=$(date +%s)

"$VENV/bin/python" -c "import ray, numpy; print('ray', ray.__version__, '| numpy', numpy.__version__)"
echo "venv: $VENV ($(du -sh "$VENV" | cut -f1)), took $((end - start)) s"
echo "run: .venv/bin/python benchmarks/bench_core.py   (from the repo root)"
