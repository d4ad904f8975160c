"""Estimate the defocus of camera frames with an exported autofocus model, or run closed-loop
trials on the virtual microscope of autofocuskit/optics.py; the autofocus itself is autofocuskit's
FocusPredictor and focus_loop.

    python focus.py --model model.onnx frame.tif [--magnification 20 --na 0.7] [--json]
    python focus.py --model model.onnx --simulate --magnification 10 --na 0.3     # closed-loop trials
"""
import argparse
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from autofocuskit.cli import add_bit_depth_argument, positive, probability, run
from autofocuskit.loop import DEFAULTS, FocusSettings, focus_loop, timed
from autofocuskit.predictor import FocusError, FocusPredictor
from autofocuskit.imaging import image_pixels
from autofocuskit.schema import CAMERA_PIXEL_UM, REFRACTIVE_INDEX, WAVELENGTH_UM, depth_of_field_um


def read_frame(path: Path) -> np.ndarray:
    """An image file (PNG, TIFF, ...; 8 or 16 bit grey, 8 bit RGB) as a numpy array, as PIL reads it."""
    from PIL import Image

    if not path.is_file():
        raise FocusError(f"image file {path} does not exist")
    try:
        with Image.open(path) as image:
            return image_pixels(image)
    except (OSError, ValueError, SyntaxError) as error:
        raise FocusError(f"cannot read image {path}: {error}") from None


def simulate(args, predictor: FocusPredictor) -> None:
    """Closed-loop trials on the demo data's virtual microscope: per trial and in all, the images
    taken until the loop stopped and whether the stage was then within 1 DOF; the loop's own
    cost per image; the frame latency."""
    from autofocuskit.optics import Optics, VirtualMicroscope

    dof_um = depth_of_field_um(args.magnification, args.na)
    rng = np.random.default_rng(args.seed)
    optics = Optics(args.chromatic_shift_dof)
    stopped = []  # (images taken, within 1 DOF, within 0.5 DOF when stopped, first image's side right) per trial
    claims = []  # (p_in_focus, within the tolerance) of each trial that stopped saying it was in focus
    images_total, loop_s = 0, 0.0
    for trial in range(args.trials):
        start = rng.uniform(-args.start_dof, args.start_dof) * dof_um
        scope = VirtualMicroscope(args.magnification, args.na, size=args.frame_size, defocus_um=start,
                                  seed=args.seed + trial, optics=optics)
        spent = {"camera and network": 0.0}  # not the loop's own cost
        predictor.predict = timed(predictor.predict, spent, "camera and network")
        began = time.perf_counter()
        settings = FocusSettings(args.tolerance_dof * dof_um, args.max_images, confidence=args.confidence)
        result = focus_loop(timed(scope.acquire, spent, "camera and network"), scope.move_by, predictor, settings)
        loop_s += time.perf_counter() - began - spent["camera and network"]
        del predictor.predict
        images_total += result.images
        within = abs(scope.defocus_um) <= dof_um
        stopped.append((result.images, within, abs(scope.defocus_um) <= 0.5 * dof_um,
                        first_side_right(result, start, dof_um)))
        if result.converged:
            claims.append((result.p_in_focus, abs(scope.defocus_um) <= args.tolerance_dof * dof_um))
        print(f"trial {trial}: start {start / dof_um:+.2f} DOF, moves {[round(m / dof_um, 2) for m in result.moves_um]} "
              f"DOF, stopped after {result.images} image(s): {result.stop_reason} (p in focus "
              f"{result.p_in_focus:.2f}), end {scope.defocus_um / dof_um:+.2f} DOF, "
              f"{'within' if within else 'NOT within'} 1 DOF", flush=True)
    images, within, within_half, side_right = (np.array(column) for column in zip(*stopped))
    print(f"\n{args.trials} trials, start within +-{args.start_dof} DOF ({dof_um:.2f} um), tolerance "
          f"{args.tolerance_dof} DOF, confidence {args.confidence}, at most {args.max_images} images: "
          f"mean images {images.mean():.2f}, ended within 1 DOF {within.mean():.0%}, within 0.5 DOF "
          f"{within_half.mean():.0%}")
    shares = ", ".join(f"{np.mean(within & (images <= count)):.0%}" for count in (2, 3, 4))
    print(f"within 1 DOF when stopped after at most 2 / 3 / 4 images: {shares}")
    print(by_first_side(images, within, side_right))
    if claims:
        print(claims_held(*(np.array(column) for column in zip(*claims))))
    loop_ms = 1000 * loop_s / images_total
    print(f"the loop's own cost (all but the camera and the network): {loop_ms:.2f} ms per image")
    print_latency(predictor, args.seed, loop_ms)


