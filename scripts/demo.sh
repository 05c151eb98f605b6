#!/usr/bin/env bash
# Sets up the machine (idempotently) and generates an image with the embedded tiny model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1  # everything is local; never ask a hub
exec "${PYTHON:-python3}" -m wsd generate --prompt "${1:-a lighthouse at dusk}" --seed 42 \
    --out "${2:-lighthouse.png}"
