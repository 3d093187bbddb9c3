"""The import graph of `keras_cvt` and `weights_conversion`, read from the source with `ast`.

Three rules, each a test:

- no cycle among the modules (what a module runs when it is imported, its parent packages'
  `__init__` included);
- no import of a project module inside a function or method (the way a cycle is hidden rather
  than removed); the only lazy imports allowed are those of LAZY_IMPORTERS, which import a
  module named in a table (data: a module-level dict), and the optional third-party packages
  of OPTIONAL_IMPORTS;
- imports go one way, down LAYERS: a module may import its own layer and the layers above it in
  the list, never one below. A new module goes into LAYERS (the test fails until it does).
"""

import ast

import pytest

from tests.conftest import ROOT

PACKAGES = ("keras_cvt", "weights_conversion")

# The layer order, lowest first. An entry names one module, or with `.*` a package and every
# module under it. `keras_cvt` alone is the package's `__init__`, the public facade: it sits on
# top, so no module of the project may import from it.
LAYERS = [
    (
        "records",
        [
            "keras_cvt._version",
            "keras_cvt.architectures",
            "keras_cvt.pretrained",
            "keras_cvt.atomic",
            "keras_cvt.errors",
            "keras_cvt.locks",
        ],
    ),
    ("inputs", ["keras_cvt.preprocessing", "keras_cvt.images", "keras_cvt.transforms"]),
    ("layers", ["keras_cvt.attention", "keras_cvt.layers", "keras_cvt.layer_norm_ops"]),
    ("checks", ["keras_cvt.arguments", "keras_cvt.weights_file"]),
    ("builder", ["keras_cvt.builder"]),
    ("conversion", ["keras_cvt.conversion.*"]),
    (
        "download",
        [
            "keras_cvt.declared",
            "keras_cvt.downloads",
            "keras_cvt.cache",
            "keras_cvt.hf_config",
            "keras_cvt.hf",
            "keras_cvt.sources",
        ],
    ),
    ("variants", ["keras_cvt.variants"]),
    ("inference", ["keras_cvt.inference.*"]),
    (
        "applications",
        [
            "keras_cvt.export.*",
            "keras_cvt.serving",
            "keras_cvt.training.*",
            "keras_cvt.keras_hub.*",
            "keras_cvt.explain.*",
            "keras_cvt.plots",
            # The old name of keras_cvt.conversion, an alias.
            "weights_conversion.*",
        ],
    ),
    ("facade", ["keras_cvt"]),
]

# Modules that import project modules on first use, by a name read from a table, and where
# that table is: a module-level dict whose strings name the modules. Their entries are checked
# like imports (they must exist and lie in the importer's layer or below).
LAZY_IMPORTERS = {
    "keras_cvt": "keras_cvt",  # __getattr__ reads _EXPORTS (public name -> module)
    "keras_cvt.inference": "keras_cvt.inference",  # __getattr__ reads _LAZY
    "keras_cvt.export": "keras_cvt.export.formats",  # export() and __getattr__ read the FORMATS records
    "keras_cvt.export.int8": "keras_cvt.export.formats",  # the float export of each format, from FORMATS
}

# Third-party packages that only some features need, imported inside the function that needs
# them so that everything else works without them installed.
OPTIONAL_IMPORTS = {
    "torch": "reading .pth / pytorch_model.bin checkpoints (the `convert` extra)",
    "safetensors": "reading model.safetensors checkpoints (the `convert` extra)",
    "tensorflow_datasets": "--dataset in training (the `datasets` extra), --calibration tfds:NAME (the `int8` extra)",
    "ai_edge_litert": "the LiteRT interpreter for .tflite files, preferred over tf.lite",
    "onnxruntime": "running exported ONNX models",
    "openvino": "running exported OpenVINO models",
    "nncf": "int8 OpenVINO exports (the `int8` extra)",
    "keras_hub": "keras-hub presets",
    "huggingface_hub": "hf:// downloads",
    "matplotlib": "pictures (keras_cvt.plots, the `plots` extra)",
    # keras_cvt.explain.gradient: Keras has no backend-neutral gradient; each branch imports
    # the backend it runs on, so that the others need not be installed.
    "tensorflow": "the gradient of Grad-CAM under the TensorFlow backend",
    "jax": "the gradient of Grad-CAM under the JAX backend",
}


