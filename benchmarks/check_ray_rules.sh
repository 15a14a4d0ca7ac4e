#!/usr/bin/env bash
# Run tests/ray_programs/ray_rules.py (Ray 2.x rules that ported programs rely on, a plain Ray script)
# under real Ray from benchmarks/.venv-ray (bash benchmarks/setup_ray.sh), to show that the rules the
# suite checks against starburst are Ray's. Prints one "ok <rule>" per rule, then ALL RULES HOLD.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="$HERE/.venv-ray/bin/python"
if [ ! -x "$PY" ]; then
    echo "no Ray venv: run 'bash benchmarks/setup_ray.sh' first" >&2
    exit 2
fi
cd "$(mktemp -d)"
exec "$PY" "$HERE/../tests/ray_programs/ray_rules.py"
