"""Type information (issue 19): the package ships py.typed and stubs for its compiled modules,
and a user's script (tests/typing/user_script.py: the modules, cells, the training layer,
checkpoints and rnncore.torch) passes `mypy --strict`, with the modules' results typed as numpy
arrays rather than Any (assert_type fails on Any)."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import rnncore

SCRIPT = Path(__file__).parent / "typing" / "user_script.py"


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None,
                    reason="mypy not installed (it is in the test extra: pip install '.[test]')")
def test_a_user_script_passes_mypy_strict(tmp_path):
    env = dict(os.environ)
    # An installed rnncore (site-packages) is found by mypy itself, and mypy refuses
    # site-packages on MYPYPATH; a source checkout run with PYTHONPATH is pointed at.
    home = Path(rnncore.__file__).resolve().parent.parent
    if home.name not in ("site-packages", "dist-packages"):
        env["MYPYPATH"] = str(home)
    out = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                          "--cache-dir", str(tmp_path), str(SCRIPT)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_script_runs(tmp_path):
    spec = importlib.util.spec_from_file_location("user_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    loss = module.train(2, str(tmp_path / "typed.safetensors"))
    assert loss == loss  # finite: the script trained
