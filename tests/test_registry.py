"""One list of cells: the C++ registry (cpp/include/rnncore/cells.hpp), what Python reads of it,
the reference's table and the public classes agree, and adding a cell touches three places
(its header, its registry line, its reference step) plus, if it is public, a `variants` entry.
docs/adding_a_cell.md is the recipe these tests hold to."""
import ast
import io
import pathlib
import re
import subprocess
import sys
import tokenize

import numpy as np
import pytest

import rnncore
from rnncore._ext import core as _core
from rnncore.nn import registry as _registry
from rnncore.testing import reference

ROOT = pathlib.Path(__file__).resolve().parent.parent
REGISTRY = ROOT / "cpp/include/rnncore/cells.hpp"
CELL_HEADERS = ROOT / "cpp/include/rnncore/cells"
NAMES = [c["name"] for c in _core.CELLS]


# ---- the lists agree -------------------------------------------------------------------------
def test_core_python_and_reference_list_the_same_cells_in_the_same_order():
    assert NAMES, "the C++ registry is empty"
    assert list(_registry.CELLS) == NAMES
    assert list(reference.STEPS) == NAMES, "reference.STEPS must follow the registry's order"
    assert list(reference.CELLS) == NAMES


@pytest.mark.parametrize("entry", _core.CELLS, ids=NAMES)
def test_shapes_agree(entry):
    name = entry["name"]
    assert set(entry) == {"name", "gates", "states", "peephole_rows", "stash_slots"}
    info = _registry.CELLS[name]
    assert info._asdict() == entry
    step = reference.STEPS[name]
    assert (step.gates, step.states, step.peephole_rows) == \
        (entry["gates"], entry["states"], entry["peephole_rows"])
    assert reference.num_gates(name) == entry["gates"]
    assert reference.has_cell_state(name) == (entry["states"] == 2)


def test_reference_does_not_import_the_core():
    # It is the oracle of the core, so it must not lean on it: load the file on its own.
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('ref', {str(ROOT / 'python/rnncore/testing/reference.py')!r})\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "print(sorted(n for n in sys.modules if n.startswith('rnncore')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


# ---- every registry cell is public -----------------------------------------------------------
def check_param_shapes(params, suffix, info, I, H):
    G = info.gates
    expected = {"weight_ih": (G * H, I), "weight_hh": (G * H, H), "bias_ih": (G * H,),
                "bias_hh": (G * H,)}
    if info.peephole_rows:
        expected["weight_peephole"] = (info.peephole_rows, H)
    assert {k: v.shape for k, v in params.items()} == {k + suffix: s for k, s in expected.items()}


@pytest.mark.parametrize("name", NAMES)
def test_every_cell_has_a_public_module_and_cell_class(name):
    I, H = 3, 5
    info = _registry.CELLS[name]
    for variant, make, suffix in ((_registry.module_variant, _registry.make_module, "_l0"),
                                  (_registry.cell_variant, _registry.make_cell, "")):
        try:
            cls, options = variant(name)
        except KeyError:
            pytest.fail(f"no public class declares {name!r} in its `variants`")
        assert getattr(rnncore, cls.__name__, None) is cls, f"{cls.__name__} is not public"
        for m in (cls(I, H, **options), make(name, I, H)):
            assert type(m) is cls and m.cell == name
            check_param_shapes(m.params, suffix, info, I, H)


@pytest.mark.parametrize("make", [_registry.make_module, _registry.make_cell])
def test_unknown_cell_names_are_rejected(make):
    with pytest.raises(ValueError, match="unknown cell 'lstn'.*lstm"):
        make("lstn", 3, 4)


# ---- adding a cell is three places, checked by counting --------------------------------------
SCANNED = ("cpp", "bindings", "python/rnncore")
# Not code that lists cells but data about some of them: the benchmark's measured
# configurations (from the performance issues), as when it lived in bench/.
NOT_SCANNED = {"python/rnncore/apps/bench/configs.py"}
CPP_SUFFIXES = {".hpp", ".h", ".cpp", ".cc", ".cu", ".cuh", ".in"}
# The public-class files may name a cell only inside a `variants = {...}` mapping.
VARIANT_FILES = {"python/rnncore/nn/recurrent.py", "python/rnncore/nn/cells.py"}
# (file, cell) pairs allowed outside the three places, each with why. Keep this short:
# test_exceptions_are_still_needed fails once one is no longer used, so stale entries go.
EXCEPTIONS = {
    ("python/rnncore/apps/echo.py", "lstm"): "the CLI's default --cell: one choice, not a list",
    ("python/rnncore/models/lm.py", "lstm"): "the language model's default cell: one choice, not a list",
}

