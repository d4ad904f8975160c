"""Write a small synthetic autofocus dataset in the layout myDataset.py reads.

    python make_demo_data.py demo_data                        # 10x/0.3 and 20x/0.7, seconds
    python make_demo_data.py demo_data --train 400 --seed 1   # more training images

What the images model, so that a network trained on them has learnt defocus:
- H&E-like tissue (nuclei, fibrous stroma) drawn in micrometres and sampled at the
  objective's pixel size in the specimen (camera pixel / magnification), rendered by
  Beer-Lambert absorption of two stains.
- Geometric defocus blur: a disc of radius |z| * tan(asin(NA/n)), on top of the
  diffraction limit; the defocus range is a fixed number of depths of field, so both
  objectives span the same blur range in DOF units.
- Above/below-focus asymmetry as real optics have it: spherical aberration (growing with
  NA) makes the blur disc ring-like on one side of focus and centre-heavy on the other,
  and longitudinal chromatic aberration focuses red and blue at slightly different depths.
- Shot and read noise, illumination and stain variation between slides, and tissue
  from sparse to dense, so that the amount of edge alone does not give the defocus.

Each split gets its own tissue fields (no field appears in two splits); every field is
imaged at several defocus positions, like a z-stack. Output is deterministic for a seed.
"""
import argparse
import functools
import math
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SIZE = 224
WAVELENGTH_UM = 0.55
REFRACTIVE_INDEX = 1.0
CAMERA_PIXEL_UM = 6.5
OBJECTIVES = ((10.0, 0.3), (20.0, 0.7))
MAX_DEFOCUS_DOF = 5.0  # defocus is drawn uniformly from +-this many depths of field
Z_PER_FIELD = 8  # defocus positions imaged per tissue field
SLIDES_PER_SPLIT = 2  # each split and objective is written as this many CSV files
CHROMATIC_SHIFT_DOF = (0.3, 0.0, -0.3)  # focal shift of R, G, B relative to green
CSV_COLUMNS = "image_path,sobel_sharpness,defocus_label,magnification,NA,defocus_dof_label"
# optical densities of the two stains per RGB channel (haematoxylin: blue-purple, eosin: pink)
HAEMATOXYLIN_OD = np.array([0.65, 0.70, 0.29])
EOSIN_OD = np.array([0.07, 0.99, 0.11])


def depth_of_field_um(magnification: float, na: float) -> float:
    """DOF = lambda*n/NA^2 + n*e/(M*NA): the wave-optical plus the camera-pixel term."""
    return (WAVELENGTH_UM * REFRACTIVE_INDEX / na**2
            + REFRACTIVE_INDEX * CAMERA_PIXEL_UM / (magnification * na))


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


@functools.cache
def distance_from_origin(size: int) -> np.ndarray:
    """Distance of every pixel from pixel (0, 0) on a periodic grid: where a blur kernel is centred."""
    return np.hypot(*wrapped_distance_grid(size))


def smooth_noise(rng: np.random.Generator, size: int, scale_px: float, anisotropy: float = 1.0) -> np.ndarray:
    """Periodic Gaussian-filtered noise with unit standard deviation; `anisotropy` > 1 makes fibres."""
    fy, fx = frequency_grid(size)
    angle = rng.uniform(0, math.pi)
    along = fx * math.cos(angle) + fy * math.sin(angle)
    across = -fx * math.sin(angle) + fy * math.cos(angle)
    otf = np.exp(-2 * math.pi**2 * scale_px**2 * (along**2 / anisotropy**2 + across**2 * anisotropy**2))
    field = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((size, size))) * otf, s=(size, size))
    return (field - field.mean()) / (field.std() + 1e-12)


