"""focus_measures.py: the focus curve's peak between slices, edges and flat curves refused, and
the measures peaking where a rendered field is in focus."""
import numpy as np
import pytest

from autofocuskit.focus_measures import FOCUS_MEASURES, curve_peak, focus_channel
from autofocuskit.imaging import tile_origins
from autofocuskit.optics import VirtualMicroscope
from autofocuskit.schema import depth_of_field_um


def test_focus_curve_peak_lies_between_slices_and_refuses_edges_and_flat_curves():
    z = np.arange(9) * 0.5
    curve = np.exp(-((z - 2.15) ** 2) / 0.8)  # a Gaussian peak: a parabola in log
    assert curve_peak(z, curve, 0.3) == (pytest.approx(2.15, abs=1e-6), "ok")
    assert curve_peak(z, curve[::-1], 0.3)[0] == pytest.approx(4 - 2.15, abs=1e-6)
    assert curve_peak(z, np.exp(-z), 0.3)[1] == "edge"
    assert curve_peak(z, 1 + 0.01 * curve, 0.3)[1] == "flat"


@pytest.fixture(scope="module")
def sweep():
    """A 20x/0.7 field through the demo optics from -4 to +4 DOF: (z in um, frames, DOF)."""
    dof_um = depth_of_field_um(20, 0.7)
    scope = VirtualMicroscope(20, 0.7, size=448, seed=2)
    z_um = np.arange(-4, 4.5, 0.5) * dof_um
    frames = []
    for z in z_um:
        scope.defocus_um = z
        frames.append(focus_channel(scope.acquire()))
    return z_um, frames, dof_um


@pytest.mark.parametrize("name", sorted(FOCUS_MEASURES))
def test_every_measure_peaks_at_focus_on_rendered_tissue(name, sweep):
    z_um, frames, dof_um = sweep
    origins = tile_origins(448, 448, 2)
    curves = np.array([FOCUS_MEASURES[name](frame, origins) for frame in frames])
    peaks = [curve_peak(z_um, curve, 0.3) for curve in curves.T]
    assert all(status == "ok" and abs(peak) < 0.5 * dof_um for peak, status in peaks), peaks
