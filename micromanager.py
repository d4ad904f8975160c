"""The autofocus on a Micro-Manager microscope from a shell: an autofocused acquisition on the
demo microscope, one autofocus or a calibration sweep on a microscope's configuration. The
integration itself is in autofocuskit/microscope.py:

    from autofocuskit import FocusPredictor
    from autofocuskit.microscope import AutofocusEngine
    core.mda.set_engine(AutofocusEngine(core, FocusPredictor("model.onnx"), tolerance_um=1.0,
                                        z_range_um=(1000, 1400)))
    core.mda.run(useq.MDASequence(stage_positions=[...], time_plan=...,
                                  autofocus_plan=useq.AxesBasedAF(axes=("p",))))

    python micromanager.py --model model.onnx --demo                  # an autofocused acquisition, no hardware
    python micromanager.py --model model.onnx --config MMConfig.cfg   # focus a real microscope once
    python micromanager.py --model model.onnx --config MMConfig.cfg --calibrate 40   # does it work here?

The core's camera, focus device and pixel size (its pixel-size configuration) are used as they
are set; the frames are resampled to the pixel size the network was trained at, and scaled
by the camera's bit depth.
"""
import argparse
import time
from pathlib import Path

import numpy as np
import useq
from pymmcore_plus import CMMCorePlus

