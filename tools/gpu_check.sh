#!/usr/bin/env bash
# The GPU check in one call (see tools/gpu_check.py): tools/gpu_check.sh [--cpu] [OUT.json] [--key=value ...]
#   --cpu      the dry run on the CPU, tiny, in a minute or two (the tests run it)
#   OUT.json   where the numbers go (default gpu_check.json)
cd "$(dirname "$0")/.." || exit 2
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
args=()
for arg in "$@"; do
  case "$arg" in
    --cpu) args+=(--cpu=True) ;;
    --*) args+=("$arg") ;;
    *) args+=("--out=$arg") ;;
  esac
done
exec "$PY" tools/gpu_check.py "${args[@]}"
