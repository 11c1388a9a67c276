#!/usr/bin/env bash
# Set up everything the tests need, lint, and run the whole suite (slow tests too).
set -euo pipefail
cd "$(dirname "$0")/.."
INFERIS_EXTRAS="${INFERIS_EXTRAS:-test}" bash scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