def first_side_right(result, start_um: float, dof_um: float) -> float:
    """1 when the trial's first image read the side of focus it started on, 0 when the other;
    nan when it started within 1 DOF (where the side is a coin flip) or the image had no sample."""
    first = result.estimates[0].defocus_um if result.estimates else math.nan
    if abs(start_um) <= dof_um or not math.isfinite(first):
        return math.nan
    return float(np.sign(first) == np.sign(start_um))


def by_first_side(images: np.ndarray, within: np.ndarray, side_right: np.ndarray) -> str:
    """How the trials that started beyond 1 DOF fared by the side their first image read. A loop
    whose first image reads the wrong side learns it only from a second image further out, so
    the share within 1 DOF by 3 images is bounded by the network's side, not the loop's rule."""
    far = ~np.isnan(side_right)
    wrong, right = far & (side_right == 0), far & (side_right == 1)

    def share(trials: np.ndarray) -> str:
        return f"{np.mean(within[trials] & (images[trials] <= 3)):.0%}" if trials.any() else "-"

    return (f"the first image read the wrong side of focus in {wrong.sum()} of the {far.sum()} trials that started "
            f"beyond 1 DOF; within 1 DOF by 3 images: {share(right)} of those it read right, {share(wrong)} of these")


def claims_bound(claimed: np.ndarray) -> float:
    """The least share of the loops that stopped as in focus, claiming `claimed`, that must be for
    their claims to hold: the mean claim less two binomial standard errors (fewer: the network errs
    more on this microscope than on the held-out images its error model was measured on)."""
    mean = float(claimed.mean())
    return mean - 2 * math.sqrt(mean * (1 - mean) / len(claimed))


def claims_held(claimed: np.ndarray, held: np.ndarray) -> str:
    """How often the trials that stopped as in focus (with probability `claimed`) were (`held`)."""
    line = (f"{len(claimed)} trials stopped as in focus within the tolerance, with mean probability "
            f"{claimed.mean():.2f}: {held.mean():.0%} were")
    if held.mean() < claims_bound(claimed):
        line += " (fewer: the error model from the held-out images is too kind to this microscope)"
    return line


