"""One binary for every x86-64 CPU: the engine is built per instruction-set level and chosen at
import by CPUID (python/rnncore/_ext.py). Every level this CPU runs gives the float64 reference's
results and bitwise-reproducible ones; RNNCORE_ISA forces a level; a CPU below the baseline gets
an ImportError naming what it lacks, checked under QEMU's CPU models when qemu-x86_64 is there
(.ci/run installs Debian's qemu-user): Haswell (AVX2, no AVX-512) must choose the avx2 level and
compute correct results, Nehalem (no AVX) must refuse."""
import json
import os
import shutil
import subprocess
import sys

import pytest

import rnncore
from rnncore import _ext

V3 = {"x86_64_v3": True, "x86_64_v4": False, "brand": "Test CPU", "missing_for_x86_64_v3": []}
V4 = dict(V3, x86_64_v4=True)
OLD = {"x86_64_v3": False, "x86_64_v4": False, "brand": "Old CPU",
       "missing_for_x86_64_v3": ["avx2", "fma"]}

# A forward + backward of a small 2-layer bidirectional LSTM in float64 against reference.py,
# printed as JSON with the level chosen: run in a child so each can choose its own level.
CHECK = r"""
import json, numpy as np, rnncore
from rnncore.testing import reference
from rnncore.nn.registry import make_module
rng = np.random.default_rng(0)
worst, digest = 0.0, []
for cell in ("lstm", "gru", "rnn_tanh"):
    m = make_module(cell, 5, 7, num_layers=1, dtype=np.float64, seed=1)
    x = rng.standard_normal((6, 3, 5))
    y, _ = m(x)
    dx, _ = m.backward(np.ones_like(y))
    p = {short: m.params[name + "_l0"] for short, name in (("w_ih", "weight_ih"),
         ("w_hh", "weight_hh"), ("b_ih", "bias_ih"), ("b_hh", "bias_hh"))}
    n = 2 if cell == "lstm" else 1
    state = tuple(np.zeros((3, 7)) for _ in range(n))
    ref_y, _, cache = reference.forward(cell, x, state, p)
    worst = max(worst, float(abs(y - ref_y).max()))
    digest.append(float(y.sum()) + float(dx.sum()))
print(json.dumps({"info": rnncore.cpu_info(), "worst": worst, "digest": digest}))
"""


def run_check(env_extra=None, prefix=()):
    env = dict(os.environ, **(env_extra or {}))
    out = subprocess.run([*prefix, sys.executable, "-c", CHECK], capture_output=True, text=True,
                         env=env, timeout=900)
    return out


def test_the_choice_follows_the_cpu():
    assert _ext._choose_level(["avx512", "avx2"], V4, None)[0] == "avx512"
    level, why = _ext._choose_level(["avx512", "avx2"], V3, None)
    assert level == "avx2" and "cannot run avx512" in why
    assert _ext._choose_level(["avx512", "avx2"], V4, "avx2") == ("avx2",
                                                                 "forced by RNNCORE_ISA=avx2")
    assert _ext._choose_level(["native"], OLD, None)[0] == "native"


def test_below_the_baseline_is_a_clear_import_error():
    with pytest.raises(ImportError, match="x86-64-v3.*Old CPU lacks: avx2, fma"):
        _ext._choose_level(["avx512", "avx2"], OLD, None)
    with pytest.raises(ImportError, match="cannot run that level"):
        _ext._choose_level(["avx512", "avx2"], V3, "avx512")
    with pytest.raises(ImportError, match="names no level of this build"):
        _ext._choose_level(["avx512", "avx2"], V4, "sse2")


def test_cpu_info_says_what_runs():
    info = rnncore.cpu_info()
    assert info["level"] in info["built_levels"] and info["reason"]
    assert info["bf16_kernel"] == rnncore.bf16_kernel()
    features = info["features"]
    if "avx512" in info["built_levels"] and features["x86_64_v4"] and not info["forced"]:
        assert info["level"] == "avx512"
    elif features["x86_64_v3"] and not info["forced"] and "avx2" in info["built_levels"]:
        assert info["level"] == "avx2"


def levels_this_cpu_runs():
    info = rnncore.cpu_info()
    f = info["features"]
    runs = {"avx512": f["x86_64_v4"], "avx2": f["x86_64_v3"]}
    return [lv for lv in info["built_levels"] if runs.get(lv, True)]


@pytest.mark.parametrize("level", levels_this_cpu_runs())
def test_every_level_this_cpu_runs_is_correct_and_reproducible(level):
    first = run_check({"RNNCORE_ISA": level})
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["info"]["level"] == level and result["info"]["forced"] == level
    assert result["worst"] < 1e-12  # float64: summation order only
    again = json.loads(run_check({"RNNCORE_ISA": level}).stdout)
    assert again["digest"] == result["digest"]  # bitwise, run to run


def test_forcing_an_unknown_level_fails_at_import():
    out = subprocess.run([sys.executable, "-c", "import rnncore"], capture_output=True,
                         text=True, env=dict(os.environ, RNNCORE_ISA="sse9"))
    assert out.returncode == 1
    assert "ImportError: RNNCORE_ISA='sse9' names no level of this build" in out.stderr


QEMU = shutil.which("qemu-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 not installed "
                                "(Debian's qemu-user; .ci/run installs it)")
not_under_asan = pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                                    reason="QEMU does not run the AddressSanitizer build")


@needs_qemu
@not_under_asan
@pytest.mark.slow
def test_an_avx2_only_cpu_chooses_avx2_and_computes_correctly():
    out = run_check(prefix=(QEMU, "-cpu", "Haswell"))
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["info"]["level"] == "avx2"
    assert not result["info"]["features"]["avx512f"]
    assert result["worst"] < 1e-12


@needs_qemu
@not_under_asan
@pytest.mark.slow
def test_a_cpu_below_the_baseline_gets_an_import_error_not_sigill():
    out = subprocess.run([QEMU, "-cpu", "Nehalem", sys.executable, "-c", "import rnncore"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 1, (out.returncode, out.stderr[-2000:])  # not -4 (SIGILL)
    assert "ImportError: rnncore needs an x86-64 CPU with AVX2 and FMA" in out.stderr
    assert "lacks: avx, avx2, fma" in out.stderr