def module_files():
    """{module name: path} of every module of PACKAGES."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


MODULES = module_files()


def is_package(module):
    return MODULES[module].name == "__init__.py"


def layer_of(module):
    """The index in LAYERS of `module`, or None where no entry matches it."""
    for index, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            package = entry[:-2] if entry.endswith(".*") else None
            if module == entry or (package and (module == package or module.startswith(package + "."))):
                return index
    return None


class Import:
    """One import statement's project modules: `targets` (what it names), with where it is."""

    def __init__(self, module, node, targets, in_function, lazy_table=None):
        self.module, self.line, self.targets = module, node.lineno, targets
        self.in_function, self.lazy_table = in_function, lazy_table

    def where(self):
        return f"{MODULES[self.lazy_table or self.module].relative_to(ROOT)}:{self.line}"


def internal(name):
    return name.split(".")[0] in PACKAGES


def resolve_from(module, node):
    """The modules a `from X import a, b` names: X.a where that is a module, else X."""
    if node.level:
        base = module.split(".") if is_package(module) else module.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module
    if not internal(prefix):
        return []
    targets = []
    for alias in node.names:
        candidate = f"{prefix}.{alias.name}"
        targets.append(candidate if candidate in MODULES else prefix)
    return sorted(set(targets))


def lazy_table_targets(tree):
    """Module names that module-level dicts map public names to (`__getattr__` tables)."""
    targets = set()
    for node in tree.body:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        if not isinstance(value, (ast.Dict, ast.DictComp)):
            continue
        for item in ast.walk(value):
            if isinstance(item, ast.Constant) and isinstance(item.value, str) and internal(item.value):
                targets.add((item.value, item))
    return targets


def imports_of(module):
    """Every import of `module` (at any depth), and every third-party import inside a function."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    found, third_party_in_functions = [], []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                targets = sorted({alias.name for alias in child.names if internal(alias.name)})
                others = [alias.name for alias in child.names if not internal(alias.name)]
            elif isinstance(child, ast.ImportFrom):
                targets = resolve_from(module, child)
                others = [] if targets or child.level else [child.module]
            else:
                targets, others = [], []
                if isinstance(child, ast.Call) and in_function:
                    targets = dynamic_import_target(child)
                    if targets == ["<computed name>"] and module in LAZY_IMPORTERS:
                        targets = []  # its table's entries, read below
            if targets:
                found.append(Import(module, child, targets, in_function))
            if in_function:
                third_party_in_functions.extend((module, child.lineno, name) for name in others)
            visit(child, inside)

    visit(tree, False)
    if module in LAZY_IMPORTERS:
        table = LAZY_IMPORTERS[module]
        table_tree = ast.parse(MODULES[table].read_text(), filename=str(MODULES[table]))
        for target, node in sorted(lazy_table_targets(table_tree), key=lambda item: item[0]):
            found.append(Import(module, node, [target], in_function=False, lazy_table=table))
    return found, third_party_in_functions


def dynamic_import_target(call):
    """What an `importlib.import_module(...)` / `__import__(...)` call imports: the project
    module its literal names, or `<computed name>` (which could be any module: a dodge too)."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in ("import_module", "__import__") or not call.args:
        return []
    argument = call.args[0]
    if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
        return [argument.value] if internal(argument.value) else []
    return ["<computed name>"]


IMPORTS = {module: imports_of(module) for module in MODULES}


def ancestors(module):
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_time_graph():
    """{module: {module it runs when imported: the import that does it}}.

    Importing `a.b.c` from outside package `a.b` also runs `a/__init__` and `a/b/__init__`, so
    those are edges too; lazy tables are not (they run after every import has finished).
    """
    graph = {module: {} for module in MODULES}
    for module, (imports, _) in IMPORTS.items():
        own = set(ancestors(module)) | {module}
        for imp in imports:
            if imp.in_function or imp.lazy_table:
                continue
            for target in imp.targets:
                for name in ancestors(target) + [target]:
                    if name in MODULES and name not in own:
                        graph[module].setdefault(name, imp)
    return graph


