"""demo_microscope.py: a core of Python devices."""
import subprocess
import sys

from conftest import ROOT


def test_a_core_of_python_devices_shows_no_error_about_a_missing_micro_manager():
    result = subprocess.run([sys.executable, "-c", "import micromanager; micromanager.demo_core()"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "Micro-Manager" not in result.stderr + result.stdout, result.stderr
