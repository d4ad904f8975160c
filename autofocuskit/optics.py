"""The demo optics and a virtual microscope: tissue imaged through a physical model of an
objective, without torch. make_demo_data.py writes datasets and focus stacks with it,
focus.py --simulate runs closed-loop trials on it.

    scope = VirtualMicroscope(20, 0.7, size=1024, defocus_um=5.0, optics=Optics(chromatic_shift_dof=0.5))
    frame = scope.acquire()          # (1024, 1024, 3) uint8 camera frame
    scope.move_by(-5.0)              # relative stage move, um

What the images model, so that a network trained on them has learnt defocus as real optics show it:
- H&E-like tissue (nuclei, fibrous stroma) drawn in micrometres and sampled at the
  objective's pixel size in the specimen (camera pixel / magnification), rendered by
  Beer-Lambert absorption of two stains.
- Defocus through a scalar pupil-function PSF per colour channel: a uniform pupil of
  radius NA, the exact defocus phase k z cos(theta), integration over the camera pixels.
  Blur from this alone is the same on both sides of focus.
- The side of focus shows only through what real objectives carry (see `Optics`):
  longitudinal chromatic aberration (red and blue focused on either side of green)
  and the spherical aberration of a dry objective focused into an aqueous specimen,
  both weak.
- Shot and read noise, illumination and stain variation between slides, and tissue
  from sparse to dense, so that the amount of edge alone does not give the defocus.

PSFs are computed once per defocus on a grid of Z_GRID_DOF and cached.
"""
import functools
import math
from dataclasses import dataclass

import numpy as np

from .imaging import GREY_WEIGHTS, IMAGE_SIZE
from .schema import CAMERA_PIXEL_UM, depth_of_field_um

OBJECTIVE_MEDIUM_INDEX = 1.0  # between objective and coverslip: air
CHANNEL_WAVELENGTHS_UM = (0.60, 0.54, 0.46)  # centre of the camera's red, green and blue bands
Z_GRID_DOF = 0.05  # defocus is rounded to this grid, so that each PSF is computed once and cached
PSF_OVERSAMPLING = 2  # PSF samples per camera pixel, enough for NA/wavelength up to 1/(4 pixels)
TILT_STRIP_PX = 64  # a tilted field is rendered in vertical strips this wide, each at one defocus


@dataclass(frozen=True)
class Optics:
    """The two asymmetries of real objectives that show on which side of focus an image is.

    Both are small in real microscopes, so the defaults are modest:
    - `chromatic_shift_dof`: longitudinal chromatic aberration. Red focuses this many depths
      of field above green and blue as far below, the residual colour error of an
      objective not fully corrected for it, of the order of the depth of field for
      achromats. 0 removes the cue.
    - spherical aberration from imaging `specimen_depth_um` deep into an aqueous specimen
      (`specimen_index` 1.33) with a dry objective corrected for a point just below the
      coverslip; it grows as NA^4 and is a weak cue (0.03 waves RMS at 20x/0.7 here).
    """

    chromatic_shift_dof: float = 0.5
    specimen_depth_um: float = 10.0
    specimen_index: float = 1.33

    def channel_focus_dof(self) -> tuple[float, float, float]:
        """Where red, green and blue are in focus, in depths of field from the labelled focus (green)."""
        return (self.chromatic_shift_dof, 0.0, -self.chromatic_shift_dof)


# optical densities of the two stains per RGB channel (haematoxylin: blue-purple, eosin: pink)
HAEMATOXYLIN_OD = np.array([0.65, 0.70, 0.29])
EOSIN_OD = np.array([0.07, 0.99, 0.11])


@functools.cache
def frequency_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Spatial frequencies (cycles/pixel) of an rfft2 of a size x size image."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    return fy, fx


