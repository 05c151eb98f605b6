#!/usr/bin/env bash
# Sets up the machine (idempotently) and runs the default test suites: unit and numerics.
# Extra arguments go to pytest (e.g. --runslow, -k euler).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1  # everything is local; never ask a hub
exec "${PYTHON:-python3}" -m pytest -ra "$@"