from autofocuskit.calibration import calibrate
from autofocuskit.cli import positive, probability, run
from autofocuskit.demo_microscope import DemoSlide, DemoZStage, demo_core
from autofocuskit.exported_model import OBJECTIVE_INPUT, calibration_file, open_session
from autofocuskit.loop import DEFAULTS, FocusSettings, timed
from autofocuskit.microscope import FAILURE_POLICIES, AutofocusEngine, autofocus, configured_core, result_summary
from autofocuskit.predictor import FocusPredictor
from autofocuskit.schema import depth_of_field_um


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="The autofocus on a Micro-Manager microscope: an autofocused "
                                                 "multi-position acquisition on the demo microscope (--demo), or "
                                                 "one autofocus on a microscope's configuration (--config).")
    parser.add_argument("--model", required=True, help="the fp32 ONNX file myTest.py wrote")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--demo", action="store_true", help="the demo microscope as Python devices")
    where.add_argument("--config", default=None,
                       help="a Micro-Manager configuration file (needs Micro-Manager's device adapters: "
                            "'mmcore install')")
    parser.add_argument("--magnification", type=positive(float), default=20,
                        help="the objective (the demo's; a MOAF model's) (default: %(default)s)")
    parser.add_argument("--na", type=positive(float), default=0.7, help="(default: %(default)s)")
    parser.add_argument("--tolerance_dof", type=positive(float), default=0.5,
                        help="stop within this many depths of field of focus (default: %(default)s)")
    parser.add_argument("--max_images", type=positive(int), default=DEFAULTS.max_images,
                        help="per autofocus (default: %(default)s)")
    parser.add_argument("--confidence", type=probability, default=DEFAULTS.confidence,
                        help="stop when in focus within the tolerance with this probability, by the network's "
                             "measured error (default: %(default)s)")
    parser.add_argument("--z_range_um", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="the focus device never leaves this range (default: the demo's +-20 DOF; none)")
    parser.add_argument("--on_failure", choices=sorted(FAILURE_POLICIES), default="keep",
                        help="what a failed autofocus does in an acquisition: " + "; ".join(
                            f"{name}: {text}" for name, text in FAILURE_POLICIES.items()) + " (default: %(default)s)")
    parser.add_argument("--preset", nargs=2, action="append", default=[], metavar=("GROUP", "PRESET"),
                        help="--config: set this configuration preset first, e.g. --preset Objective 40X; "
                             "repeatable (default: none)")
    parser.add_argument("--positions", type=positive(int), default=6, help="--demo positions (default: %(default)s)")
    parser.add_argument("--time_points", type=positive(int), default=2,
                        help="--demo time points (default: %(default)s)")
    parser.add_argument("--drift_dof", type=positive(float, allow_zero=True), default=0.0,
                        help="--demo: between time points the slide's focus drifts by up to this many DOF, "
                             "drawn uniformly (default: %(default)s)")
    parser.add_argument("--frame_size", type=positive(int), default=512,
                        help="--demo camera frame size (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="--demo slide (default: %(default)s)")
    parser.add_argument("--calibrate", type=positive(float), default=None, metavar="SPAN_UM",
                        help="instead of focusing: a z-sweep this many um wide, centred where the stage is (--demo: "
                             "near focus at the slide's centre), the network's estimates against the focus it shows")
    parser.add_argument("--steps", type=positive(int), default=21, help="--calibrate slices (default: %(default)s)")
    parser.add_argument("--plot", type=Path, default=Path("calibration.png"),
                        help="--calibrate: estimate against true defocus (default: %(default)s)")
    parser.add_argument("--save_calibration", action="store_true",
                        help="--calibrate: save the offset beside the model, where FocusPredictor applies it")
    return parser


def is_moaf(model_path) -> bool:
    return OBJECTIVE_INPUT in {node.name for node in open_session(model_path).get_inputs()}


def build_predictor(args) -> FocusPredictor:
    moaf = is_moaf(args.model)
    return FocusPredictor(args.model, magnification=args.magnification if moaf else None,
                          na=args.na if moaf else None)


def focus_settings(args, z_range_um=None) -> FocusSettings:
    """The loop's settings from the command line, the tolerance from DOF into um."""
    tolerance_um = args.tolerance_dof * depth_of_field_um(args.magnification, args.na)
    return FocusSettings(tolerance_um, args.max_images, confidence=args.confidence, z_range_um=z_range_um)


def run_demo(args, predictor: FocusPredictor) -> None:
    """A multi-position, multi-time-point acquisition on the demo microscope, autofocused at
    every position and time point; per position and time point: defocus before, images, after."""
    dof_um = depth_of_field_um(args.magnification, args.na)
    slide, z_stage = DemoSlide(args.magnification, args.na, args.frame_size, seed=args.seed), DemoZStage()
    core = demo_core(slide, z=z_stage)
    rng = np.random.default_rng(args.seed)
    positions = [useq.Position(x=x, y=y, z=0.0) for x, y in rng.uniform(-1500, 1500, size=(args.positions, 2))]
    z_range = tuple(args.z_range_um) if args.z_range_um else (-20 * dof_um, 20 * dof_um)
    engine = AutofocusEngine(core, predictor, focus_settings(args, z_range), on_failure=args.on_failure)
    core.mda.set_engine(engine)
    frames = []

    @core.mda.events.frameReady.connect
    def record(image, event, metadata):
        x, y = core.getXYPosition()
        frames.append((event.index.get("t", 0), event.index.get("p"), (core.getZPosition() - slide.focus_z_um(x, y))
                       / dof_um, metadata.get("autofocus", {})))

    drifts_dof = np.random.default_rng(args.seed + 1).uniform(-1, 1, args.time_points) * args.drift_dof
    drifts_dof[0] = 0.0
    time_point = {"t": 0}

    @core.mda.events.eventStarted.connect
    def drift(event):
        t = event.index.get("t", 0)
        if t != time_point["t"]:  # a new time point: the whole slide's focus has drifted
            time_point["t"] = t
            slide.z0_um += drifts_dof[t] * dof_um

    sequence = useq.MDASequence(stage_positions=positions, time_plan={"interval": 0, "loops": args.time_points},
                                autofocus_plan=useq.AxesBasedAF(axes=("p",)))
    core.mda.run(sequence)
    print(f"{args.positions} positions x {args.time_points} time points at {args.magnification:g}x/{args.na:g} "
          f"(DOF {dof_um:.2f} um), tolerance {args.tolerance_dof} DOF, drift between time points up to "
          f"{args.drift_dof} DOF")
    for t, p, end_dof, summary in frames:
        print(f"t {t} position {p}: {frame_line(end_dof, summary, dof_um)}")
    expected = args.positions * args.time_points
    if len(frames) < expected:
        print(f"frames skipped: {expected - len(frames)} of {expected}")
    within = sum(abs(end) <= 1 for _, _, end, _ in frames)
    print(f"frames within 1 DOF of focus: {within}/{len(frames)}")
    for t in range(args.time_points):
        images = [summary.get("images", 0) for time, _, _, summary in frames if time == t]
        print(f"time point {t}: " + (f"{np.mean(images):.2f} images per autofocus" if images else "no frame taken") +
              (f" (focus drifted {drifts_dof[t]:+.2f} DOF)" if t else ""))
    print(f"the focus stage stayed within {min(z_stage.visited):.2f}..{max(z_stage.visited):.2f} um "
          f"(z_range_um {z_range[0]:.2f}..{z_range[1]:.2f})")
    print_integration_cost(core, predictor, focus_settings(args))


def frame_line(end_dof: float, summary: dict, dof_um: float) -> str:
    """One frame of the demo acquisition for a person: where its autofocus started and ended, and
    whether the frame follows a successful one."""
    start_dof = end_dof - summary.get("z_moved_um", 0.0) / dof_um
    line = (f"start {start_dof:+.2f} DOF, {summary.get('images')} image(s), {summary.get('stop_reason')}, "
            f"frame at {end_dof:+.2f} DOF")
    if not summary.get("focused", False):
        line += f"  NOT FOCUSED ({summary.get('outcome')}: {summary.get('problem')})"
    return line + ("  AT THE Z LIMIT" if summary.get("at_limit") else "")


def print_integration_cost(core: CMMCorePlus, predictor: FocusPredictor, settings: FocusSettings,
                           repeats: int = 10) -> None:
    """What `autofocus` costs beyond its snaps (snapImage, getImage) and predictions, per call,
    measured on `repeats` calls where the stage is."""
    spent = {"snap": 0.0, "predict": 0.0}
    core.snapImage, core.getImage = timed(core.snapImage, spent, "snap"), timed(core.getImage, spent, "snap")
    predictor.predict = timed(predictor.predict, spent, "predict")
    start = time.perf_counter()
    for _ in range(repeats):
        autofocus(core, predictor, settings)
    total = (time.perf_counter() - start) / repeats
    snap, predict = spent["snap"] / repeats, spent["predict"] / repeats
    del core.snapImage, core.getImage, predictor.predict
    print(f"per autofocus ({repeats} calls): {1000 * total:.1f} ms, of which snaps {1000 * snap:.1f} ms, "
          f"predictions {1000 * predict:.1f} ms, the integration itself {1000 * (total - snap - predict):.2f} ms")


def run_calibration(args, core: CMMCorePlus, predictor: FocusPredictor) -> None:
    z_range = tuple(args.z_range_um) if args.z_range_um else None
    calibration = calibrate(core, predictor, args.calibrate, args.steps, z_range_um=z_range, plot_path=args.plot,
                            save=args.save_calibration)
    print(calibration.report())
    print(f"plot: {args.plot}" + (f"; offset saved in {calibration_file(args.model)}" if args.save_calibration else ""))


def focus_once(args, core: CMMCorePlus, predictor: FocusPredictor) -> None:
    """Focus once where the stage is; what it found, flagged where it did not converge."""
    z_range = tuple(args.z_range_um) if args.z_range_um else None
    start = core.getZPosition()
    result = autofocus(core, predictor, focus_settings(args, z_range))
    summary = result_summary(result)
    flag = "" if result.converged else "  NOT FOCUSED"
    print(f"z {start:.2f} -> {core.getZPosition():.2f} um: {summary}{flag}" +
          ("  AT THE Z LIMIT" if result.at_limit else ""))


def main(args) -> None:
    predictor = build_predictor(args)
    if args.demo and args.calibrate:
        slide = DemoSlide(args.magnification, args.na, args.frame_size, seed=args.seed)
        core = demo_core(slide)
        core.setZPosition(slide.focus_z_um(0, 0) + 0.3 * slide.dof_um)
        run_calibration(args, core, predictor)
    elif args.demo:
        run_demo(args, predictor)
    else:
        core = configured_core(args.config, args.preset)
        try:
            (run_calibration if args.calibrate else focus_once)(args, core, predictor)
        finally:
            core.unloadAllDevices()  # device adapters left loaded at exit can abort the interpreter


if __name__ == "__main__":
    run(main, get_args_parser().parse_args())
