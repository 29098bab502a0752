#!/usr/bin/env bash
# The GPU checks, in one run on a machine with an NVIDIA GPU and a CUDA PyTorch (the device
# tool's H200: `run` with carry [".gpu_deps"] after scripts/gpu_deps.sh here). Builds moetron
# against that machine's python3 torch and the carried Debian packages, then runs:
#   1. the gpu-labelled tests (CUDA model/checkpoint paths, every CUDA kernel vs its reference),
#   2. the single-rank NCCL process-group test,
#   3. `moetron bench kernels` and short bf16 training / GRPO runs on CUDA,
#      with kernels: reference and kernels: cuda.
# Everything it prints also goes to $OUT/gpu_check.log (the device tool returns $OUT).
# Usage: scripts/gpu_check.sh [build|tests|bench|all|sanitize]   (default all = build, tests,
# bench; sanitize runs compute-sanitizer over the kernel tests of an existing build)
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$repo/gpu_out}
mkdir -p "$out"
exec > >(tee -a "$out/gpu_check.log") 2>&1
what=${1:-all}
py=${MOETRON_GPU_PYTHON:-python3}
deps=$repo/.gpu_deps
prefix=$deps/root
build=${MOETRON_GPU_BUILD_DIR:-$repo/build-gpu}
jobs=${MOETRON_JOBS:-$(nproc)}
say() { printf '\n[gpu_check %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

say "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3
"$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO GPU VISIBLE")'

# ---- the carried Debian packages, unpacked into a private prefix (no dpkg needed) ----------
if [ ! -d "$prefix/usr" ]; then
  say "unpacking $(ls "$deps"/debs/*.deb | wc -l) packages into $prefix"
  "$py" - "$deps/debs" "$prefix" <<'PY'
import io, os, sys, tarfile
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst, exist_ok=True)
for name in sorted(os.listdir(src)):
    data = open(os.path.join(src, name), "rb").read()
    assert data[:8] == b"!<arch>\n", name
    pos = 8
    while pos < len(data):
        header = data[pos:pos + 60]
        member = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = data[pos + 60:pos + 60 + size]
        if member.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                tar.extractall(dst, filter="tar")
        pos += 60 + size + (size & 1)
PY
fi
lib=$prefix/usr/lib/x86_64-linux-gnu
export PKG_CONFIG_PATH=$lib/pkgconfig:$prefix/usr/share/pkgconfig
export PKG_CONFIG_SYSROOT_DIR=$prefix
export LD_LIBRARY_PATH=$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PATH=/usr/local/cuda/bin:$PATH

if [ "$what" = build ] || [ "$what" = all ]; then
  torch_cmake=$("$py" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "share", "cmake"))')
  say "configure ($torch_cmake)"
  cmake -G Ninja -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_PREFIX_PATH="$torch_cmake;$prefix/usr;$lib/cmake" -DICU_ROOT="$prefix/usr" \
    -DMOETRON_WITH_CUDA=ON -DMOETRON_PYTHON="$py" >"$out/configure.log" 2>&1 ||
    { tail -40 "$out/configure.log"; exit 1; }
  [ "${MOETRON_GPU_CONFIGURE_ONLY:-0}" = 1 ] && { say "configured $build"; exit 0; }
  say "build ($jobs jobs)"
  cmake --build "$build" -j "$jobs" --target moetron dist_worker test_distributed test_ops_gpu \
    test_attention_gpu test_model_gpu test_model_attention_gpu test_ckpt_gpu 2>&1 |
    grep -E "error|FAILED|warning: .*spill" | head -40
  [ -x "$build/bin/moetron" ] || { say "build failed"; exit 1; }
fi

if [ "$what" = tests ] || [ "$what" = all ]; then
  say "gpu tests"
  (cd "$build" && ctest -L gpu --output-on-failure --timeout 300 2>&1 | tail -60)
  say "single-rank NCCL group"
  (cd "$build" && ctest -R 'DistributedGpu' --output-on-failure 2>&1 | tail -15)
fi

if [ "$what" = bench ] || [ "$what" = all ]; then
  say "moetron bench kernels"
  "$build/bin/moetron" bench kernels 2>&1 | tail -120
  say "moetron bench train configs/moe-1b.yaml (MFU target 35%)"
  timeout 300 "$build/bin/moetron" bench train "$repo/configs/moe-1b.yaml" --steps 10 --warmup 3 \
    --compare kernels 2>&1 | tail -20
  runs=$out/runs
  common=(train.device=cuda train.dtype=bf16 data.seq_len=128 train.micro_batch_size=8
          train.steps=20 train.eval_every=0 log.every=5 optim.warmup_steps=2 ckpt.save_every=0
          log.run_dir="$runs")
  for impl in reference cuda; do
    say "pretrain on CUDA, bf16, kernels=$impl"
    "$build/bin/moetron" train "$repo/configs/tiny.yaml" "${common[@]}" log.name="pre_$impl" \
      kernels.gate=$impl kernels.permute=$impl kernels.grouped_gemm=$impl \
      kernels.attention=$impl kernels.decode_attention=$impl 2>&1 | tail -6
  done
  say "GRPO step on CUDA, bf16 (from the reference pretraining run)"
  "$build/bin/moetron" train "$repo/configs/tiny.yaml" "${common[@]}" train.stage=grpo \
    train.steps=3 train.init_from="$runs/pre_reference" log.name=grpo 2>&1 | tail -6
fi
if [ "$what" = sanitize ]; then
  say "compute-sanitizer memcheck / racecheck on the kernel tests (Firecracker machines only)"
  for t in test_ops_gpu test_attention_gpu; do
    for tool in memcheck racecheck; do
      timeout 240 compute-sanitizer --tool $tool "$build/bin/$t" 2>&1 | tail -6
    done
  done
fi
say "done"
