"""Pixels as the network sees them, without torch: its input size, camera pixels to 8-bit
RGB, tiles of a frame, the Sobel column and the test for tiles worth using; and the few
statistics the error model and the sharpness share (a robust spread, Student's t,
log-sum-exp). focus.py, make_dataset.py and make_demo_data.py need only this and numpy, so a
focus loop on a microscope's computer does not load torch.
"""
import functools

import numpy as np

IMAGE_SIZE = 224  # the networks' input is IMAGE_SIZE x IMAGE_SIZE; other sizes are refused, not resized
GREY_WEIGHTS = (0.299, 0.587, 0.114)  # luma of red, green and blue (ITU-R BT.601), as PIL's convert('L')
# the content test's thresholds: contrast in grey levels between 4x4 blocks, share of clipped values
MIN_CONTRAST, MAX_CLIPPED = 2.0, 0.25
MAD_TO_SD = 1.4826  # median absolute deviation x this = standard deviation, for normally spread values
STUDENT_DOF = 3  # the degrees of freedom of the focus loop's likelihoods and priors: heavy tails, a finite variance


def robust_spread(values: np.ndarray) -> float:
    """The standard deviation of normally spread values, from their median absolute deviation."""
    values = np.asarray(values, dtype=np.float64)
    return float(MAD_TO_SD * np.median(np.abs(values - np.median(values))))


def student_t_log_density(z: np.ndarray) -> np.ndarray:
    """log of Student's t density with STUDENT_DOF degrees of freedom at `z` standard units, up
    to a constant: heavier tails than a normal, so one frame far off cannot outweigh the rest."""
    return -2 * np.log1p(z * z / STUDENT_DOF)


