"""README.md's and the docs' code blocks, kept from going stale.

Every fenced `python` block of README.md, docs/*.md and benchmarks/README.md must compile, and
every name it takes from keras_cvt or weights_conversion must exist: imports, attribute chains
such as `keras_cvt.hf.labels` after a plain `import keras_cvt`, and the keyword arguments of
calls to our functions (bound against their signatures). Blocks tagged ```` ```python run ````
(GitHub shows them as Python) are executed, in order, one process per page. Every command line
of a `bash` block that runs one of our programs may only use options that program's parser
defines.
"""

import ast
import importlib
import inspect
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PAGES = sorted([ROOT / "README.md", ROOT / "benchmarks" / "README.md", *(ROOT / "docs").glob("*.md")])
PROJECT = ("keras_cvt", "weights_conversion")
FENCE = re.compile(r"^```(\w+)?([^\n`]*)\n(.*?)^```", re.S | re.M)


def code_blocks(text):
    """`(language, tags, code)` of each fenced block of markdown `text`."""
    return [(m.group(1) or "", m.group(2).split(), m.group(3)) for m in FENCE.finditer(text)]


def _blocks(language):
    found = []
    for page in PAGES:
        for index, (lang, tags, code) in enumerate(code_blocks(page.read_text())):
            if lang == language:
                found.append(pytest.param(page, tags, code, id=f"{page.relative_to(ROOT)}[{index}]"))
    return found


def _resolve(dotted):
    """The object `dotted` names (a module, then attributes), or raise naming what is missing."""
    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        if not hasattr(obj, part):
            raise AttributeError(f"{'.'.join(parts[:i])} has no attribute {part!r}")
        obj = getattr(obj, part)
    return obj


def _dotted(node):
    """`a.b.c` of an attribute chain rooted at a name, or None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def stale_names(code):
    """What `code` takes from the project that does not exist, one line per problem."""
    tree = ast.parse(code)
    bound = {}  # local name -> the project's dotted name it stands for
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PROJECT:
                    try:
                        importlib.import_module(alias.name)
                    except ImportError as error:
                        problems.append(f"line {node.lineno}: import {alias.name}: {error}")
                    # `import a.b` binds `a`; `import a.b as c` binds `c` to `a.b`.
                    bound[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PROJECT:
            for alias in node.names:
                bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PROJECT:
            for alias in node.names:
                try:
                    module = importlib.import_module(node.module)
                    if not hasattr(module, alias.name):
                        importlib.import_module(f"{node.module}.{alias.name}")
                except (ImportError, AttributeError) as error:
                    problems.append(f"line {node.lineno}: from {node.module} import {alias.name}: {error}")
        elif isinstance(node, (ast.Attribute, ast.Name)) and not isinstance(getattr(node, "ctx", None), ast.Store):
            dotted = _dotted(node)
            if dotted is None or dotted.split(".")[0] not in bound:
                continue
            head, _, rest = dotted.partition(".")
            full = bound[head] + ("." + rest if rest else "")
            try:
                _resolve(full)
            except (ImportError, AttributeError) as error:
                problems.append(f"line {node.lineno}: {dotted}: {error}")
        if isinstance(node, ast.Call):
            dotted = _dotted(node.func)
            if dotted is None or dotted.split(".")[0] not in bound:
                continue
            if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
                continue
            head, _, rest = dotted.partition(".")
            try:
                target = _resolve(bound[head] + ("." + rest if rest else ""))
                signature = inspect.signature(target)
            except (ImportError, AttributeError, TypeError, ValueError):
                continue  # reported above, or not introspectable
            try:
                signature.bind_partial(*node.args, **{k.arg: k.value for k in node.keywords})
            except TypeError as error:
                problems.append(f"line {node.lineno}: {dotted}(...): {error}")
    return sorted(set(problems))


@pytest.mark.parametrize("page, tags, code", _blocks("python"))
def test_python_blocks_name_what_exists(page, tags, code):
    compile(code, str(page), "exec")
    assert stale_names(code) == []


def test_the_checker_finds_stale_names():
    code = (
        "import keras_cvt\nfrom keras_cvt import CvT13, NoSuchBuilder\n"
        "keras_cvt.hf.labels\nkeras_cvt.no_such_function()\n"
        "CvT13(weights=None, no_such_argument=1)\nCvT13(include_top=False)\n"
    )
    problems = stale_names(code)
    assert len(problems) == 3, problems
    assert "NoSuchBuilder" in problems[0]
    assert "no_such_function" in problems[1]
    assert "no_such_argument" in problems[2]


def test_code_blocks_are_found_with_their_tags():
    text = "x\n```python run\na = 1\n```\n\n```bash\nls\n```\n```\nplain\n```\n"
    assert code_blocks(text) == [("python", ["run"], "a = 1\n"), ("bash", [], "ls\n"), ("", [], "plain\n")]


RUNNABLE = [p for p in PAGES if any(lang == "python" and "run" in tags for lang, tags, _ in code_blocks(p.read_text()))]


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: str(p.relative_to(ROOT)))
def test_runnable_blocks_run(page, tmp_path):
    code = "\n".join(c for lang, tags, c in code_blocks(page.read_text()) if lang == "python" and "run" in tags)
    script = tmp_path / "blocks.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]


# Our programs, as a command line names them, and the file or module that parses its options.
PROGRAMS = {
    **{f"examples/{p.name}": p for p in (ROOT / "examples").glob("*.py")},
    **{f"benchmarks/{p.name}": p for p in (ROOT / "benchmarks").glob("*.py")},
    "-m keras_cvt.export": "keras_cvt.export",
    "-m keras_cvt.conversion": "keras_cvt.conversion",
    "-m weights_conversion": "weights_conversion",
}


def command_lines(text):
    """`(program, options)` of each `python ...` line of the bash blocks of `text`."""
    found = []
    for lang, _, code in code_blocks(text):
        if lang != "bash":
            continue
        for line in code.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True) if line.strip() else []
            while words and words[0] != "python":
                words = words[1:]
            if len(words) < 2:
                continue
            program = " ".join(words[1:3]) if words[1] == "-m" else words[1]
            if program in PROGRAMS:
                options = [w.split("=")[0] for w in words if w.startswith("--")]
                found.append((program, options))
    return found


def test_command_lines_are_found():
    text = "```bash\npython examples/train.py --epochs 3 --output-dir=x  # --comment\n" "python -m keras_cvt.export \\\n    --format onnx\nls\n```\n"
    assert command_lines(text) == [("examples/train.py", ["--epochs", "--output-dir"]), ("-m keras_cvt.export", ["--format"])]


HELP = """
import contextlib, io, runpy, sys, json
out = {}
for program, target in json.loads(sys.argv[1]).items():
    sys.argv = [program, "--help"]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        try:
            if target.endswith(".py"):
                runpy.run_path(target, run_name="__main__")
            else:
                runpy.run_module(target, run_name="__main__", alter_sys=True)
        except SystemExit:
            pass
    out[program] = buffer.getvalue()