def find_cycles(graph):
    """Each cycle as a list of modules (one per strongly connected component), Tarjan's way."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def connect(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(cycle_through(graph, set(component)))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return cycles


def cycle_through(graph, component):
    """One concrete cycle inside a strongly connected `component`, as a path back to its start."""
    start = min(component)
    paths, frontier = {start: [start]}, [start]
    while frontier:
        node = frontier.pop(0)
        for succ in sorted(graph[node]):
            if succ == start:
                return paths[node] + [start]
            if succ in component and succ not in paths:
                paths[succ] = paths[node] + [succ]
                frontier.append(succ)
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def describe_cycle(graph, cycle):
    steps = [f"{a} -> {b} ({graph[a][b].where()})" for a, b in zip(cycle, cycle[1:])]
    return "cycle: " + "; ".join(steps)


def test_every_module_has_a_layer():
    assert [module for module in MODULES if layer_of(module) is None] == []


def test_no_import_cycle():
    graph = import_time_graph()
    assert [describe_cycle(graph, cycle) for cycle in find_cycles(graph)] == []


def test_no_project_import_inside_a_function():
    dodges = [
        f"{imp.where()}: {imp.module} imports {', '.join(imp.targets)} inside a function"
        for imports, _ in IMPORTS.values()
        for imp in imports
        if imp.in_function
    ]
    assert dodges == []


def test_only_optional_packages_are_imported_inside_functions():
    unlisted = [
        f"{MODULES[module].relative_to(ROOT)}:{line}: {module} imports {name} inside a function"
        for _, third_party in IMPORTS.values()
        for module, line, name in third_party
        if name.split(".")[0] not in OPTIONAL_IMPORTS
    ]
    assert unlisted == []


def test_imports_go_down_the_layers():
    upward = []
    for module, (imports, _) in IMPORTS.items():
        for imp in imports:
            for target in imp.targets:
                if target == "<computed name>":
                    continue
                if target not in MODULES:
                    upward.append(f"{imp.where()}: {module} imports {target}, which is no module")
                elif layer_of(target) is not None and layer_of(module) is not None:
                    if layer_of(target) > layer_of(module):
                        upward.append(
                            f"{imp.where()}: {module} ({LAYERS[layer_of(module)][0]}) imports {target} "
                            f"({LAYERS[layer_of(target)][0]}), a higher layer"
                        )
    assert upward == []


# The checker itself, on made-up modules: each rule must catch what it is there for.


def test_the_cycle_finder_reports_a_cycle():
    graph = {"a": {"b": None}, "b": {"c": None}, "c": {"a": None}, "d": {"a": None}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b": None}, "b": {}}) == []


@pytest.mark.parametrize(
    "source, in_function, targets",
    [
        ("from keras_cvt import builder", False, ["keras_cvt.builder"]),
        ("from keras_cvt.layers import CvTBlock", False, ["keras_cvt.layers"]),
        ("from keras_cvt import CvT", False, ["keras_cvt"]),
        ("import weights_conversion.mapping", False, ["weights_conversion.mapping"]),
        ("def f():\n    from keras_cvt import cache", True, ["keras_cvt.cache"]),
        ("class A:\n    def m(self):\n        import keras_cvt.downloads", True, ["keras_cvt.downloads"]),
        ("def f():\n    importlib.import_module('keras_cvt.variants')", True, ["keras_cvt.variants"]),
        ("def f(name):\n    importlib.import_module(name)", True, ["<computed name>"]),
    ],
)
def test_the_reader_resolves_imports(tmp_path, monkeypatch, source, in_function, targets):
    monkeypatch.setitem(MODULES, "keras_cvt.probe", tmp_path / "probe.py")
    (tmp_path / "probe.py").write_text(source + "\n")
    imports, _ = imports_of("keras_cvt.probe")
    assert [(imp.targets, bool(imp.in_function)) for imp in imports] == [(targets, in_function)]


def test_relative_imports_resolve(tmp_path, monkeypatch):
    monkeypatch.setitem(MODULES, "keras_cvt.inference.probe", tmp_path / "probe.py")
    (tmp_path / "probe.py").write_text("from . import fold\nfrom ..layers import CvTBlock\n")
    imports, _ = imports_of("keras_cvt.inference.probe")
    assert [imp.targets for imp in imports] == [["keras_cvt.inference.fold"], ["keras_cvt.layers"]]


def test_the_lazy_tables_are_read():
    tables = {
        module: {t for imp in IMPORTS[module][0] if imp.lazy_table for t in imp.targets}
        for module in LAZY_IMPORTERS
    }
    assert {"keras_cvt.builder", "keras_cvt.variants", "keras_cvt.inference.fold"} <= tables["keras_cvt"]
    assert "keras_cvt.inference.frozen" in tables["keras_cvt.inference"]
    assert "keras_cvt.export.onnx" in tables["keras_cvt.export"]


def test_layers_order_modules():
    assert layer_of("keras_cvt.architectures") < layer_of("keras_cvt.layers") < layer_of("keras_cvt.builder")
    assert (
        layer_of("keras_cvt.builder") < layer_of("keras_cvt.conversion.mapping") < layer_of("keras_cvt.cache")
    )
    assert layer_of("keras_cvt.cache") < layer_of("keras_cvt.variants") < layer_of("keras_cvt.inference.fold")
    assert layer_of("keras_cvt.inference.fold") < layer_of("keras_cvt.export.cli") < layer_of("keras_cvt")
    assert layer_of("keras_cvt.nowhere") is None and layer_of("keras_cvtx") is None