_CPP_TOKEN = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'|[A-Za-z_]\w*',
                        re.S)


def cpp_mentions(text):
    """(identifier or string-literal value, line) for every token outside comments."""
    for m in _CPP_TOKEN.finditer(text):
        tok = m.group()
        if tok.startswith(("//", "/*")):
            continue
        line = text.count("\n", 0, m.start()) + 1
        if tok[0] in "\"'":
            yield tok[1:-1], line
        else:
            yield tok, line


def python_mentions(text):
    """(identifier or string value, line) for every name and plain string literal (docstrings
    and comments are text, not mentions, unless the whole string is the name)."""
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.NAME:
            yield tok.string, tok.start[0]
        elif tok.type == tokenize.STRING:
            try:
                value = ast.literal_eval(tok.string)
            except (ValueError, SyntaxError):
                continue
            if isinstance(value, str):
                yield value, tok.start[0]


def variants_lines(text):
    """Line numbers covered by `variants = ...` assignments."""
    lines = set()
    for node in ast.walk(ast.parse(text)):
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == "variants" for t in targets):
            lines.update(range(node.lineno, node.end_lineno + 1))
    return lines


def scanned_files():
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in NOT_SCANNED:
                continue
            if path.suffix == ".py" or path.suffix in CPP_SUFFIXES:
                yield rel, path.read_text()


def mentions_by_file():
    """name -> {file: [lines]} for every registry name; .py names in VARIANT_FILES count only
    outside `variants` mappings (files inside them are recorded under the key 'variants')."""
    found = {name: {} for name in NAMES}
    for rel, text in scanned_files():
        is_py = rel.endswith(".py")
        allowed_lines = variants_lines(text) if rel in VARIANT_FILES else set()
        for tok, line in (python_mentions(text) if is_py else cpp_mentions(text)):
            if tok in found:
                key = rel if line not in allowed_lines else rel + "::variants"
                found[tok].setdefault(key, []).append(line)
    return found


def registry_headers():
    """name -> the header under cells/ that defines its type (from the X(name, type) lines)."""
    text = REGISTRY.read_text()
    lines = re.findall(r"^\s*X\((\w+),\s*(.*?)\)\s*\\?\s*$", text, re.M)
    assert [n for n, _ in lines] == NAMES, "cells.hpp's X lines and _core.CELLS disagree"
    headers = {}
    for name, cell_type in lines:
        template = re.match(r"\s*(?:::)?(?:\w+::)*(\w+)", cell_type).group(1)
        defining = [p for p in sorted(CELL_HEADERS.glob("*.hpp"))
                    if re.search(rf"\bstruct\s+{template}\b", p.read_text())]
        assert len(defining) == 1, f"{name}: {template} defined in {defining}"
        headers[name] = defining[0].relative_to(ROOT).as_posix()
    return headers


@pytest.fixture(scope="module")
def mentions():
    return mentions_by_file()


@pytest.mark.parametrize("name", NAMES)
def test_adding_a_cell_touches_three_places(name, mentions):
    own_header = registry_headers()[name]
    required = {own_header, "cpp/include/rnncore/cells.hpp", "python/rnncore/testing/reference.py"}
    optional = {f + "::variants" for f in VARIANT_FILES}
    files = mentions[name]
    missing = required - set(files)
    assert not missing, f"{name!r} is not mentioned in {sorted(missing)}"
    extra = {f: lines for f, lines in files.items()
             if f not in required | optional and (f, name) not in EXCEPTIONS}
    assert not extra, (
        f"the cell name {name!r} appears outside the three places (its header {own_header}, "
        f"cells.hpp, reference.py) and the `variants` mappings: "
        + "; ".join(f"{f} line(s) {lines}" for f, lines in sorted(extra.items()))
        + ". Read the registry there instead (docs/adding_a_cell.md).")


def test_exceptions_are_still_needed(mentions):
    stale = sorted(key for key in EXCEPTIONS if key[0] not in mentions[key[1]])
    assert not stale, f"{stale} no longer name the cell: remove them from EXCEPTIONS"
