"""Classical focus measures of a frame's tiles and the peak of a focus curve over z: how
make_dataset.py finds the focus of a stack's tiles, and micromanager.calibrate the focus of a
z-sweep, so that "in focus" means the same in training and on the microscope. numpy only.
"""
import math

import numpy as np

from .imaging import IMAGE_SIZE, sobel_gradients


def focus_channel(pixels: np.ndarray) -> np.ndarray:
    """The plane whose focus defines the labels, as float32: a grey frame, or an RGB frame's green
    channel. Red and blue focus on either side of green in objectives not fully corrected for
    colour, and green light (0.55 um) is the DOF formula's; a grey camera's focus is that of
    its whole band."""
    return (pixels[..., 1] if pixels.ndim == 3 else pixels).astype(np.float32)


def tile_sums(image: np.ndarray, origins: list[tuple[int, int]]) -> np.ndarray:
    """The sum of `image` over every tile."""
    return np.array([image[y:y + IMAGE_SIZE, x:x + IMAGE_SIZE].sum(dtype=np.float64) for y, x in origins])


def normalized_variance(grey: np.ndarray, origins) -> np.ndarray:
    """Variance / mean of each tile: robust to noise and to the lamp's brightness."""
    n = IMAGE_SIZE * IMAGE_SIZE
    mean = tile_sums(grey, origins) / n
    variance = tile_sums(grey.astype(np.float64) ** 2, origins) / n - mean**2
    return np.clip(variance, 0, None) / np.maximum(mean, 1e-9)


def brenner(grey: np.ndarray, origins) -> np.ndarray:
    """Mean squared difference between pixels two apart, across and down: sharp-peaked, noise-sensitive."""
    energy = np.zeros_like(grey)
    energy[:, :-2] += (grey[:, 2:] - grey[:, :-2]) ** 2
    energy[:-2, :] += (grey[2:, :] - grey[:-2, :]) ** 2
    return tile_sums(energy, origins) / IMAGE_SIZE**2


def tenengrad(grey: np.ndarray, origins) -> np.ndarray:
    """Mean squared Sobel gradient (Sobel energy)."""
    gx, gy = sobel_gradients(grey)
    return tile_sums(gx**2 + gy**2, origins) / IMAGE_SIZE**2


FOCUS_MEASURES = {"normalized_variance": normalized_variance, "brenner": brenner, "tenengrad": tenengrad}


def curve_peak(z_um: np.ndarray, curve: np.ndarray, min_peak_contrast: float) -> tuple[float, str]:
    """(z of the curve's peak, "ok") or (nan, why not): "edge" when the maximum is the first or
    last slice, "flat" when it stands less than `min_peak_contrast` above the curve's lowest.

    The peak lies between slices: the vertex of a parabola through the log of the curve at
    the maximum and up to two slices on either side (a Gaussian-shaped peak is a parabola in
    log), kept within one slice of the maximum.
    """
    top = int(np.argmax(curve))
    if top in (0, len(curve) - 1):
        return math.nan, "edge"
    if curve[top] < (1 + min_peak_contrast) * max(curve.min(), 1e-12):
        return math.nan, "flat"
    around = slice(max(0, top - 2), min(len(curve), top + 3))
    z, log_curve = z_um[around] - z_um[top], np.log(np.maximum(curve[around], 1e-12))
    a, b, _ = np.polyfit(z, log_curve, 2)
    low, high = sorted((z_um[top - 1] - z_um[top], z_um[top + 1] - z_um[top]))
    vertex = -b / (2 * a) if a < 0 else 0.0
    return float(z_um[top] + np.clip(vertex, low, high)), "ok"