def log_sum_exp(log_values: np.ndarray, axis: int = 0) -> np.ndarray:
    """log(sum(exp(log_values))) along `axis`, without overflow; a fifth of np.logaddexp.reduce's time."""
    top = np.max(log_values, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return np.squeeze(top, axis=axis) + np.log(np.sum(np.exp(log_values - top), axis=axis))


def rgb_uint8(pixels: np.ndarray, float_max: float | None = None, bit_depth: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 from grey (H, W) or RGB (H, W, 3) pixels of any integer or float type,
    as `as_uint8` scales them."""
    pixels = as_uint8(pixels, float_max, bit_depth)
    return np.repeat(pixels[..., None], 3, axis=-1) if pixels.ndim == 2 else pixels


def as_uint8(pixels: np.ndarray, float_max: float | None = None, bit_depth: int | None = None) -> np.ndarray:
    """Pixels of any integer or float type on the network's 8-bit scale, grey or RGB as they are.

    Integers are scaled by the camera's full scale: 2**bit_depth - 1 maps to 255, so a 12-bit
    camera's 4095 is white whether its container has 12 or 16 bits (values above it are
    clipped). Without `bit_depth`, the container's: every integer type but uint8 is divided by
    257 (65535 maps to 255), so brightness keeps its meaning between images. Floats count as
    [0, 1] when their maximum (`float_max`, else the array's) is at most 1, else as 8-bit values.
    """
    if bit_depth is not None and np.issubdtype(pixels.dtype, np.integer) and bit_depth < 8 * pixels.itemsize:
        if pixels.dtype == np.uint16:
            return uint16_to_uint8(bit_depth)[pixels]
        return np.clip(pixels.astype(np.float64) * (255 / (2**bit_depth - 1)) + 0.5, 0, 255).astype(np.uint8)
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == np.uint16:
        return uint16_to_uint8(16)[pixels]  # the same values as below, looked up: a frame at a time is common
    if np.issubdtype(pixels.dtype, np.integer):
        scale = 1 / 257.0
    else:
        maximum = float(pixels.max(initial=0.0)) if float_max is None else float_max
        scale = 255.0 if maximum <= 1.0 else 1.0
    return np.clip(pixels.astype(np.float64) * scale + 0.5, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=None)
def uint16_to_uint8(bit_depth: int) -> np.ndarray:
    """as_uint8 of every uint16 value for a camera of `bit_depth` bits, as a lookup table."""
    values = np.arange(2**16, dtype=np.float64) * (255 / (2**bit_depth - 1))
    return np.clip(values + 0.5, 0, 255).astype(np.uint8)


def full_range_uint16(pixels: np.ndarray, bit_depth: int) -> np.ndarray:
    """uint16 pixels of a `bit_depth`-bit camera stretched to the 16-bit range, so that a file
    written with them needs no bit depth to be read right."""
    if bit_depth >= 16:
        return pixels
    return np.clip(np.rint(pixels * (65535 / (2**bit_depth - 1))), 0, 65535).astype(np.uint16)


def image_pixels(image) -> np.ndarray:
    """An open PIL image as a numpy array: grey and RGB as they are (16-bit grey stays 16-bit),
    palette, alpha, CMYK and 1-bit images as RGB."""
    return np.asarray(image.convert("RGB") if image.mode in ("P", "RGBA", "CMYK", "LA", "1") else image)


def resample(pixels: np.ndarray, scale: float) -> np.ndarray:
    """uint8 grey or RGB pixels resampled to `scale` times their size (scale = the frame's pixel
    size / the wanted one): area averaging when shrinking, as a coarser camera pixel
    integrates the light; bilinear interpolation when enlarging."""
    from PIL import Image

    height, width = pixels.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    method = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(pixels).resize(size, method))


def tile_origins(height: int, width: int, tiles_per_side: int = 4, stride: int | None = None) -> list[tuple[int, int]]:
    """Top-left corners (y, x) of IMAGE_SIZE tiles of a frame: every `stride` pixels, or
    `tiles_per_side` evenly spread over each axis (overlapping where the frame is small, gaps
    where it is large)."""
    def axis(length: int) -> np.ndarray:
        last = length - IMAGE_SIZE
        if stride is not None:
            return np.arange(0, last + 1, stride)
        return np.unique(np.linspace(0, last, tiles_per_side).round().astype(int))
    return [(int(y), int(x)) for y in axis(height) for x in axis(width)]


def sobel_gradients(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Sobel derivatives (across, down) of a grey image, its edges repeated outward: a
    difference two pixels apart, smoothed (1, 2, 1) the other way."""
    p = np.pad(grey, 1, mode="edge")
    across, down = p[:, 2:] - p[:, :-2], p[2:] - p[:-2]
    return across[:-2] + 2 * across[1:-1] + across[2:], down[:, :-2] + 2 * down[:, 1:-1] + down[:, 2:]


def sobel_sharpness(image: np.ndarray) -> float:
    """Mean Sobel gradient magnitude of the grey image (0-255 scale) of a tile, grey (H, W) or
    RGB (H, W, 3), such as a uint8 tile as the network sees it: the CSV's sobel_sharpness
    column, a classical focus measure (the datasets the project writes all compute it here)."""
    grey = image.astype(np.float64)
    if grey.ndim == 3:
        grey = grey @ np.array(GREY_WEIGHTS)
    gx, gy = sobel_gradients(grey)
    return float(np.sqrt(gx * gx + gy * gy).mean())


def has_content(tile: np.ndarray, min_contrast: float = MIN_CONTRAST, max_clipped: float = MAX_CLIPPED) -> bool:
    """Whether a uint8 tile, grey or RGB, shows something to focus on (focus.py and
    make_dataset.py use only such tiles): contrast above `min_contrast` grey levels between
    its 4x4-pixel blocks (above the camera's noise, which averaging removes, and kept by
    tissue even when blurred) and at most `max_clipped` of its values clipped. A grey tile
    and its RGB copy get the same answer."""
    if np.count_nonzero(tile == 255) > max_clipped * tile.size:
        return False
    channels = tile.shape[2] if tile.ndim == 3 else 1
    # sums over 4x4 pixels and the channels: rows of 4 pixels x channels are contiguous
    block_sums = (tile.reshape(IMAGE_SIZE // 4, 4, IMAGE_SIZE // 4, 4 * channels)
                  .sum(axis=3, dtype=np.uint32).sum(axis=1))
    return float(block_sums.std()) / (16 * channels) >= min_contrast
