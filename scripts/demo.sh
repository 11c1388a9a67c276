#!/usr/bin/env bash
# One command from a fresh machine to a running demo: private Redis with AOF,
# two workers, a scikit-learn model served from Python and from redis-cli.
set -euo pipefail
cd "$(dirname "$0")/.."
INFERIS_EXTRAS="${INFERIS_EXTRAS:-demo}" bash scripts/setup.sh
exec .venv/bin/inferis demo "$@"
