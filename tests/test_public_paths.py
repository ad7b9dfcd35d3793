"""Every import path docs/api.md lists ("Import paths") works and offers the names it lists; a
moved module is the same object under its public name and its home (rnncore.PUBLIC_MODULES)."""
import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

import rnncore

API = Path(__file__).resolve().parents[1] / "docs" / "api.md"
OPTIONAL = {"rnncore.torch": "torch", "rnncore.distributed": "torch", "rnncore.onnx": "onnx",
            "rnncore.keras": "keras"}


def documented_paths():
    """(import path, [names]) for every row of the table under '## Import paths'."""
    text = API.read_text()
    section = text.split("## Import paths", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`rnncore"):
            continue
        names = re.findall(r"`([A-Za-z_][\w]*)`", cells[1])
        for path in re.findall(r"`(rnncore[\w.]*)`", cells[0]):
            rows.append((path, names))
    return rows


ROWS = documented_paths()


def test_the_table_is_read():
    paths = [p for p, _ in ROWS]
    assert len(paths) > 30 and "rnncore.optim" in paths and "rnncore.torch" in paths
    # every public name of the face's table is documented
    assert {f"rnncore.{n}" for n in rnncore.PUBLIC_MODULES} <= set(paths)


@pytest.mark.parametrize("path,names", ROWS, ids=[p for p, _ in ROWS])
def test_documented_import_path(path, names):
    needs = OPTIONAL.get(path)
    if needs and importlib.util.find_spec(needs) is None:
        pytest.skip(f"{path} needs {needs}, which is not installed")
    module = importlib.import_module(path)
    missing = [n for n in names if not hasattr(module, n)]
    assert not missing, f"{path} lacks {missing}"
    leaf = path.rsplit(".", 1)[-1]
    if path != "rnncore" and leaf in rnncore.PUBLIC_MODULES:
        assert module is importlib.import_module(rnncore.PUBLIC_MODULES[leaf])
        assert getattr(rnncore, leaf) is module
        # the real module keeps its own name and spec (pickles and reloads see its home)
        assert module.__spec__.name == rnncore.PUBLIC_MODULES[leaf] == module.__name__


def test_from_imports_of_old_paths_in_a_fresh_interpreter():
    # `from rnncore.X import Y` before anything imported rnncore.X (the programs load lazily)
    code = ("from rnncore.sentiment import SentimentClassifier\n"
            "from rnncore.ctc import ctc_loss\n"
            "from rnncore.lm import LanguageModel\n"
            "import rnncore.experiments as E, sys\n"
            "assert 'rnncore.apps.experiments' in sys.modules and E.adding_problem\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"  # and none of it imported torch


def test_import_rnncore_loads_no_program():
    code = ("import rnncore, sys\n"
            "print(sorted(n for n in sys.modules if n.startswith(('rnncore.apps', "
            "'rnncore.torch', 'rnncore.onnx', 'rnncore.keras'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
