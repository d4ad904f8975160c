"""optics.py: brightness kept, sharpest at focus, both sides alike without aberrations, spherical
aberration a weak cue, chromatic aberration putting red above and blue below; camera frames blurred as
tiles are; the virtual microscope's moves, tilt and blank slides."""
import numpy as np
import pytest

from autofocuskit import optics
from autofocuskit.imaging import IMAGE_SIZE, sobel_sharpness
from autofocuskit.optics import Optics, defocused_channels
from autofocuskit.schema import CAMERA_PIXEL_UM, depth_of_field_um

NO_CUES = Optics(chromatic_shift_dof=0.0, specimen_depth_um=0.0)


@pytest.fixture(scope="module")
def field_20x() -> np.ndarray:
    """An in-focus tissue field (H, W, 3) at 20x."""
    rng = np.random.default_rng(0)
    return optics.render_transmission(*optics.tissue_stain_densities(rng, CAMERA_PIXEL_UM / 20), np.ones(2))


def channel_sharpness(image: np.ndarray) -> list[float]:
    return [sobel_sharpness(np.repeat(image[..., c:c + 1] * 255, 3, axis=2)) for c in range(3)]


def render(field, z_dof: float, optics: Optics) -> np.ndarray:
    dof_um = depth_of_field_um(20, 0.7)
    return defocused_channels(field, z_dof * dof_um, 20, 0.7, dof_um, optics)


def test_the_psf_preserves_brightness_and_focus_is_sharpest(field_20x):
    in_focus = render(field_20x, 0.0, NO_CUES)
    assert in_focus.mean() == pytest.approx(field_20x.mean(), rel=1e-4)
    sharpness = [channel_sharpness(render(field_20x, z, NO_CUES))[1] for z in (-2, -1, 0, 1, 2)]
    assert sharpness[2] == max(sharpness) and sharpness[0] < sharpness[1] and sharpness[4] < sharpness[3]


def test_without_aberrations_both_sides_of_focus_look_the_same(field_20x):
    np.testing.assert_allclose(render(field_20x, 1.5, NO_CUES), render(field_20x, -1.5, NO_CUES), atol=1e-6)


def test_spherical_aberration_alone_is_a_weak_cue(field_20x):
    optics = Optics(chromatic_shift_dof=0.0)
    difference = np.abs(render(field_20x, 1.5, optics) - render(field_20x, -1.5, optics)).mean()
    blur = np.abs(render(field_20x, 1.5, optics) - render(field_20x, 0.0, optics)).mean()
    assert 0 < difference < 0.2 * blur


def test_chromatic_aberration_focuses_red_above_and_blue_below_green(field_20x):
    optics = Optics(chromatic_shift_dof=0.5, specimen_depth_um=0.0)
    above, below = channel_sharpness(render(field_20x, 0.5, optics)), channel_sharpness(render(field_20x, -0.5, optics))
    assert above[0] > below[0] and above[2] < below[2]  # red sharpest at +0.5 DOF, blue at -0.5
    assert above[1] == pytest.approx(below[1], rel=1e-6)  # green: symmetric about 0


def test_a_camera_frame_is_blurred_as_the_tiles_are(field_20x):
    """A 448-pixel frame made of four copies of a tile blurs each copy as the tile alone is blurred:
    the frame's PSF is the tile grid's PSF, placed on the larger grid."""
    frame = np.tile(field_20x, (2, 2, 1))
    tile = render(field_20x, 2.0, Optics())
    np.testing.assert_allclose(render(frame, 2.0, Optics())[IMAGE_SIZE:, :IMAGE_SIZE], tile, atol=1e-5)


def test_virtual_microscope_moves_tilts_and_images_blank_slides():
    scope = optics.VirtualMicroscope(20, 0.7, size=448, defocus_um=3.0, seed=0)
    scope.move_by(-3.0)
    assert scope.defocus_um == 0.0
    sharp = sobel_sharpness(scope.acquire())
    scope.move_by(2 * scope.dof_um)
    assert sobel_sharpness(scope.acquire()) < 0.7 * sharp
    tilted = optics.VirtualMicroscope(20, 0.7, size=448, defocus_um=0.0, seed=0, tilt_um=8 * scope.dof_um).acquire()
    assert sobel_sharpness(tilted[:, 200:248]) > 1.5 * sobel_sharpness(tilted[:, -48:])  # centre in focus, edge not
    blank = optics.VirtualMicroscope(20, 0.7, size=256, empty=True).acquire()
    assert blank.std() < 5 and blank.dtype == np.uint8 and blank.shape == (256, 256, 3)
