"""The package's shape: no import circles, files a reader can hold, and the two applications laid out alike."""
import ast
import os

import showattend

PKG = os.path.dirname(os.path.abspath(showattend.__file__))


def _modules():
    """{dotted module name: path} of every module of the package."""
    out = {}
    for folder, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                name = os.path.relpath(path, os.path.dirname(PKG))[:-3].replace(os.sep, ".")
                out[name[:-9] if name.endswith(".__init__") else name] = path
    return out


def _imports(name: str, path: str, modules: dict) -> set:
    """The package modules that ``name`` imports anywhere: at the top, under TYPE_CHECKING, inside functions."""
    package = name.split(".") if path.endswith("__init__.py") else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            elif (node.module or "").startswith("showattend"):
                base = node.module
            else:
                continue
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("showattend")}
    return {m for m in found if m in modules and m != name}


def _cycles(edges: dict) -> list:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_among_the_packages_modules():
    modules = _modules()
    edges = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert edges["showattend.captioning.task"] >= {"showattend.captioning.config", "showattend.engine"}
    assert _cycles(edges) == []


def test_package_files_are_at_most_400_lines():
    long = {name: n for name, path in _modules().items() if (n := sum(1 for _ in open(path))) > 400}
    assert long == {}


def test_both_applications_have_the_same_modules_for_the_same_roles():
    names = {app: {f[:-3] for f in os.listdir(os.path.join(PKG, app)) if f.endswith(".py")}
             for app in ("captioning", "translation")}
    roles = {"config", "network", "task", "train", "evaluate", "commands", "data"}
    assert roles <= names["captioning"] and roles <= names["translation"]
    assert "captioner" in names["captioning"] and "translator" in names["translation"]


def _function_lengths():
    """(body lines without the docstring, module, qualified name) of every function of the package."""
    out = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body
                has_doc = isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str)
                start = (body[1].lineno if len(body) > 1 else body[0].end_lineno + 1) if has_doc else body[0].lineno
                out.append((node.end_lineno - start + 1, name, node.name))
    return out


def test_every_function_is_at_most_50_lines():
    lengths = _function_lengths()
    assert max(lengths)[0] > 30  # the measure sees real functions
    assert sorted(x for x in lengths if x[0] > 50) == []


def test_help_answers_without_importing_torch():
    import subprocess
    import sys

    commands = [["--help"], ["train", "--help"], ["cache", "--help"], ["caption", "--help"], ["evaluate", "--help"],
                ["export", "--help"], ["models", "--help"], ["translate", "--help"], ["translate", "train", "--help"],
                ["translate", "evaluate", "--help"]]
    code = ("import io, sys, contextlib, json\n"
            "from showattend.cli import main\n"
            "out = []\n"
            f"for args in {commands!r}:\n"
            "    with contextlib.redirect_stdout(io.StringIO()) as f:\n"
            "        try:\n"
            "            main(args)\n"
            "        except SystemExit:\n"
            "            pass\n"
            "    out.append(len(f.getvalue()))\n"
            "print(json.dumps([out, 'torch' in sys.modules]))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": os.path.dirname(PKG)})
    import json

    sizes, torch_loaded = json.loads(p.stdout.strip().splitlines()[-1])
    assert all(n > 200 for n in sizes), sizes  # every help printed
    assert torch_loaded is False


def test_both_model_configs_read_checkpoints_strictly():
    import pytest

    from showattend.captioning.config import ModelConfig
    from showattend.errors import CheckpointError
    from showattend.translation.config import TranslatorConfig

    for cls in (ModelConfig, TranslatorConfig):
        assert cls.from_dict({}) == cls()  # every field has a default
        with pytest.raises(CheckpointError, match=r"unknown model config fields \['bogus'\]"):
            cls.from_dict({"bogus": 1})


def test_the_core_and_each_application_import_no_other_application():
    """Only the program's entry point (cli.py, and __main__ that runs it) puts the applications together; the
    package root names Captioner and Translator by module path only (see the next test)."""
    modules = _modules()
    apps = ("showattend.captioning", "showattend.translation")
    entry = {"showattend.cli", "showattend.__main__"}
    found = []
    for name, path in modules.items():
        own = next((a for a in apps if name == a or name.startswith(a + ".")), None)
        if name in entry:
            continue
        for dep in _imports(name, path, modules):
            other = next((a for a in apps if dep == a or dep.startswith(a + ".")), None)
            if other is not None and other != own:
                found.append((name, dep))
    assert found == []


def test_the_package_root_offers_both_applications_faces_lazily():
    """``from showattend import Captioner, Translator`` gives the applications' own classes, and ``import
    showattend`` loads no application module (nor torch) until one of them is asked for."""
    import subprocess
    import sys

    code = ("import sys, showattend\n"
            "loaded = lambda: sorted(m for m in sys.modules if m.startswith(('showattend.captioning', "
            "'showattend.translation')) or m == 'torch')\n"
            "assert loaded() == [], loaded()\n"
            "from showattend import Captioner, Translator\n"
            "from showattend.captioning import Captioner as C\n"
            "from showattend.translation import Translator as T\n"
            "assert Captioner is C and Translator is T\n"
            "assert {'Captioner', 'Translator'} <= set(showattend.__all__) <= set(dir(showattend))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=os.path.dirname(PKG))
    assert out.returncode == 0, out.stderr


def test_the_repository_stays_small():
    """The tracked files (bundled weights, figures, code) stay under 60 MB, so that a clone stays quick."""
    import shutil
    import subprocess

    import pytest

    root = os.path.dirname(PKG)
    if shutil.which("git") is None or not os.path.isdir(os.path.join(root, ".git")):
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    paths = [os.path.join(root, p) for p in files.decode().split("\0") if p]
    total = sum(os.path.getsize(p) for p in paths if os.path.isfile(p) and not os.path.islink(p))
    assert 10e6 < total < 60e6, f"{total / 1e6:.1f} MB tracked"
