#!/usr/bin/env bash
# Installs the pinned reference peers into moetron's venv and regenerates the golden fixtures
# when the generating scripts or the pins change. Usage: make_fixtures.sh PYTHON OUT_DIR
set -euo pipefail

python=$1
out=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Pinned peers: the fixtures are only as reproducible as these versions.
peers=(transformers==5.24.0 safetensors==0.8.0 tokenizers==0.23.3
       math-verify==0.9.0 latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2)

missing=()
for spec in "${peers[@]}"; do
  name=${spec%%==*}
  want=${spec##*==}
  have=$("$python" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)
  [ "$have" = "$want" ] || missing+=("$spec")
done
if ((${#missing[@]})); then
  echo "[fixtures] installing ${missing[*]} into $(dirname "$(dirname "$python")")" >&2
  "$python" -m pip install -q "${missing[@]}"
fi

stamp=$(cat "$here"/fixtures/*.py "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$out/.stamp" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi
echo "[fixtures] generating into $out" >&2
rm -rf "$out.partial"
mkdir -p "$out.partial"
export PYTHONHASHSEED=0 OMP_NUM_THREADS=1 RAYON_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
export HF_HUB_DISABLE_PROGRESS_BARS=1
# generator script -> output folder under $out
generators=(
  "hf_deepseek_v3.py --out $out.partial/hf"
  "hf_model_logits.py $out.partial"
  "hf_tokenizers.py --out $out.partial/tokenizers"
  "math_verify_cases.py --out $out.partial/math_verify"
)
for g in "${generators[@]}"; do
  script=${g%% *}
  # shellcheck disable=SC2086
  if ! "$python" "$here/fixtures/$script" ${g#* } >>"$out.partial/log.txt" 2>&1; then
    cat "$out.partial/log.txt" >&2
    echo "[fixtures] error: scripts/fixtures/$script failed (log above)" >&2
    exit 1
  fi
done
printf '%s' "$stamp" >"$out.partial/.stamp"
rm -rf "$out"
mv "$out.partial" "$out"
