#!/usr/bin/env bash
# Sets moetron up if needed, then runs the main job on its built-in default config.
# Usage: scripts/quickstart.sh [overrides...]   e.g. scripts/quickstart.sh train.steps=50
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$repo/scripts/setup.sh"
cd "$repo"
exec build/bin/moetron run configs/quickstart.yaml "$@"
