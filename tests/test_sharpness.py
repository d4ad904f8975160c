"""sharpness.py: the frames' log Brenner falls away from focus on rendered tissue as the dip it
assumes; the evidence is flat for one frame, peaks at the focus the frames show, and does not
care how bright or textured the field is."""
import math

import numpy as np
import pytest

from autofocuskit.imaging import IMAGE_SIZE
from autofocuskit.optics import VirtualMicroscope
from autofocuskit.schema import depth_of_field_um
from autofocuskit.sharpness import SharpnessEvidence, log_sharpness


def tiles_of(frame: np.ndarray) -> np.ndarray:
    return np.stack([frame[y:y + IMAGE_SIZE, x:x + IMAGE_SIZE] for y in (0, 224) for x in (0, 224)])


def test_sharpness_falls_away_from_focus_on_either_side_as_the_dip_says():
    dof = depth_of_field_um(20, 0.7)
    scope = VirtualMicroscope(20, 0.7, size=448, seed=2)
    values = {}
    for defocus_dof in (-3, -1, -0.5, 0, 0.5, 1, 3):
        scope.defocus_um = defocus_dof * dof
        values[defocus_dof] = log_sharpness(tiles_of(scope.acquire()))
    assert values[0] == max(values.values())
    for side in (-1, 1):
        assert values[0] > values[0.5 * side] > values[1 * side] > values[3 * side]
        # half the dip's depth is reached near 1 DOF: the width the loop assumes
        assert values[0] - values[1 * side] == pytest.approx((values[0] - values[3 * side]) * 0.5, abs=0.25)
    assert math.isnan(log_sharpness(np.empty((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)))


def dip(z: float, focus: float, level: float = 5.0, depth: float = 1.5) -> float:
    u = (z - focus) ** 2
    return level - depth * u / (1 + u)


def test_the_evidence_is_flat_for_one_frame_and_peaks_where_the_frames_say():
    candidates = np.linspace(-5, 5, 1001)
    evidence = SharpnessEvidence(dof_um=1.0)
    evidence.add_frame(0.0, dip(0.0, 1.3))
    assert np.ptp(evidence.log_likelihood(candidates)) == 0
    for z in (2.5, 1.0):
        evidence.add_frame(z, dip(z, 1.3))
    likeliest = candidates[np.argmax(evidence.log_likelihood(candidates))]
    assert likeliest == pytest.approx(1.3, abs=0.2) and evidence.sharpest() == 1.0


def test_the_fields_brightness_cancels():
    candidates = np.linspace(-5, 5, 201)
    dim, bright = SharpnessEvidence(1.0), SharpnessEvidence(1.0)
    for z in (-2.0, 0.5, 1.5):
        dim.add_frame(z, dip(z, 0.8, level=2.0))
        bright.add_frame(z, dip(z, 0.8, level=9.0))
    np.testing.assert_allclose(dim.log_likelihood(candidates), bright.log_likelihood(candidates), atol=1e-9)
