#!/bin/bash
# Runs ptjf on this machine, passing every argument through:
#   launch/local.sh train --gin_file=runs/ptjf.gin --gin.MODEL_DIR="'/tmp/run'"
#   launch/local.sh sweep --gin_file=experiments/bible_en_fr_tl.gin --parallel 2
# Uses the checkout's .venv when there is one (make install), else the ptjf on PATH.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case "${1:-}" in
  train | sweep) ;;
  *)
    echo "usage: launch/local.sh train|sweep [ptjf arguments…]" >&2
    exit 2
    ;;
esac
if [ -x "$root/.venv/bin/ptjf" ]; then
  exec "$root/.venv/bin/ptjf" "$@"
fi
exec ptjf "$@"