def wrapped_distance_grid(size: int, cy: float = 0.0, cx: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Signed (dy, dx) from (cy, cx) on a periodic size x size grid, so blurs never see an edge."""
    coords = np.arange(size, dtype=np.float64)
    dy = (coords[:, None] - cy + size / 2) % size - size / 2
    dx = (coords[None, :] - cx + size / 2) % size - size / 2
    return dy, dx


def smooth_noise(rng: np.random.Generator, size: int, scale_px: float, anisotropy: float = 1.0) -> np.ndarray:
    """Periodic Gaussian-filtered noise with unit standard deviation; `anisotropy` > 1 makes fibres."""
    fy, fx = frequency_grid(size)
    angle = rng.uniform(0, math.pi)
    along = fx * math.cos(angle) + fy * math.sin(angle)
    across = -fx * math.sin(angle) + fy * math.cos(angle)
    otf = np.exp(-2 * math.pi**2 * scale_px**2 * (along**2 / anisotropy**2 + across**2 * anisotropy**2))
    field = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((size, size))) * otf, s=(size, size))
    return (field - field.mean()) / (field.std() + 1e-12)


def tissue_stain_densities(rng: np.random.Generator, pixel_um: float,
                           size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin and eosin density maps of one size x size tissue field, with features sized
    in micrometres."""
    # fields differ in how much there is to see, from sparse, pale tissue to dense, busy
    # tissue, so that the amount of edge in an image does not tell its defocus by itself
    density = rng.uniform(0.25, 1.5)
    stroma = np.clip(0.4 * density + 0.2 * density * smooth_noise(rng, size, 6.0 / pixel_um)
                     + 0.15 * density * smooth_noise(rng, size, 1.0 / pixel_um, anisotropy=2.5), 0, None)
    haematoxylin = 0.08 * np.clip(smooth_noise(rng, size, 0.6 / pixel_um), 0, None)
    area_um2 = (size * pixel_um) ** 2
    for _ in range(rng.poisson(density * area_um2 / 250.0)):  # one nucleus per ~250 um^2 at density 1
        cy, cx = rng.uniform(0, size), rng.uniform(0, size)
        radius_um = rng.uniform(2.5, 5.0)
        elongation = rng.uniform(1.0, 1.8)
        angle = rng.uniform(0, math.pi)
        window, (dy, dx) = nucleus_window(size, cy, cx, radius_um * elongation / pixel_um)
        u = (dx * math.cos(angle) + dy * math.sin(angle)) * pixel_um / (radius_um * elongation)
        v = (-dx * math.sin(angle) + dy * math.cos(angle)) * pixel_um / radius_um
        inside = np.clip(1.0 - (u**2 + v**2), 0, None)
        haematoxylin[window] += rng.uniform(0.6, 1.1) * np.sqrt(inside)  # dense chromatin, soft rim
        stroma[window] *= 1 - 0.7 * (inside > 0)
    return haematoxylin, stroma


def nucleus_window(size: int, cy: float, cx: float, reach_px: float):
    """(index of the pixels within reach_px of (cy, cx) on the periodic grid, their (dy, dx)):
    a nucleus touches only these, so camera-sized fields with thousands of nuclei stay fast."""
    half = math.ceil(reach_px) + 2
    if 2 * half + 1 >= size:
        return (slice(None), slice(None)), wrapped_distance_grid(size, cy, cx)
    rows = (np.arange(-half, half + 1) + int(cy)) % size
    cols = (np.arange(-half, half + 1) + int(cx)) % size
    # the same formula as wrapped_distance_grid, on the window's pixels only
    dy = (rows[:, None].astype(np.float64) - cy + size / 2) % size - size / 2
    dx = (cols[None, :].astype(np.float64) - cx + size / 2) % size - size / 2
    return np.ix_(rows, cols), (dy, dx)


def render_transmission(haematoxylin: np.ndarray, eosin: np.ndarray, stain_scale: np.ndarray) -> np.ndarray:
    """Beer-Lambert: the in-focus RGB transmission (H, W, 3) in [0, 1]."""
    optical_density = (haematoxylin[..., None] * HAEMATOXYLIN_OD * stain_scale[0]
                       + eosin[..., None] * EOSIN_OD * stain_scale[1])
    return np.exp(-optical_density)


def pupil_coordinates(magnification: float, na: float, wavelength_um: float):
    """Sine of each pupil sample's ray angle in air, on the oversampled PSF grid's frequencies, and the pupil mask.

    The grid has PSF_OVERSAMPLING samples per camera pixel, so the intensity PSF, whose
    spectrum reaches twice the pupil's radius, is sampled without aliasing before the
    camera's pixels integrate it.
    """
    size = IMAGE_SIZE * PSF_OVERSAMPLING
    sample_um = CAMERA_PIXEL_UM / magnification / PSF_OVERSAMPLING
    frequency = np.fft.fftfreq(size, d=sample_um)  # cycles per micrometre in the specimen
    sine = wavelength_um * np.hypot(frequency[:, None], frequency[None, :]) / OBJECTIVE_MEDIUM_INDEX
    return sine, sine <= na / OBJECTIVE_MEDIUM_INDEX


def index_mismatch_path_um(sine: np.ndarray, pupil: np.ndarray, optics: Optics) -> np.ndarray:
    """Optical path error (um) across the pupil of a point `specimen_depth_um` deep in a
    specimen of another refractive index than the objective was designed for, balanced
    against defocus.

    The raw error, depth x (n2 cos(theta2) - n1 cos(theta1)), is mostly a focal shift; its
    least-squares fit by piston and defocus over the pupil is removed, so what remains is
    the spherical aberration alone and z = 0 is the plane of least wavefront error (the
    sharpest image for aberrations this small). That residual grows with NA as NA^4.
    """
    n1, n2 = OBJECTIVE_MEDIUM_INDEX, optics.specimen_index
    cos1 = np.sqrt(n1**2 - (n1 * sine[pupil]) ** 2)
    raw = optics.specimen_depth_um * (np.sqrt(n2**2 - (n1 * sine[pupil]) ** 2) - cos1)
    basis = np.stack([np.ones_like(cos1), cos1], axis=1)
    coefficients, *_ = np.linalg.lstsq(basis, raw, rcond=None)
    path_um = np.zeros_like(sine)
    path_um[pupil] = raw - basis @ coefficients
    return path_um


@functools.lru_cache(maxsize=4096)
def channel_otf(z_um: float, magnification: float, na: float, wavelength_um: float, optics: Optics) -> np.ndarray:
    """Optical transfer function (rfft2 layout of a camera image) of one colour at defocus z_um.

    Scalar pupil model: an aberration-free, uniformly filled pupil of radius NA, the exact
    defocus phase k z n cos(theta) and the index-mismatch spherical aberration; the
    intensity PSF is integrated over the camera's square pixels and sampled at them.
    """
    sine, pupil = pupil_coordinates(magnification, na, wavelength_um)
    cosine = np.sqrt(np.clip(1 - sine**2, 0, None))
    path_um = z_um * OBJECTIVE_MEDIUM_INDEX * cosine + index_mismatch_path_um(sine, pupil, optics)
    field = np.fft.ifft2(pupil * np.exp(2j * np.pi / wavelength_um * path_um))
    otf = np.fft.fft2(np.abs(field) ** 2)
    size, pixel = IMAGE_SIZE, np.fft.fftfreq(IMAGE_SIZE * PSF_OVERSAMPLING) * PSF_OVERSAMPLING
    otf *= np.sinc(pixel)[:, None] * np.sinc(pixel)[None, :]  # integration over one camera pixel
    # sampling at the camera's pixels folds the spectrum onto the camera's frequency range
    otf = otf.reshape(PSF_OVERSAMPLING, size, PSF_OVERSAMPLING, size).sum(axis=(0, 2))
    return (otf / otf[0, 0])[:, : size // 2 + 1].astype(np.complex64)


@functools.lru_cache(maxsize=48)
def frame_otf(z_um: float, magnification: float, na: float, wavelength_um: float, optics: Optics,
              shape: tuple[int, int]) -> np.ndarray:
    """channel_otf for a camera frame of any shape: the PSF of the IMAGE_SIZE grid (whose support
    stays well inside it) placed on the frame's grid, centred on pixel (0, 0) as a periodic kernel."""
    if shape == (IMAGE_SIZE, IMAGE_SIZE):
        return channel_otf(z_um, magnification, na, wavelength_um, optics)
    psf = np.fft.irfft2(channel_otf(z_um, magnification, na, wavelength_um, optics), s=(IMAGE_SIZE, IMAGE_SIZE))
    half = IMAGE_SIZE // 2
    kernel = np.zeros(shape)
    kernel[np.ix_(np.r_[0:half, -half:0], np.r_[0:half, -half:0])] = np.fft.fftshift(psf)[
        np.ix_(np.r_[half:IMAGE_SIZE, 0:half], np.r_[half:IMAGE_SIZE, 0:half])]
    return np.fft.rfft2(kernel).astype(np.complex64)


def defocused_channels(transmission: np.ndarray, z_um: float, magnification: float, na: float,
                       dof_um: float, optics: Optics) -> np.ndarray:
    """Each colour channel blurred at its own focal depth (longitudinal chromatic aberration)."""
    channels = []
    for c, (wavelength_um, shift_dof) in enumerate(zip(CHANNEL_WAVELENGTHS_UM, optics.channel_focus_dof())):
        z_channel = round((z_um / dof_um - shift_dof) / Z_GRID_DOF) * Z_GRID_DOF * dof_um  # cached PSFs
        otf = frame_otf(z_channel, magnification, na, wavelength_um, optics, transmission.shape[:2])
        channels.append(np.fft.irfft2(np.fft.rfft2(transmission[..., c]) * otf, s=transmission.shape[:2]))
    return np.stack(channels, axis=-1)


def image_at_defocus(rng, transmission, z_um, magnification, na, dof_um, optics: Optics) -> np.ndarray:
    """The camera image of a field at defocus z_um: optics, shot and read noise, 8-bit quantisation."""
    return camera_image(rng, defocused_channels(transmission, z_um, magnification, na, dof_um, optics))


def tissue_field(rng: np.random.Generator, magnification: float, size: int = IMAGE_SIZE) -> np.ndarray:
    """The in-focus RGB transmission (size, size, 3) of a fresh tissue field, with its slide's
    stain strength, lamp brightness and white balance."""
    stain_scale = rng.uniform(0.8, 1.2, size=2)
    transmission = render_transmission(*tissue_stain_densities(rng, CAMERA_PIXEL_UM / magnification, size),
                                       stain_scale)
    return transmission * rng.uniform(0.9, 1.0) * rng.uniform(0.97, 1.03, size=3)  # lamp and white balance


class VirtualMicroscope:
    """A camera and a z stage over one tissue field, imaged through the demo optics: a stand-in
    for a microscope to test a focus loop on.

        scope = VirtualMicroscope(20, 0.7, size=1024, defocus_um=5.0)
        frame = scope.acquire()          # (size, size, 3) uint8
        scope.move_by(-5.0)              # relative stage move, um
        scope.defocus_um                 # where the stage is now, relative to focus

    `defocus_um` follows the sign of defocus_label: moving by -defocus_um focuses. `tilt_um`
    is how much further from focus the right edge of the frame is than the left (a tilted
    slide; the frame's centre is at `defocus_um`); `empty=True` images a blank slide and
    `bare_share` > 0 leaves a band of bare glass that share of the frame wide down its middle.
    `pixel_um` is the specimen pixel size, camera pixel / magnification unless given (another
    camera or binning behind the same objective).
    """

    def __init__(self, magnification: float, na: float, size: int = 1024, defocus_um: float = 0.0,
                 seed: int = 0, optics: Optics = Optics(), tilt_um: float = 0.0, empty: bool = False,
                 bare_share: float = 0.0, pixel_um: float | None = None):
        if size < IMAGE_SIZE:
            raise ValueError(f"frames must be at least {IMAGE_SIZE} pixels wide, got {size}")
        self.na, self.optics = na, optics
        self.pixel_um = pixel_um or CAMERA_PIXEL_UM / magnification
        # the renderer takes the sampling as a magnification behind the standard camera pixel;
        # the blur in micrometres depends on NA and wavelength alone
        self.render_magnification = CAMERA_PIXEL_UM / self.pixel_um
        self.dof_um = depth_of_field_um(magnification, na)
        self.defocus_um, self.tilt_um = defocus_um, tilt_um
        self.rng = np.random.default_rng(seed)
        self.transmission = (np.full((size, size, 3), 0.95) if empty else
                             tissue_field(self.rng, self.render_magnification, size))
        bare = round(bare_share * size)
        self.transmission[:, (size - bare) // 2: (size + bare) // 2] = 0.95

    def move_by(self, delta_um: float) -> None:
        self.defocus_um += delta_um

    def acquire(self, bits: int = 8, grey: bool = False) -> np.ndarray:
        """The camera frame at the stage's position: `optical_image` with shot and read noise;
        8 or 16 bits, RGB or grey (a monochrome camera under white light)."""
        image = self.optical_image()
        return camera_image(self.rng, image @ np.array(GREY_WEIGHTS) if grey else image, bits)

    def optical_image(self) -> np.ndarray:
        """The light on the camera's pixels at the stage's position, RGB in [0, 1] (before
        noise): a tilted field in vertical strips of TILT_STRIP_PX columns, each at its own defocus."""
        column_defocus = strip_defocus_um(self.defocus_um, self.tilt_um, self.transmission.shape[1])
        image = np.empty_like(self.transmission)
        for z_um in np.unique(column_defocus):
            columns = column_defocus == z_um
            image[:, columns] = defocused_channels(self.transmission, z_um, self.render_magnification, self.na,
                                                   self.dof_um, self.optics)[:, columns]
        return image


def strip_defocus_um(defocus_um: float, tilt_um: float, size: int) -> np.ndarray:
    """The defocus of each column of a frame whose centre is at `defocus_um` and whose right edge
    is `tilt_um` further from focus than its left: constant over strips of TILT_STRIP_PX columns."""
    strips = np.array_split(np.arange(size), max(1, size // TILT_STRIP_PX) if tilt_um else 1)
    column_defocus = np.empty(size)
    for columns in strips:
        column_defocus[columns] = defocus_um + tilt_um * (columns.mean() / (size - 1) - 0.5)
    return column_defocus


def camera_image(rng: np.random.Generator, image: np.ndarray, bits: int = 8) -> np.ndarray:
    """Shot and read noise and 8- or 16-bit quantisation of an image of light intensities in [0, 1]."""
    image = image + rng.standard_normal(image.shape, dtype=np.float32) * np.sqrt(np.clip(image, 0, None) * 2e-4 + 2e-5)
    full_scale = 2**bits - 1
    return np.clip(image * full_scale + 0.5, 0, full_scale).astype(np.uint8 if bits == 8 else np.uint16)
