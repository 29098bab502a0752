#!/usr/bin/env bash
# Runs the attention kernels on the CPU emulator (emu_cuda.h) against fp64 references:
#   tests/ops/emu/run.sh [quick] [--asan]
# Needs g++ (C++20) and the CUDA headers ($EMU_CUDA_INCLUDE, else $CUDA_HOME/include, else
# /usr/local/cuda/include), not a GPU and not LibTorch. Both schedule orders run (threads in
# index order, then reversed). Slow (every CUDA thread is a fiber): about a minute for `quick`
# (the CTest `attention_kernels_emulated`), a few for the full set.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../../.." && pwd)
cuda_inc=${EMU_CUDA_INCLUDE:-${CUDA_HOME:-/usr/local/cuda}/include}
out=${TMPDIR:-/tmp}/moetron-emu-$$
mkdir -p "$out"
trap 'rm -rf "$out"' EXIT
mode=""
flags=(-O1 -g)
for arg in "$@"; do
  case $arg in
    quick) mode=quick ;;
    --asan) flags=(-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer) ;;
    *) echo "usage: $0 [quick] [--asan]" >&2; exit 2 ;;
  esac
done
src=${EMU_KERNELS_DIR:-$repo/kernels/attention}  # another copy of the sources (mutation tests)
for f in mla_attention latent_decode; do
  python3 "$here/emulate.py" "$src/$f.cu" "$out/$f.cpp"
done
g++ -std=c++20 "${flags[@]}" -w -include "$here/emu_cuda.h" -I"$cuda_inc" \
  -I"$repo/kernels/include" -I"$src" \
  "$out/mla_attention.cpp" "$out/latent_decode.cpp" "$here/attention_emu_test.cpp" \
  -o "$out/attention_emu_test"
export ASAN_OPTIONS=detect_stack_use_after_return=0
for order in forward reverse; do
  echo "== schedule: $order"
  EMU_SCHEDULE=$order "$out/attention_emu_test" $mode
done
