#!/usr/bin/env bash
# Sets up (if needed), builds, generates the peer fixtures and runs every CPU test through
# CTest. Exits non-zero on any failure. `.ci/run` calls this. Extra arguments go to ctest
# (e.g. `scripts/test.sh -L unit` or `-R Config`).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${MOETRON_BUILD_DIR:-$repo/build}
jobs=${MOETRON_JOBS:-$(nproc)}

"$repo/scripts/setup.sh"
venv=$(cat "$repo/.moetron-venv")

# Fixtures from real peers (HF transformers, tokenizers, ...), made by scripts, never typed.
"$repo/scripts/make_fixtures.sh" "$venv/bin/python" "$build_dir/fixtures"

echo "[test] running ctest in $build_dir" >&2
cd "$build_dir"
# ctest already runs one test per core; one intra-op thread per test keeps OpenMP from
# oversubscribing the cores (its spin-waiting barriers slow down 10x or more when it does).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
ctest --output-on-failure --no-tests=error -j "$jobs" "$@"
