"""Package layout: no import cycles among the modules of ``dml_csr``, and the README's layout map
names every module.

The module graph comes from the source text alone (``ast``; nothing is imported): an edge
``a -> b`` for every ``import b`` / ``from b import x`` in ``a`` that names a ``dml_csr`` module
(relative imports resolved; ``from pkg import sub`` names the submodule ``pkg.sub``). Imports at
module level (class bodies and module-level ``if``/``try`` included) run when the module is
imported; imports inside functions run later, when called. A cycle of either kind is an error:
a function-level import that closes a circle still ties the two modules together
(``python tests/test_structure.py`` lists both kinds).
"""
import ast
import os
import sys
from typing import Dict, List, Set, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "dml_csr"

Graph = Dict[str, Set[str]]


def package_sources(root: str = REPO, package: str = PACKAGE) -> Dict[str, str]:
    """{dotted module name: source text} of every ``.py`` file of ``package`` under ``root``."""
    sources = {}
    for folder, dirs, files in os.walk(os.path.join(root, package)):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            parts = os.path.relpath(os.path.join(folder, name), root)[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                sources[".".join(parts)] = f.read()
    return sources


def _imports(tree: ast.AST, in_function: bool = False):
    """Yield ``(node, in_function)`` for every Import / ImportFrom, marking those inside a def."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, in_function
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield from _imports(node, inner)


def _targets(node, module: str, is_package: bool, modules: Set[str]) -> List[str]:
    """The package modules that one import statement of ``module`` names."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = module.split(".") if is_package else module.split(".")[:-1]
            anchor = anchor[:len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        subs = [f"{base}.{alias.name}" for alias in node.names]
        names = [s for s in subs if s in modules] or [base]
    found = []
    for name in names:
        while name and name not in modules:   # ``import dml_csr.models.x`` of a non-module x
            name = name.rpartition(".")[0]
        if name:
            found.append(name)
    return found


def import_graphs(sources: Dict[str, str]) -> Tuple[Graph, Graph]:
    """(module-level graph, function-level graph) over the modules of ``sources``."""
    modules = set(sources)
    top: Graph = {m: set() for m in modules}
    lazy: Graph = {m: set() for m in modules}
    for module, text in sources.items():
        is_package = any(other.startswith(module + ".") for other in modules)
        for node, in_function in _imports(ast.parse(text)):
            for target in _targets(node, module, is_package, modules):
                # Importing ``p.q.r`` first runs the packages ``p``, ``p.q`` that are not already
                # running (the importer's own ancestors are).
                parts = target.split(".")
                for name in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):
                    if name in modules and name != module and not module.startswith(name + "."):
                        (lazy if in_function else top)[module].add(name)
    return top, lazy


def cycles(graph: Graph) -> List[List[str]]:
    """Every elementary cycle of ``graph``, each starting at its smallest module name."""
    found = []

    def walk(start: str, node: str, path: List[str], on_path: Set[str]):
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                found.append(path[:])
            elif nxt > start and nxt not in on_path:
                on_path.add(nxt)
                path.append(nxt)
                walk(start, nxt, path, on_path)
                path.pop()
                on_path.discard(nxt)

    for start in sorted(graph):
        walk(start, start, [start], {start})
    return found


def _merged(a: Graph, b: Graph) -> Graph:
    return {m: a.get(m, set()) | b.get(m, set()) for m in set(a) | set(b)}


def function_level_cycles(top: Graph, lazy: Graph) -> List[List[str]]:
    """Cycles that need at least one import made inside a function."""
    top_cycles = {tuple(c) for c in cycles(top)}
    return [c for c in cycles(_merged(top, lazy)) if tuple(c) not in top_cycles]


def _show(cycle: List[str]) -> str:
    return " -> ".join(cycle + cycle[:1])


# -- the detector itself ------------------------------------------------------------------------

_FAKE = {
    "pkg": "from .a import A\n",
    "pkg.a": "from .b import B\nA = 1\n",
    "pkg.b": "import pkg.c\nB = 2\n",
    "pkg.c": "def f():\n    from pkg.a import A\n    return A\nfrom . import d\n",
    "pkg.d": "from . import a\n",
    "pkg.sub": "from ..b import B\n",
    "pkg.sub.e": "from . import x\nfrom .. import sub\nclass E:\n    from pkg.d import *\n",
    "pkg.x": "from .y.z import Z\n",
    "pkg.y": "from ..x import *\n",
    "pkg.y.z": "Z = 3\n",
}


def test_graph_resolves_relative_imports_and_separates_function_imports():
    top, lazy = import_graphs(_FAKE)
    assert top["pkg"] == {"pkg.a"}
    assert top["pkg.a"] == {"pkg.b"}
    assert top["pkg.b"] == {"pkg.c"}
    assert top["pkg.c"] == {"pkg.d"} and lazy["pkg.c"] == {"pkg.a"}
    assert top["pkg.d"] == {"pkg.a"}                    # ``from . import a`` names pkg.a
    assert top["pkg.sub"] == {"pkg.b"}                  # relative to a package's __init__
    assert top["pkg.sub.e"] == {"pkg.d"}     # its own package is running; class bodies run now
    assert top["pkg.x"] == {"pkg.y", "pkg.y.z"}         # pkg.y's __init__ runs first


def test_cycles_are_found_and_split_by_level():
    top, lazy = import_graphs(_FAKE)
    assert cycles(top) == [["pkg.a", "pkg.b", "pkg.c", "pkg.d"], ["pkg.x", "pkg.y"]]
    assert function_level_cycles(top, lazy) == [["pkg.a", "pkg.b", "pkg.c"]]
    assert cycles({"x": {"y"}, "y": {"z"}, "z": set()}) == []


# -- the package --------------------------------------------------------------------------------

def test_sources_cover_the_package():
    sources = package_sources()
    assert {"dml_csr", "dml_csr.models", "dml_csr.models.dml_csr", "dml_csr.layers"} <= set(sources)
    top, _ = import_graphs(sources)
    assert "dml_csr.layers.abn" in top["dml_csr.models.dml_csr"]


def test_no_module_level_import_cycles():
    top, _ = import_graphs(package_sources())
    found = cycles(top)
    assert not found, "module-level import cycles:\n" + "\n".join(_show(c) for c in found)


def test_no_import_cycles_through_function_level_imports():
    top, lazy = import_graphs(package_sources())
    found = function_level_cycles(top, lazy)
    assert not found, "import cycles through imports inside functions:\n" + "\n".join(
        _show(c) for c in found)


def test_layers_do_not_import_models():
    top, lazy = import_graphs(package_sources())
    wrong = {(m, t) for g in (top, lazy) for m, targets in g.items() for t in targets
             if m.startswith(f"{PACKAGE}.layers") and t.startswith(f"{PACKAGE}.models")}
    assert not wrong, f"layers/ must not import models/: {sorted(wrong)}"


def readme_layout() -> Dict[str, str]:
    """{folder or top-level module: its text} of the README's layout map (the code block under
    "## Layout"); a folder's text runs on over the indented lines that follow it."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    sections: Dict[str, str] = {}
    current = None
    for line in block.splitlines():
        if line.startswith("  ") and line[2:3] != " ":           # "  name/  what" or "  x.py  what"
            current = line.split()[0]
            sections[current] = line
        elif current is not None and line.startswith("   "):
            sections[current] += " " + line.strip()
    return sections


def unmapped_modules(sections: Dict[str, str], sources: Dict[str, str]) -> List[str]:
    """The package's modules that the layout map does not name (``__init__`` files aside)."""
    missing = []
    for module in sorted(sources):
        path = module.split(".")[1:]
        if not path or os.path.isdir(os.path.join(REPO, *module.split("."))):
            continue                                              # the package or a sub-package
        if len(path) == 1:
            named = f"{path[0]}.py" in sections
        else:
            named = f"{path[-1]}.py" in sections.get(path[0] + "/", "")
        if not named:
            missing.append(module)
    return missing


def test_the_readme_layout_map_names_every_module():
    sections = readme_layout()
    assert {"layers/", "models/", "engine/", "config.py"} <= set(sections)
    assert unmapped_modules(sections, package_sources()) == []
    # and it can tell: a module the map does not name is reported
    assert unmapped_modules(sections, {"dml_csr.models.unlisted": ""}) == ["dml_csr.models.unlisted"]

if __name__ == "__main__":
    root = sys.argv[1] if len(sys.argv) > 1 else REPO
    top_graph, lazy_graph = import_graphs(package_sources(root))
    for title, found in (("module-level", cycles(top_graph)),
                         ("through function-level imports",
                          function_level_cycles(top_graph, lazy_graph))):
        print(f"{len(found)} cycle(s) {title}")
        for c in found:
            print("  " + _show(c))


def test_no_module_names_the_benchmarks_but_their_own():
    """A data set is data: outside the built-in descriptions (data/schemas.py), the readers of
    those data sets' raw files (data/prepare/), the authors' weights (deploy/pretrained.py) and
    the paper's published numbers (eval/paper.py), no string in the package's code names
    helen, lapa or celebamask_hq (docstrings, comments and the help texts of the command line,
    ``help=`` / ``description=``, may explain; commands/prepare_data.py is the command line of
    data/prepare)."""
    import re
    allowed = {"data/schemas.py", "data/prepare/common.py", "data/prepare/helen.py",
               "data/prepare/lapa.py", "data/prepare/celebamask_hq.py", "deploy/pretrained.py",
               "eval/paper.py", "commands/prepare_data.py"}
    names = re.compile(r"\b(helen|lapa|celebamask_hq)\b", re.I)
    found = []
    for module, text in package_sources().items():
        path = module.replace("dml_csr.", "", 1).replace(".", "/") + ".py"
        if path in allowed or module == "dml_csr":
            continue
        tree = ast.parse(text)
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and n.body and isinstance(n.body[0], ast.Expr)
                and isinstance(n.body[0].value, ast.Constant)}
        docs |= {id(c) for n in ast.walk(tree) if isinstance(n, ast.keyword)
                 and n.arg in ("help", "description") for c in ast.walk(n.value)}
        found += [f"{path}:{n.lineno} {n.value!r}" for n in ast.walk(tree)
                  if isinstance(n, ast.Constant) and isinstance(n.value, str)
                  and id(n) not in docs and names.search(n.value)]
    assert found == []


