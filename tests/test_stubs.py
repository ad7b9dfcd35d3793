"""The type stubs of the compiled modules (python/rnncore/_core.pyi: the engine, whichever level's
module _core_<level> runs; _cuda.pyi) say what the modules have: the same public names, and for every function and method the same parameters, in
the same order, with a default exactly where the binding has one. Read from the bindings'
signatures (pybind11 writes `name(arg: type = default, ...) -> type` as each docstring's first
line), so a binding added, removed or changed without its stub fails here."""
import ast
import importlib
import re
from pathlib import Path

import pytest

import rnncore
from rnncore import _ext
from rnncore._ext import cuda_module

PACKAGE = Path(rnncore.__file__).parent
SOURCE = Path(__file__).resolve().parents[1] / "python" / "rnncore"


def split_top_level(text):
    """Splits at commas outside brackets and quotes."""
    parts, depth, quote, current = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += ch
    if current.strip():
        parts.append(current)
    return [p.strip() for p in parts]


def runtime_parameters(obj, name):
    """[(parameter, has default)] from a pybind11 docstring's signature line (self dropped)."""
    doc = (obj.__doc__ or "").lstrip()
    m = re.match(rf"{re.escape(name)}\((.*?)\)\s*->", doc.splitlines()[0] if doc else "")
    assert m, f"{name}: no signature line in its docstring: {doc[:80]!r}"
    params = []
    for part in split_top_level(m.group(1)):
        pname = part.split(":", 1)[0].split("=", 1)[0].strip()
        if pname != "self":
            params.append((pname, "=" in part))
    return params


def stub_parameters(fn):
    args = fn.args
    names = [a.arg for a in args.posonlyargs + args.args]
    defaults = [False] * (len(names) - len(args.defaults)) + [True] * len(args.defaults)
    pairs = list(zip(names, defaults))
    return [p for p in pairs if p[0] != "self"]


def stub_of(module_name):
    tree = ast.parse((SOURCE / f"{module_name}.pyi").read_text())
    top, classes = {}, {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            top[node.name] = node
        elif isinstance(node, ast.ClassDef):
            classes[node.name] = {n.name: n for n in node.body if isinstance(n, ast.FunctionDef)}
            top[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            top[node.target.id] = node
    return {k: v for k, v in top.items() if not k.startswith("_") or k == "__version__"}, classes


def compiled(module_name):
    if module_name == "_core":  # the engine module of the level chosen here (_core_avx2, ...)
        return _ext.core
    module, why = cuda_module()
    if module is None:
        pytest.skip(why)
    return module


@pytest.mark.parametrize("module_name", ["_core", "_cuda"])
def test_stub_lists_the_same_names(module_name):
    module = compiled(module_name)
    top, _ = stub_of(module_name)
    public = {n for n in dir(module) if not n.startswith("_") or n == "__version__"}
    assert set(top) == public, (f"{module_name}.pyi and rnncore.{module_name} differ: only in "
                                f"the stub {sorted(set(top) - public)}, only compiled "
                                f"{sorted(public - set(top))}")


@pytest.mark.parametrize("module_name", ["_core", "_cuda"])
def test_stub_signatures_match(module_name):
    module = compiled(module_name)
    top, classes = stub_of(module_name)
    checked = 0
    for name, node in top.items():
        obj = getattr(module, name)
        if isinstance(node, ast.FunctionDef):
            assert stub_parameters(node) == runtime_parameters(obj, name), name
            checked += 1
        elif isinstance(node, ast.ClassDef):
            methods = classes[name]
            # a class without a constructor binding (StepRecord) has pybind11's refusing __init__
            runtime = {n for n, v in vars(obj).items()
                       if not n.startswith("_") or
                       (n == "__init__" and "__init__(" in (v.__doc__ or ""))}
            assert set(methods) == runtime, (name, set(methods) ^ runtime)
            for mname, fn in methods.items():
                attr = getattr(obj, mname)
                if isinstance(attr, property):
                    continue
                assert stub_parameters(fn) == runtime_parameters(attr, mname), f"{name}.{mname}"
                checked += 1
    assert checked > 5


def test_the_package_ships_its_types():
    assert (PACKAGE / "py.typed").exists()
    assert (PACKAGE / "_core.pyi").exists()
