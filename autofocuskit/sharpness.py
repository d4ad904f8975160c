"""The frames' own sharpness as the focus loop's second witness: frames of one field taken at
different heights differ in sharpness, and that difference carries no field offset (the field
is compared with itself). numpy only.

The log Brenner measure of a field around focus follows a dip of known width and unknown depth:

    log S(z) = a - depth * u / (1 + u),   u = ((z - focus) / width)^2

`a` (the field's brightness and texture) cancels between frames; `width` is about one depth of
field: measured on the demo optics (10x/0.3, 20x/0.7, 40x/0.75, five DOF either side), this
curve with width 1 DOF fits the mean log Brenner within 0.05, and depth runs from 0.9 to 2.1 with
the objective and the field's contrast over the camera's noise. The loop does not know either
for the microscope it runs on: it weighs widths of 0.7 to 1.4 DOF and depths of 0.3 to 3 alike,
so that the frames themselves tell which fits.
"""
import math

import numpy as np

from .error_model import student_t_log_density
from .focus_measures import brenner, focus_channel

WIDTHS_DOF = (0.7, 1.0, 1.4)
DEPTHS = (0.3, 0.6, 1.2, 2.4)
SPREAD = 0.1  # of log sharpness between frames beyond what the curve explains (noise, tilt, tiles)


def log_sharpness(tiles: np.ndarray) -> float:
    """The log of the median Brenner measure of (N, H, W, 3) uint8 tiles, as make_dataset.py
    labels focus (focus_measures.brenner of the focus channel)."""
    if len(tiles) == 0:
        return math.nan
    return float(np.log(np.median([brenner(focus_channel(tile), [(0, 0)])[0] for tile in tiles]) + 1e-6))


def dip(offset_um: np.ndarray, width_um: float) -> np.ndarray:
    """The sharpness curve's shape at `offset_um` from focus, for a depth of 1: 0 at focus, -1 far out."""
    u = (offset_um / width_um) ** 2
    return -u / (1 + u)


class SharpnessEvidence:
    """What the sharpness of a field's frames says of where its focus lies, relative to the
    loop's start: a log likelihood over candidate focus positions."""

    def __init__(self, dof_um: float):
        self.width_um = dof_um
        self.widths_um = np.array(WIDTHS_DOF) * dof_um
        self.positions: list[float] = []
        self.values: list[float] = []
        self.seen_before = 0  # the first frames are an earlier loop's on the same field

    def add_frame(self, here_um: float, value: float) -> None:
        if math.isfinite(value):
            self.positions.append(here_um)
            self.values.append(value)

    def add_frames_seen_before(self, frames) -> None:
        """An earlier loop's frames of this field, (z relative to where it left the stage, which
        is this loop's start; log sharpness): a start still in focus shows as sharp as they did."""
        for here_um, value in frames:
            self.add_frame(here_um, value)
        self.seen_before = len(self.values)

    def sharpest(self) -> float | None:
        """Where this loop's sharpest frame was taken, relative to its start; None before any."""
        values = self.values[self.seen_before:]
        return self.positions[self.seen_before + int(np.argmax(values))] if values else None

    def frames_relative_to(self, end_um: float, keep_earlier: bool, most: int = 8) -> list[tuple[float, float]]:
        """The frames, (z relative to `end_um`, log sharpness), for the next loop on the field:
        this loop's, and with `keep_earlier` (it ended where it started: the field had not
        moved) the earlier loop's too; the `most` latest."""
        first = 0 if keep_earlier else self.seen_before
        return [(here - end_um, value) for here, value in zip(self.positions[first:], self.values[first:])][-most:]

    def log_likelihood(self, candidates: np.ndarray) -> np.ndarray:
        """Over candidate focus positions; flat with fewer than two frames (one frame has
        nothing to be compared with)."""
        if len(self.values) < 2:
            return np.zeros(len(candidates))
        here = np.array(self.positions)[:, None, None]
        values = np.array(self.values)[:, None, None]
        totals = []
        for width in self.widths_um:
            shape = dip(here - candidates[None, None, :], width)  # (frames, 1, candidates)
            residual = values - np.array(DEPTHS)[None, :, None] * shape  # (frames, depths, candidates)
            residual -= residual.mean(axis=0, keepdims=True)  # the field's own level cancels
            totals.append(student_t_log_density(residual / SPREAD).sum(axis=0))  # (depths, candidates)
        totals = np.concatenate(totals)
        return np.logaddexp.reduce(totals, axis=0) - math.log(len(totals))