def _homes(match) -> List[str]:
    """``path:line`` of every AST node of the package for which ``match(node)`` is true."""
    found = []
    for module, text in package_sources().items():
        path = module.replace("dml_csr.", "", 1).replace(".", "/") + ".py"
        found += [f"{path}:{n.lineno}" for n in ast.walk(ast.parse(text)) if match(n)]
    return found


def test_shared_facts_have_one_home():
    """The release's resize (bilinear, ``align_corners=True``) is written once, in
    ``layers/blocks.upsample``, and the ignore label value once, in ``data/schemas.py``: a change
    of either is one edit."""
    def aligned_resize(n):
        return isinstance(n, ast.Call) and any(
            k.arg == "align_corners" and isinstance(k.value, ast.Constant) and k.value.value is True
            for k in n.keywords)

    def ignore_defined(n):
        return isinstance(n, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "IGNORE_INDEX" for t in n.targets)

    assert [h.split(":")[0] for h in _homes(aligned_resize)] == ["layers/blocks.py"]
    assert [h.split(":")[0] for h in _homes(ignore_defined)] == ["data/schemas.py"]


def test_files_are_written_through_dml_csr_files():
    """Every file the package, the tools and the benchmarks write goes through dml_csr.files
    (atomic, checked, WriteError naming the file): no plain ``open(..., "w")`` (the benchmarks'
    --json outputs were written so). /proc control files are not files we make."""
    found = []
    for folder in ("dml_csr", "tools", "benchmarks"):
        for root, _dirs, names in os.walk(os.path.join(REPO, folder)):
            for name in names:
                if not name.endswith(".py") or name == "files.py":
                    continue
                path = os.path.join(root, name)
                for node in ast.walk(ast.parse(open(path).read(), path)):
                    if not (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "open"):
                        continue
                    args = list(node.args) + [k.value for k in node.keywords if k.arg == "mode"]
                    mode = args[1] if len(args) > 1 else None
                    target = args[0] if args else None
                    if (isinstance(mode, ast.Constant) and isinstance(mode.value, str)
                            and set(mode.value) & set("wax")
                            and not (isinstance(target, ast.Constant)
                                     and str(target.value).startswith("/proc/"))):
                        found.append(f"{os.path.relpath(path, REPO)}:{node.lineno}")
    assert not found, found