def print_latency(predictor: FocusPredictor, seed: int, loop_ms: float, repeats: int = 20) -> None:
    """Median time of predict() on 1024 and 2048 pixel frames, beside ONNX Runtime's time for the
    same tiles; the frames' sharpness measure (part of predict) and, with it, the loop's own cost
    `loop_ms` against the network's time."""
    from autofocuskit.optics import VirtualMicroscope
    from autofocuskit.sharpness import log_sharpness

    for size in (1024, 2048):
        frame = VirtualMicroscope(10, 0.3, size=size, seed=seed).acquire()
        times = {"predict": [], "network": [], "sharpness": []}
        for _ in range(repeats):  # taking turns, so that a busy moment of the machine hits all three
            tiles, _ = predictor.tiles(frame)  # the sharpness as predict measures it: on tiles just cut
            for name, call in (("sharpness", lambda: log_sharpness(tiles)), ("predict", lambda: predictor.predict(frame)),
                               ("network", lambda: predictor.run_tiles(tiles))):
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
        whole, bare, sharpness = (1000 * np.median(times[name]) for name in ("predict", "network", "sharpness"))
        print(f"{size}x{size} frame, {len(tiles)} tiles: predict {whole:.1f} ms, ONNX Runtime alone {bare:.1f} ms "
              f"({whole / bare:.2f}x); the frames' sharpness {sharpness:.2f} ms, with the loop's own "
              f"{sharpness + loop_ms:.2f} ms: {(sharpness + loop_ms) / bare:.2f} of the network's time")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Estimate the defocus of camera frames with an exported "
                                                 "autofocus model, or run closed-loop trials on a virtual microscope.")
    parser.add_argument("images", type=Path, nargs="*", help="image files (PNG, TIFF; 8 or 16 bit, grey or RGB)")
    parser.add_argument("--model", type=Path, required=True, help="the fp32 ONNX file myTest.py wrote")
    parser.add_argument("--magnification", type=float, default=None, help="objective magnification (MOAF models; "
                                                                          "--simulate) (default: %(default)s)")
    parser.add_argument("--na", type=float, default=None, help="objective NA (default: %(default)s)")
    parser.add_argument("--dof_um", type=float, default=None,
                        help="the objective's depth of field for MOAF models (default: from the formula)")
    parser.add_argument("--wavelength_um", type=float, default=WAVELENGTH_UM, help="(default: %(default)s)")
    parser.add_argument("--refractive_index", type=float, default=REFRACTIVE_INDEX, help="(default: %(default)s)")
    parser.add_argument("--camera_pixel_um", type=float, default=CAMERA_PIXEL_UM, help="(default: %(default)s)")
    parser.add_argument("--tiles_per_side", type=int, default=4, help="tiles per axis (default: %(default)s)")
    parser.add_argument("--stride", type=int, default=None, help="tile every N pixels instead (default: off)")
    parser.add_argument("--min_tiles", type=int, default=3,
                        help="fewer usable tiles than this: no_sample (default: %(default)s)")
    parser.add_argument("--pixel_size_um", type=positive(float), default=None,
                        help="the frames' pixel size in the specimen (camera pixel x binning / magnification): "
                             "they are resampled to the one the model was trained at (default: used as they are)")
    add_bit_depth_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object per image")
    parser.add_argument("--simulate", action="store_true", help="closed-loop trials on the virtual microscope")
    parser.add_argument("--trials", type=int, default=50, help="--simulate trials (default: %(default)s)")
    parser.add_argument("--max_images", type=positive(int), default=DEFAULTS.max_images,
                        help="--simulate images per trial (default: %(default)s)")
    parser.add_argument("--start_dof", type=float, default=5.0,
                        help="--simulate starts within +-this many DOF (default: %(default)s)")
    parser.add_argument("--tolerance_dof", type=float, default=0.5, help="--simulate tolerance (default: %(default)s)")
    parser.add_argument("--confidence", type=probability, default=DEFAULTS.confidence,
                        help="--simulate: stop when in focus within the tolerance with this probability, by the "
                             "network's measured error (default: %(default)s)")
    parser.add_argument("--frame_size", type=int, default=1024, help="--simulate frame size (default: %(default)s)")
    parser.add_argument("--chromatic_shift_dof", type=float, default=0.5,
                        help="--simulate optics, as make_demo_data.py (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    return parser


def main(args: argparse.Namespace) -> None:
    predictor = FocusPredictor(args.model, magnification=args.magnification, na=args.na, dof_um=args.dof_um,
                               wavelength_um=args.wavelength_um, refractive_index=args.refractive_index,
                               camera_pixel_um=args.camera_pixel_um, tiles_per_side=args.tiles_per_side,
                               stride=args.stride, min_tiles=args.min_tiles, pixel_size_um=args.pixel_size_um,
                               bit_depth=args.bit_depth)
    if args.simulate:
        if args.magnification is None or args.na is None:
            raise FocusError("--simulate needs the objective: --magnification and --na")
        return simulate(args, predictor)
    if not args.images:
        raise FocusError("give one or more image files, or --simulate")
    estimates = [(path, predictor.predict(read_frame(path))) for path in args.images]
    for path, estimate in estimates:
        print(json.dumps(as_json({"image": str(path), **asdict(estimate)})) if args.json else described(path, estimate))
    without = [str(path) for path, estimate in estimates if estimate.status == "no_sample"]
    if without:
        raise FocusError(f"no estimate for {', '.join(without)}: too few tiles with content")


def described(path: Path, estimate) -> str:
    """One line a person reads: the estimate and the move, or why there is none."""
    if estimate.status == "no_sample":
        return f"{path}: no_sample, no estimate: {estimate.reason}"
    side = "" if estimate.p_positive is None else f", p_positive {estimate.p_positive:.2f}"
    why = f" ({estimate.reason})" if estimate.reason else ""
    return (f"{path}: {estimate.status}{why}, defocus {estimate.defocus_um:+.2f} um (move the stage by "
            f"{-estimate.defocus_um:+.2f} um), spread {estimate.spread_um:.2f} um{side}, "
            f"{estimate.tiles_used}/{estimate.tiles_total} tiles")


def as_json(values: dict) -> dict:
    """Valid JSON: what is not a number (no estimate) is null, not NaN."""
    return {name: None if isinstance(value, float) and not math.isfinite(value) else value
            for name, value in values.items()}


if __name__ == "__main__":
    run(main, get_args_parser().parse_args())
