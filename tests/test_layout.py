"""The layout: no import cycle, no script imports another script, each file says its job in its first
line; importing a module prints nothing; the deployment and data tools load no torch, and the scripts
answer --help before loading it."""
import ast
import subprocess
import sys

import pytest

from conftest import ROOT

MODULES = sorted(path.stem for path in ROOT.glob("*.py"))
# myModel.py is a library that the contract also runs as a script (a summary and a test export)
CONTRACT_SCRIPTS = {"myModel"}


def project_imports(name: str) -> set[str]:
    """The project's modules that `name`.py imports, wherever in the file."""
    tree = ast.parse((ROOT / f"{name}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
    return found & set(MODULES)


def is_script(name: str) -> bool:
    return '__name__ == "__main__"' in (ROOT / f"{name}.py").read_text()


def test_no_module_imports_itself_back_through_others():
    graph = {name: project_imports(name) for name in MODULES}

    def reaches(start: str, goal: str, seen: set) -> bool:
        return any(step == goal or (step not in seen and reaches(step, goal, seen | {step})) for step in graph[start])

    assert [name for name in MODULES if reaches(name, name, set())] == []


def test_no_script_imports_another_script():
    scripts = {name for name in MODULES if is_script(name)} - CONTRACT_SCRIPTS
    assert {"myTrain", "myTest", "focus", "make_dataset", "make_demo_data", "bench", "micromanager"} <= scripts
    assert {name: sorted(project_imports(name) & scripts) for name in MODULES if project_imports(name) & scripts} == {}


def test_every_file_says_its_job_in_its_first_line():
    for name in MODULES:
        docstring = ast.get_docstring(ast.parse((ROOT / f"{name}.py").read_text()))
        assert docstring and len(docstring.splitlines()[0]) > 20, name


def test_importing_the_modules_prints_nothing():
    result = subprocess.run([sys.executable, "-c", f"import {', '.join(sorted(MODULES))}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""


def test_deployment_and_data_tools_do_not_load_torch():
    """autofocus.py runs on a microscope's computer, make_dataset.py on a data server: numpy, not torch."""
    check = ("import sys, autofocus, focus, make_dataset, make_demo_data, optics, stacks, exported_model, micromanager; "
             "print(sorted({'torch', 'torchvision'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


@pytest.mark.parametrize("script", ["myTrain.py", "myTest.py", "bench.py", "focus.py", "make_dataset.py",
                                    "micromanager.py"])
def test_help_answers_without_loading_torch(script):
    check = (f"import runpy, sys; sys.argv = ['{script}', '--help']\n"
             f"try:\n    runpy.run_path('{script}', run_name='__main__')\n"
             "except SystemExit:\n    print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("False"), result.stdout + result.stderr
    assert f"usage: {script}" in result.stdout
