"""Does a network work on this microscope? A z-sweep at one position, each slice labelled as
make_dataset.py labels (the focus measure's peak per tile), against the network's estimate
there; the offset found can be saved beside the model, where FocusPredictor applies it.
"""
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pymmcore_plus import CMMCorePlus

from .cli import writing
from .exported_model import write_calibration
from .focus_measures import FOCUS_MEASURES, curve_peak, focus_channel
from .imaging import tile_origins
from .microscope import MicroscopeError, check_core, use_camera_settings
from .predictor import FocusPredictor


@dataclass
class Calibration:
    """How a network's estimates compare with the focus a z-sweep shows, on one microscope."""

    z_um: np.ndarray  # the sweep's stage positions
    true_defocus_um: np.ndarray  # z - the sweep's focus, as make_dataset.py labels
    estimates_um: np.ndarray  # the network's defocus per slice; nan where it gave none
    focus_z_um: float  # where the focus measure peaks
    dof_um: float
    distance_error_dof: float  # mean | |estimate| - |true| |
    side_accuracy: float  # share of slices more than half a DOF from focus whose side is right
    scale: float  # estimate ~ scale x true + offset_um, fitted by least squares
    offset_um: float

    def report(self) -> str:
        return (f"focus at z = {self.focus_z_um:.2f} um; {np.isfinite(self.estimates_um).sum()} of {len(self.z_um)} "
                f"slices with an estimate: distance error {self.distance_error_dof:.2f} DOF, side accuracy "
                f"{self.side_accuracy:.0%}, estimate = {self.scale:.2f} x true {self.offset_um:+.2f} um "
                f"(DOF {self.dof_um:.2f} um)")


def calibrate(core: CMMCorePlus, predictor: FocusPredictor, span_um: float, steps: int,
              dof_um: float | None = None, focus_measure: str = "brenner", min_peak_contrast: float = 0.3,
              z_range_um: tuple[float, float] | None = None, plot_path: Path | None = None,
              save: bool = False) -> Calibration:
    """Does this network work on this microscope? A z-sweep of `steps` slices over `span_um`
    centred where the stage is, at one position: each slice labelled as make_dataset.py labels
    (the focus measure's peak per tile, placed between slices; their median is the focus),
    against the network's estimate there. The stage returns to its start; the sweep must lie in
    `z_range_um`. `plot_path`: a PNG of estimate against true defocus; `save`: the offset goes
    into the file beside the model, which FocusPredictor applies from then on."""
    focus_device = check_core(core)
    use_camera_settings(core, predictor)
    dof_um = dof_um or predictor.dof_um
    if not dof_um:
        raise MicroscopeError("the model's file does not say its objective: give dof_um")
    start = core.getPosition(focus_device)
    z_um = start + np.linspace(-span_um / 2, span_um / 2, steps)
    if z_range_um is not None and not (z_range_um[0] <= z_um[0] and z_um[-1] <= z_range_um[1]):
        raise MicroscopeError(f"the sweep {z_um[0]:.2f}..{z_um[-1]:.2f} leaves z_range_um {z_range_um}: nothing moved")
    curves, estimates = sweep(core, focus_device, predictor, z_um, focus_measure)
    peaks = [peak for peak, status in (curve_peak(z_um, curve, min_peak_contrast) for curve in curves.T)
             if status == "ok"]
    if not peaks:
        raise MicroscopeError(f"no tile's focus lies inside the sweep {z_um[0]:.2f}..{z_um[-1]:.2f}: widen span_um "
                              "or start nearer focus")
    calibration = compared(z_um, float(np.median(peaks)), estimates, dof_um)
    if plot_path is not None:
        plot_calibration(calibration, plot_path)
    if save:
        write_calibration(predictor.model_path, predictor.objective, calibration.offset_um,
                          {"scale": calibration.scale, "distance_error_dof": calibration.distance_error_dof,
                           "side_accuracy": calibration.side_accuracy})
    return calibration


def sweep(core, focus_device: str, predictor: FocusPredictor, z_um: np.ndarray,
          focus_measure: str) -> tuple[np.ndarray, np.ndarray]:
    """Each slice's focus measure per tile (slices x tiles) and the network's defocus estimate;
    the stage back where it started, whatever happens."""
    start = core.getPosition(focus_device)
    curves, estimates = [], []
    try:
        for z in z_um:
            core.setPosition(focus_device, float(z))
            core.waitForDevice(focus_device)
            core.snapImage()
            frame = core.getImage()
            origins = tile_origins(frame.shape[0], frame.shape[1], predictor.tiles_per_side)
            curves.append(FOCUS_MEASURES[focus_measure](focus_channel(frame), origins))
            estimates.append(predictor.predict(frame).defocus_um)
    finally:
        core.setPosition(focus_device, start)
        core.waitForDevice(focus_device)
    return np.array(curves), np.array(estimates)


def compared(z_um: np.ndarray, focus_z_um: float, estimates_um: np.ndarray, dof_um: float) -> Calibration:
    """The sweep's slices against their estimates: errors in DOF and the fitted line."""
    true = z_um - focus_z_um
    known = np.isfinite(estimates_um)
    if known.sum() < 2:
        raise MicroscopeError(f"the network gave an estimate for {known.sum()} of {len(z_um)} slices: too few to "
                              "compare (a field without tissue?)")
    distance_error = float(np.mean(np.abs(np.abs(estimates_um[known]) - np.abs(true[known])))) / dof_um
    sided = known & (np.abs(true) > dof_um / 2)
    side_accuracy = float(np.mean(np.sign(estimates_um[sided]) == np.sign(true[sided]))) if sided.any() else math.nan
    scale, offset = np.polyfit(true[known], estimates_um[known], 1)
    return Calibration(z_um, true, estimates_um, focus_z_um, dof_um, distance_error, side_accuracy, float(scale),
                       float(offset))


def plot_calibration(calibration: Calibration, path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 5))
    axes = figure.subplots()
    true_dof, estimate_dof = calibration.true_defocus_um / calibration.dof_um, calibration.estimates_um / calibration.dof_um
    axes.plot(true_dof, true_dof, color="grey", linewidth=1, label="perfect")
    axes.plot(true_dof, estimate_dof, "o-", label="network")
    axes.set(xlabel="true defocus (DOF), from the focus measure", ylabel="estimated defocus (DOF)",
             title=f"distance error {calibration.distance_error_dof:.2f} DOF, side {calibration.side_accuracy:.0%}")
    axes.legend()
    with writing(path):
        figure.savefig(path, dpi=120, bbox_inches="tight")
