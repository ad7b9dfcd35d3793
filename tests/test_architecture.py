"""The package's layering (docs/architecture.md), checked two ways.

Statically: every import statement in python/rnncore (at the top of a file or inside a function)
is read with ast and must respect the rules. At run time: each subpackage is imported in a fresh
interpreter with the package face (rnncore/__init__.py) replaced by a bare package, and what it
pulled in must stay within the layers it may use.

Layers, bottom to top: _ext/_interop (the compiled modules, small helpers) < nn < train <
models/decode < doors (torch, onnx, keras, distributed) < apps < the face. testing/ holds oracles
that sit beside the library: reference.py imports nothing of rnncore at all.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "python" / "rnncore"

BASE = {"rnncore._ext", "rnncore._interop", "rnncore._typing"}
# layer -> the layers (module-name prefixes) it may import from
ALLOWED = {
    "nn": ("rnncore.nn",),
    "train": ("rnncore.nn", "rnncore.train"),
    "decode": (),
    "models": ("rnncore.nn", "rnncore.train", "rnncore.decode", "rnncore.models"),
    "testing": ("rnncore.nn", "rnncore.testing"),
    "doors": ("rnncore.nn", "rnncore.train", "rnncore.decode", "rnncore.models",
              "rnncore.torch", "rnncore.testing"),
    "apps": ("rnncore.nn", "rnncore.train", "rnncore.decode", "rnncore.models", "rnncore.apps",
             "rnncore.testing", "rnncore.torch", "rnncore.onnx"),
}
DOORS = {"torch", "onnx", "keras", "distributed"}


def compiled(module):
    """The compiled modules: the engine (_core_<level>, one per instruction-set level, and the
    name _core its stub describes), the CPU probe _cpu and the CUDA driver _cuda."""
    return module.startswith("rnncore._core") or module in ("rnncore._cpu", "rnncore._cuda")


def layer_of(module):
    """'rnncore.nn.cells' -> 'nn'; the doors -> 'doors'; the face and _ext/_interop -> None."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("_ext", "_interop", "_typing", "__main__") \
            or compiled(module):
        return None
    if parts[1] in DOORS:
        return "doors"
    return parts[1]


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        yield name, path


def imports_of(name, path):
    """(imported module name, line) for every import statement of the file, in functions too.
    `from rnncore.x import y` yields rnncore.x.y when that is a module, else rnncore.x."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                known = (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py")
                is_pkg = (PACKAGE.parent / Path(*candidate.split(".")) / "__init__.py")
                yield (candidate if known.exists() or is_pkg.exists() or compiled(candidate)
                       else module,
                       node.lineno)


ALL = list(modules())


def violation(importer, imported):
    """Why `importer` may not import `imported`, or None."""
    if not imported.startswith("rnncore"):
        return None
    if compiled(imported) and importer != "rnncore._ext":
        return "only rnncore._ext imports the compiled modules"
    if importer == "rnncore" or importer == "rnncore.__main__":
        return None  # the face (and python -m rnncore) may import anything
    if importer in BASE:
        return None if compiled(imported) or imported in BASE \
            else "_ext and _interop import nothing of rnncore"
    if imported == "rnncore":
        return "only the face is `rnncore`: import the module that holds the name"
    if imported in BASE:
        return None
    if importer == "rnncore.testing.reference":
        return "reference.py is the independent oracle: it imports nothing of rnncore"
    allowed = ALLOWED[layer_of(importer)]
    if imported.startswith(allowed):
        return None
    return f"layer {layer_of(importer)!r} may import only {', '.join(allowed) or 'nothing'}"


@pytest.mark.parametrize("name,path", ALL, ids=[n for n, _ in ALL])
def test_imports_follow_the_layers(name, path):
    bad = [f"line {line}: {imported} ({why})" for imported, line in imports_of(name, path)
           if (why := violation(name, imported))]
    assert not bad, f"{name}: " + "; ".join(bad)


def test_the_rules_catch_what_they_should():
    assert violation("rnncore.nn.cells", "rnncore.train.optim")
    assert violation("rnncore.train.optim", "rnncore.apps.lm")
    assert violation("rnncore.models.lm", "rnncore.apps.common")
    assert violation("rnncore.apps.lm", "rnncore")
    assert violation("rnncore.onnx", "rnncore.apps.lm")
    assert violation("rnncore.nn.recurrent", "rnncore._core")
    assert violation("rnncore.testing.reference", "rnncore.nn.registry")
    assert not violation("rnncore.apps.lm", "rnncore.models.lm")
    assert not violation("rnncore.nn.cells", "rnncore._ext")
    assert not violation("rnncore.onnx", "rnncore.models.lm")


def test_only_the_registry_names_its_tables():
    offenders = [name for name, path in ALL
                 if name != "rnncore.nn.registry" and "_MODULES" in
                 path.read_text().replace("PUBLIC_MODULES", "")]
    assert not offenders, f"read the registry through its accessors: {offenders}"


# ---- at run time: what each subpackage pulls in ---------------------------------------------
_PROBE = r"""
import importlib, sys, types
face = types.ModuleType("rnncore")        # a bare package in place of rnncore/__init__.py
face.__path__ = [{package!r}]
sys.modules["rnncore"] = face
for name in {names!r}:
    importlib.import_module(name)
print(" ".join(sorted(n for n in sys.modules if n.startswith("rnncore."))))
"""

RUNTIME = {
    "nn": ["rnncore.nn." + p.stem for p in sorted((PACKAGE / "nn").glob("*.py"))],
    "train": ["rnncore.train." + p.stem for p in sorted((PACKAGE / "train").glob("*.py"))],
    "models": ["rnncore.models." + p.stem for p in sorted((PACKAGE / "models").glob("*.py"))]
              + ["rnncore.decode"],
}


@pytest.mark.parametrize("layer", sorted(RUNTIME))
def test_a_layer_pulls_in_only_what_it_may(layer):
    import rnncore  # the compiled module must sit in the package folder being probed
    package = str(Path(rnncore.__file__).parent)
    code = _PROBE.format(package=package, names=RUNTIME[layer])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    allowed = {"nn": ("rnncore.nn",), "train": ALLOWED["train"],
               "models": ALLOWED["models"]}[layer]
    extra = [m for m in out if not m.startswith(allowed) and m not in BASE and not compiled(m)]
    assert not extra, f"importing rnncore.{layer} pulled in {extra}"
