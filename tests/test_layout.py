"""The layout: the scripts at the top level, one package beneath them; no import cycle, no script
imports another script and the package imports no script; each file says its job in its first
line and has its own test file; importing prints nothing; the deploy side imports no torch
anywhere, not even inside a function; no function is over 60 lines; the scripts answer --help
before loading torch."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "autofocuskit"
SCRIPTS = sorted(path.stem for path in ROOT.glob("*.py"))
PACKAGE_MODULES = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")
# what a microscope's computer runs: these and everything they import must do without torch
DEPLOY_SIDE = ["predictor", "loop", "error_model", "exported_model", "microscope", "calibration",
               "demo_microscope", "pymmcore_private"]
DEPLOY_SCRIPTS = ["focus", "micromanager", "make_dataset", "make_demo_data"]
TORCH_NAMES = {"torch", "torchvision", "timm", "torchinfo", "tensorboard"}
MAX_FUNCTION_LINES = 60


def source_of(name: str) -> Path:
    return PACKAGE / f"{name}.py" if name in PACKAGE_MODULES else ROOT / f"{name}.py"


def imports_of(name: str) -> tuple[set[str], set[str]]:
    """(the project's modules, the outside packages) that `name` imports, wherever in the file."""
    project, outside = set(), set()
    for node in ast.walk(ast.parse(source_of(name).read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from .module import ..., from . import module
                names = [node.module] if node.module else [alias.name for alias in node.names]
                project |= set(names) & set(PACKAGE_MODULES)
                continue
            names = [node.module] if node.module != "autofocuskit" else [alias.name for alias in node.names]
        else:
            continue
        for full in names:
            parts = full.split(".")
            if parts[0] == "autofocuskit":
                project |= set(parts[1:2]) & set(PACKAGE_MODULES)
            elif parts[0] in PACKAGE_MODULES + SCRIPTS:
                project.add(parts[0])
            else:
                outside.add(parts[0])
    return project, outside


def test_the_top_level_is_the_four_scripts_and_the_command_line_tools():
    assert {"myDataset", "myModel", "myTrain", "myTest"} <= set(SCRIPTS)
    assert len(SCRIPTS) <= 12, SCRIPTS
    assert not set(SCRIPTS) & set(PACKAGE_MODULES)


def test_no_module_imports_itself_back_through_others():
    graph = {name: imports_of(name)[0] for name in SCRIPTS + PACKAGE_MODULES}

    def reaches(start: str, goal: str, seen: set) -> bool:
        return any(step == goal or (step not in seen and reaches(step, goal, seen | {step})) for step in graph[start])

    assert [name for name in graph if reaches(name, name, set())] == []


def test_no_script_imports_another_and_the_package_imports_no_script():
    importing = {name: sorted(imports_of(name)[0] & set(SCRIPTS)) for name in SCRIPTS + PACKAGE_MODULES}
    assert {name: found for name, found in importing.items() if found} == {}


def test_the_deploy_side_imports_no_torch_anywhere():
    """By construction: the modules a microscope's computer runs, and every project module they
    import, name no torch-side package, at the top or inside a function."""
    seen, todo = set(), DEPLOY_SIDE + DEPLOY_SCRIPTS
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += sorted(imports_of(name)[0])
    offenders = {name: sorted(imports_of(name)[1] & TORCH_NAMES) for name in sorted(seen)}
    assert {name: found for name, found in offenders.items() if found} == {}
    assert {"imaging", "schema", "cli", "optics"} <= seen


def test_every_file_says_its_job_in_its_first_line():
    for path in [*ROOT.glob("*.py"), *PACKAGE.glob("*.py")]:
        docstring = ast.get_docstring(ast.parse(path.read_text()))
        assert docstring and len(docstring.splitlines()[0]) > 20, path


def test_every_module_has_a_test_file():
    tests = {path.stem.removeprefix("test_") for path in (ROOT / "tests").glob("test_*.py")}
    assert sorted(set(SCRIPTS + PACKAGE_MODULES) - tests) == []


def test_no_function_is_longer_than_60_lines():
    long = []
    for path in [*ROOT.glob("*.py"), *PACKAGE.glob("*.py"), *(ROOT / "tests").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                    long.append(f"{path.name}:{node.lineno} {node.name}")
    assert long == []


def test_importing_the_modules_prints_nothing_and_the_deploy_side_loads_no_torch():
    modules = [*SCRIPTS, *(f"autofocuskit.{name}" for name in PACKAGE_MODULES if name not in DEPLOY_SIDE)]
    deploy = [*DEPLOY_SCRIPTS, *(f"autofocuskit.{name}" for name in DEPLOY_SIDE)]
    check = (f"import sys, {', '.join(deploy)}\n"
             "sys.stderr.write(str(sorted({'torch', 'torchvision'} & set(sys.modules))))\n"
             f"import {', '.join(modules)}")
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "[]", result.stderr


@pytest.mark.parametrize("script", ["myTrain.py", "myTest.py", "myModel.py", "bench.py", "focus.py",
                                    "make_dataset.py", "micromanager.py"])
def test_help_answers_without_loading_torch(script):
    check = (f"import runpy, sys; sys.argv = ['{script}', '--help']\n"
             f"try:\n    runpy.run_path('{script}', run_name='__main__')\n"
             "except SystemExit:\n    print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("False"), result.stdout + result.stderr
    assert f"usage: {script}" in result.stdout


DEPLOY_TESTS = ["test_predictor", "test_loop", "test_sharpness", "test_error_model", "test_exported_model",
                "test_microscope", "test_calibration", "test_demo_microscope", "test_pymmcore_private", "test_focus",
                "test_micromanager", "test_imaging", "test_schema", "test_optics", "test_focus_measures"]


def test_the_deploy_sides_tests_load_no_torch():
    """Their modules and the shared fixtures import no torch: they build their ONNX networks with onnx alone."""
    check = (f"import sys; sys.path[:0] = ['tests', '.']; import conftest, {', '.join(DEPLOY_TESTS)}; "
             "print(sorted({'torch', 'torchvision', 'timm'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