print(json.dumps(out))
"""


@pytest.mark.slow
def test_command_lines_use_options_their_programs_define():
    used = {}
    for page in PAGES:
        for program, options in command_lines(page.read_text()):
            used.setdefault(program, set()).update((page.relative_to(ROOT), o) for o in options)
    assert used, "no command lines found"
    result = subprocess.run(
        [sys.executable, "-c", HELP, json.dumps({p: str(PROGRAMS[p]) for p in used})],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    helps = json.loads(result.stdout.splitlines()[-1])
    missing = [
        f"{page}: python {program} {option}"
        for program, uses in used.items()
        for page, option in sorted(uses)
        if not re.search(rf"(^|[\s,\[]){re.escape(option)}\b", helps[program])
    ]
    assert missing == []


LINK = re.compile(r"\]\(([^)\s#]+)(#[^)\s]*)?\)|src=\"([^\"]+)\"")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files(page):
    targets = [t for m in LINK.finditer(page.read_text()) if "://" not in (t := m.group(1) or m.group(3))]
    assert [t for t in targets if not (page.parent / t).exists()] == []


# `tests/test_x.py::test_name` (or `test_x.py::test_name`, or `::test_name` after one of them)
# in a page: the tests a promise cites must exist.
CITED_TEST = re.compile(r"(?:tests/)?(test_\w+\.py)((?:(?:`, `|, )?::\w+)*)")


def cited_tests(text):
    """`(file, test)` of each test a page cites (test None for a whole file)."""
    found = []
    for match in CITED_TEST.finditer(text):
        names = re.findall(r"::(\w+)", match.group(2))
        found += [(match.group(1), name) for name in names] or [(match.group(1), None)]
    return found


def test_cited_tests_are_found():
    text = "`tests/test_a.py::test_x`, `::test_y`; `test_b.py` and test_c.py::test_z"
    assert cited_tests(text) == [("test_a.py", "test_x"), ("test_a.py", "test_y"), ("test_b.py", None), ("test_c.py", "test_z")]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_cited_tests_exist(page):
    missing = []
    for file, name in cited_tests(page.read_text()):
        path = ROOT / "tests" / file
        if not path.is_file():
            missing.append(file)
        elif name is not None and not re.search(rf"^(?:async )?def {name}\b|^{name} = ", path.read_text(), re.M):
            missing.append(f"{file}::{name}")
    assert missing == []
