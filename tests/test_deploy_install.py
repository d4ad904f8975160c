"""The deploy-only install: a virtual environment made from requirements-deploy.txt alone, as README
says, has no torch, and runs focus.py on an image and micromanager.py --demo on the file myTest.py
exported."""
import hashlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from autofocuskit.optics import VirtualMicroscope
from conftest import ROOT

pytestmark = pytest.mark.slow
DEPLOY_VENV = ROOT / ".venv-deploy"


@pytest.fixture(scope="module")
def deploy_python():
    """The deploy environment's python, made (or made again when the requirements changed) as README says."""
    requirements = (ROOT / "requirements-deploy.txt").read_bytes()
    stamp, python = DEPLOY_VENV / "requirements.sha256", DEPLOY_VENV / "bin" / "python"
    digest = hashlib.sha256(requirements).hexdigest()
    if not (python.exists() and stamp.exists() and stamp.read_text() == digest):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(DEPLOY_VENV)], check=True, timeout=300)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(ROOT / "requirements-deploy.txt")],
                       check=True, timeout=600)
        stamp.write_text(digest)
    return python


def run_deployed(python, script: str, *args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), str(ROOT / script), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_the_deploy_install_has_no_torch(deploy_python):
    check = subprocess.run([str(deploy_python), "-c", "import importlib.util as u; print(u.find_spec('torch'))"],
                           capture_output=True, text=True, timeout=60)
    assert check.stdout.strip() == "None"


def test_the_deploy_install_focuses_an_image_and_runs_the_microscope_demo(deploy_python, trained_split_run, tmp_path):
    model = next(path for path in (trained_split_run / ".onnx").glob("*.onnx") if "int8" not in path.name)
    frame = VirtualMicroscope(10, 0.3, size=512, defocus_um=12.0, seed=3).acquire()
    Image.fromarray(np.asarray(frame)).save(tmp_path / "frame.png")
    estimate = run_deployed(deploy_python, "focus.py", "--model", model, "frame.png", cwd=tmp_path)
    assert estimate.returncode == 0, estimate.stderr
    assert "frame.png: ok" in estimate.stdout and "move the stage by" in estimate.stdout
    demo = run_deployed(deploy_python, "micromanager.py", "--model", model, "--demo", "--magnification", 10, "--na",
                        0.3, "--positions", 2, "--time_points", 2, "--frame_size", 448, cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    assert "frames within 1 DOF of focus:" in demo.stdout and "the integration itself" in demo.stdout
