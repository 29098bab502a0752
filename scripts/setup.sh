#!/usr/bin/env bash
# Installs moetron's dependencies and builds it. Idempotent: a second run with nothing changed
# only checks and runs an incremental build.
#   Debian packages  : compilers' libraries (yaml-cpp, spdlog, fmt, nlohmann-json, CLI11, PCRE2,
#                      ICU, GoogleTest), ninja and ccache, installed only when missing.
#   LibTorch         : PyPI torch==$MOETRON_TORCH_VERSION in a venv under $MOETRON_CACHE (outside
#                      the repo, keyed by version) so clean clones reuse it.
#   Build            : CMake + Ninja in build/ (MOETRON_BUILD_DIR), ccache in $MOETRON_CACHE/ccache.
# Environment: MOETRON_CACHE (default ~/.cache/moetron), MOETRON_TORCH_VENV (use an existing venv
# or prefix holding torch), MOETRON_BUILD_DIR, MOETRON_BUILD_TYPE, MOETRON_WITH_CUDA, MOETRON_JOBS,
# MOETRON_CMAKE_ARGS (extra configure arguments), MOETRON_SKIP_BUILD=1 (dependencies only).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
torch_version=${MOETRON_TORCH_VERSION:-2.11.0}
cache=${MOETRON_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/moetron}
build_dir=${MOETRON_BUILD_DIR:-$repo/build}
build_type=${MOETRON_BUILD_TYPE:-RelWithDebInfo}
jobs=${MOETRON_JOBS:-$(nproc)}
python=${MOETRON_PYTHON:-python3}

say() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

# ---- Debian packages ---------------------------------------------------------------------
debs=(build-essential cmake ninja-build ccache pkg-config python3-venv
      libyaml-cpp-dev libspdlog-dev libfmt-dev nlohmann-json3-dev libcli11-dev libpcre2-dev
      libicu-dev libgtest-dev libgmock-dev libgloo-dev)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

# ---- LibTorch from PyPI ------------------------------------------------------------------
find_torch_cmake() {  # $1 = python of a venv; prints torch's cmake prefix or nothing
  "$1" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "share", "cmake"))' \
    2>/dev/null || true
}
if [ -n "${MOETRON_TORCH_VENV:-}" ]; then
  venv=$MOETRON_TORCH_VENV
else
  pyver=$("$python" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
  venv=$cache/torch-$torch_version-py$pyver/venv
fi
torch_cmake=""
[ -x "$venv/bin/python" ] && [ -f "$venv/.moetron-complete" ] && torch_cmake=$(find_torch_cmake "$venv/bin/python")
if [ -z "$torch_cmake" ]; then
  [ -z "${MOETRON_TORCH_VENV:-}" ] || [ ! -x "$venv/bin/python" ] || \
    torch_cmake=$(find_torch_cmake "$venv/bin/python")
fi
if [ -z "$torch_cmake" ]; then
  say "installing torch==$torch_version from PyPI into $venv (one time, a few GB)"
  # Install into a temporary venv and rename it at the end, so an interrupted download never
  # leaves a half-installed venv that later runs would trust.
  tmp=$venv.partial.$$
  rm -rf "$tmp"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$tmp"
  "$tmp/bin/python" -m pip install -q --upgrade pip
  "$tmp/bin/python" -m pip install -q "torch==$torch_version"
  rm -rf "$venv"
  mv "$tmp" "$venv"
  # venvs hard-code their path in scripts; recreate the activation metadata for the new path.
  "$python" -m venv --upgrade "$venv" >/dev/null
  touch "$venv/.moetron-complete"
  torch_cmake=$(find_torch_cmake "$venv/bin/python")
  [ -n "$torch_cmake" ] || die "torch was installed into $venv but cannot be imported"
fi
say "LibTorch: $torch_cmake"
# Python tools of the repo (scripts/plot_metrics.py) use the same venv.
if ! "$venv/bin/python" -c 'import numpy, matplotlib' 2>/dev/null; then
  say "installing numpy and matplotlib into $venv"
  "$venv/bin/python" -m pip install -q numpy matplotlib
fi
printf '%s\n' "$venv" >"$repo/.moetron-venv.tmp" && mv "$repo/.moetron-venv.tmp" "$repo/.moetron-venv"

[ "${MOETRON_SKIP_BUILD:-0}" = 1 ] && exit 0

# ---- configure + build -------------------------------------------------------------------
export CCACHE_DIR=${CCACHE_DIR:-$cache/ccache}
export CCACHE_BASEDIR=$repo
export CCACHE_NOHASHDIR=1
export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-10G}
cmake_args=(-G Ninja -S "$repo" -B "$build_dir"
            -DCMAKE_BUILD_TYPE="$build_type"
            -DCMAKE_PREFIX_PATH="$torch_cmake"
            -DMOETRON_WITH_CUDA="${MOETRON_WITH_CUDA:-AUTO}"
            -DMOETRON_PYTHON="$venv/bin/python")
if [ -d /usr/local/cuda/bin ] && ! command -v nvcc >/dev/null; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
# shellcheck disable=SC2206
extra=(${MOETRON_CMAKE_ARGS:-})
stamp="$torch_cmake|${MOETRON_WITH_CUDA:-AUTO}|$build_type|${extra[*]:-}"
if [ ! -f "$build_dir/build.ninja" ] || [ "$(cat "$build_dir/.moetron-stamp" 2>/dev/null)" != "$stamp" ]; then
  say "configuring $build_dir"
  mkdir -p "$build_dir"
  cmake "${cmake_args[@]}" "${extra[@]}" >"$build_dir/configure.log" 2>&1 || {
    cat "$build_dir/configure.log" >&2; die "CMake configure failed (log above)"; }
  printf '%s' "$stamp" >"$build_dir/.moetron-stamp"
fi
say "building with $jobs jobs"
cmake --build "$build_dir" -j "$jobs"
say "done: $build_dir/bin/moetron"