def tissue_stain_densities(rng: np.random.Generator, pixel_um: float) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin and eosin density maps of one tissue field, with features sized in micrometres."""
    size = IMAGE_SIZE
    # fields differ in how much there is to see, from sparse, pale tissue to dense, busy
    # tissue, so that the amount of edge in an image does not tell its defocus by itself
    density = rng.uniform(0.25, 1.5)
    stroma = np.clip(0.4 * density + 0.2 * density * smooth_noise(rng, size, 6.0 / pixel_um)
                     + 0.15 * density * smooth_noise(rng, size, 1.0 / pixel_um, anisotropy=2.5), 0, None)
    haematoxylin = 0.08 * np.clip(smooth_noise(rng, size, 0.6 / pixel_um), 0, None)
    area_um2 = (size * pixel_um) ** 2
    for _ in range(rng.poisson(density * area_um2 / 250.0)):  # one nucleus per ~250 um^2 at density 1
        dy, dx = wrapped_distance_grid(size, rng.uniform(0, size), rng.uniform(0, size))
        radius_um = rng.uniform(2.5, 5.0)
        elongation = rng.uniform(1.0, 1.8)
        angle = rng.uniform(0, math.pi)
        u = (dx * math.cos(angle) + dy * math.sin(angle)) * pixel_um / (radius_um * elongation)
        v = (-dx * math.sin(angle) + dy * math.cos(angle)) * pixel_um / radius_um
        inside = np.clip(1.0 - (u**2 + v**2), 0, None)
        haematoxylin += rng.uniform(0.6, 1.1) * np.sqrt(inside)  # dense chromatin, soft rim
        stroma *= 1 - 0.7 * (inside > 0)
    return haematoxylin, stroma


def render_transmission(haematoxylin: np.ndarray, eosin: np.ndarray, stain_scale: np.ndarray) -> np.ndarray:
    """Beer-Lambert: the in-focus RGB transmission (H, W, 3) in [0, 1]."""
    optical_density = (haematoxylin[..., None] * HAEMATOXYLIN_OD * stain_scale[0]
                       + eosin[..., None] * EOSIN_OD * stain_scale[1])
    return np.exp(-optical_density)


def defocus_otf(z_um: float, magnification: float, na: float) -> np.ndarray:
    """Optical transfer function (rfft2 layout) of the defocused PSF at axial position z_um."""
    pixel_um = CAMERA_PIXEL_UM / magnification
    fy, fx = frequency_grid(IMAGE_SIZE)
    diffraction_sigma_px = 0.21 * WAVELENGTH_UM / na / pixel_um
    otf = np.exp(-2 * math.pi**2 * diffraction_sigma_px**2 * (fx**2 + fy**2))
    radius_px = abs(z_um) * math.tan(math.asin(na / REFRACTIVE_INDEX)) / pixel_um
    if radius_px < 0.5:
        return otf
    distance = distance_from_origin(IMAGE_SIZE)
    disc = np.clip(radius_px + 0.5 - distance, 0, 1)
    # spherical aberration: a bright rim on one side of focus, a bright core on the other
    rho2 = np.clip(distance / radius_px, 0, 1) ** 2
    asymmetry = math.copysign(min(0.9, 1.2 * na), z_um)
    kernel = disc * (1 + asymmetry * (2 * rho2 - 1))
    return otf * np.fft.rfft2(kernel / kernel.sum())


def image_at_defocus(rng, transmission, z_um, magnification, na, dof_um) -> np.ndarray:
    """Blur each colour channel at its own focal depth, add camera noise, quantise to uint8."""
    channels = []
    for c, shift_dof in enumerate(CHROMATIC_SHIFT_DOF):
        otf = defocus_otf(z_um + shift_dof * dof_um, magnification, na)
        channels.append(np.fft.irfft2(np.fft.rfft2(transmission[..., c]) * otf, s=transmission.shape[:2]))
    image = np.stack(channels, axis=-1)
    image = image + rng.standard_normal(image.shape, dtype=np.float32) * np.sqrt(np.clip(image, 0, None) * 2e-4 + 2e-5)
    return np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)


def sobel_sharpness(image: np.ndarray) -> float:
    """Mean Sobel gradient magnitude of the grey image (0-255 scale), a classical focus measure."""
    grey = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    p = np.pad(grey, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return float(np.hypot(gx, gy).mean())


def write_split(root: Path, split: str, n_images: int, magnification: float, na: float,
                rng: np.random.Generator) -> int:
    """Image `n_images` defocused views of fresh tissue fields; write images and CSVs for one split."""
    objective = f"{magnification:g}x_{na:g}"
    dof_um = depth_of_field_um(magnification, na)
    pixel_um = CAMERA_PIXEL_UM / magnification
    rows = {slide: [] for slide in range(1, SLIDES_PER_SPLIT + 1)}
    n_fields = math.ceil(n_images / Z_PER_FIELD)
    for field in range(n_fields):
        slide = field % SLIDES_PER_SPLIT + 1
        stain_scale = rng.uniform(0.8, 1.2, size=2)
        transmission = render_transmission(*tissue_stain_densities(rng, pixel_um), stain_scale)
        transmission *= rng.uniform(0.9, 1.0) * rng.uniform(0.97, 1.03, size=3)  # lamp and white balance
        folder = root / "images" / objective / split / f"slide{slide}"
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(min(Z_PER_FIELD, n_images - field * Z_PER_FIELD)):
            z_um = rng.uniform(-MAX_DEFOCUS_DOF, MAX_DEFOCUS_DOF) * dof_um
            image = image_at_defocus(rng, transmission, z_um, magnification, na, dof_um)
            image_path = folder / f"field{field:03d}_z{z_um:+08.3f}um.png"
            Image.fromarray(image).save(image_path, compress_level=1)  # fast; PNG stays lossless
            rows[slide].append(
                f"{image_path.relative_to(root).as_posix()},{sobel_sharpness(image):.4f},"
                f"{z_um:.4f},{magnification:g},{na:g},{z_um / dof_um:.6f}"
            )
    split_dir = root / f".{split}"
    split_dir.mkdir(parents=True, exist_ok=True)
    for slide, lines in rows.items():
        if lines:
            (split_dir / f"{objective}_slide{slide}.csv").write_text("\n".join([CSV_COLUMNS, *lines]) + "\n")
    return n_images


def make_demo_dataset(root: Path, n_train: int = 192, n_val: int = 32, n_test: int = 32, seed: int = 0,
                      objectives: tuple[tuple[float, float], ...] = OBJECTIVES) -> Path:
    """Write the demo dataset under `root` (images per objective per split) and return `root`."""
    rng = np.random.default_rng(seed)
    for magnification, na in objectives:
        for split, n_images in (("train", n_train), ("val", n_val), ("test", n_test)):
            write_split(root, split, n_images, magnification, na, rng)
    return root


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Write a synthetic autofocus dataset.")
    parser.add_argument("root_dir", type=Path, help="folder to write the dataset into")
    parser.add_argument("--train", type=int, default=192, help="training images per objective (default: %(default)s)")
    parser.add_argument("--val", type=int, default=32, help="validation images per objective (default: %(default)s)")
    parser.add_argument("--test", type=int, default=32, help="test images per objective (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    return parser


def main(args: argparse.Namespace) -> None:
    if any(n < 1 for n in (args.train, args.val, args.test)):
        raise SystemExit("error: --train, --val and --test must be at least 1")
    if (args.root_dir / ".train").exists():
        print(f"{args.root_dir} already holds a dataset; leaving it as it is (delete it to write a new one)")
        return
    make_demo_dataset(args.root_dir, args.train, args.val, args.test, args.seed)
    for magnification, na in OBJECTIVES:
        print(f"{magnification:g}x/{na:g}: depth of field {depth_of_field_um(magnification, na):.2f} um, "
              f"defocus within +-{MAX_DEFOCUS_DOF:g} DOF")
    print(f"demo dataset written to {args.root_dir}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
