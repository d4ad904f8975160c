"""Learning curves of one or more TensorBoard runs as a PNG, for a report or a README: the
training and validation error per epoch beside always predicting the training mean.

    python report.py runs/soaf runs/moaf                 # written to runs/soaf/learning_curves.png
    python report.py runs/soaf --out curves.png
"""
import argparse
from pathlib import Path

from matplotlib.figure import Figure  # figures without pyplot: no display needed, none changed

from autofocuskit.metrics import save_figure


def learning_curves(log_dir: Path) -> dict:
    """One TensorBoard run's curves: {"train": (epochs, errors), "val": (epochs, errors),
    "mean_predictor": the validation error of always predicting the training mean or None,
    "unit": "um", "DOF" or "um or DOF"}.

    Runs that logged `Signed MAE/*` give it (the same error for both heads; for the signed
    head it is the loss), older runs `Loss/*`. Epochs count from 0, as in checkpoint names.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = EventAccumulator(str(log_dir))
    run.Reload()
    scalars = run.Tags()["scalars"]
    prefix = "Signed MAE" if "Signed MAE/val" in scalars else "Loss"
    curves = {"mean_predictor": None, "unit": run_unit(run)}
    for split in ("train", "val"):
        if f"{prefix}/{split}" not in scalars:
            raise SystemExit(f"error: {log_dir} holds no 'Loss/{split}' scalars (is it a TensorBoard run folder?)")
        events = run.Scalars(f"{prefix}/{split}")
        curves[split] = ([e.step for e in events], [e.value for e in events])
    if "Signed MAE/val_mean_predictor" in scalars:
        curves["mean_predictor"] = run.Scalars("Signed MAE/val_mean_predictor")[-1].value
    return curves


def run_unit(run) -> str:
    """um or DOF, from the task in the run's logged configuration; "um or DOF" if it has none."""
    if "config/text_summary" not in run.Tags()["tensors"]:
        return "um or DOF"
    text = run.Tensors("config/text_summary")[-1].tensor_proto.string_val[0].decode()
    return "DOF" if '"task": "moaf"' in text else "um" if '"task": "soaf"' in text else "um or DOF"


def plot_learning_curves(log_dirs: list[Path], path: Path, mean_predictor: float | None = None) -> Path:
    """Training (dotted) and validation (solid) error against epoch for each TensorBoard run, one
    colour per run, and dashed, the validation error of always predicting the training mean:
    the run's own unless `mean_predictor` is given."""
    figure = Figure(figsize=(7, 4.5))
    axis = figure.subplots()
    units = set()
    for colour, log_dir in enumerate(log_dirs):
        curves, name = learning_curves(log_dir), Path(log_dir).name
        for split, style in (("train", ":"), ("val", "-")):
            axis.plot(*curves[split], style, color=f"C{colour}", label=f"{name} {split}")
        baseline = mean_predictor if mean_predictor is not None else curves["mean_predictor"]
        if baseline is not None:
            axis.axhline(baseline, color=f"C{colour}", linestyle="--", linewidth=1,
                         label=f"{name} val, predicting the training mean")
        units.add(curves["unit"])
    unit = units.pop() if len(units) == 1 else "um or DOF"
    axis.set(xlabel="epoch", ylabel=f"mean absolute error ({unit})", title="Learning curves")
    return save_figure(figure, axis, path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Plot the learning curves of TensorBoard runs.")
    parser.add_argument("log_dirs", type=Path, nargs="+", help="TensorBoard run folders, e.g. runs/soaf")
    parser.add_argument("--out", type=Path, default=None,
                        help="the PNG to write (default: learning_curves.png in the first run's folder)")
    parser.add_argument("--mean_predictor", type=float, default=None,
                        help="validation error of predicting the training mean, drawn as a line "
                             "(default: the value each run logged)")
    cli_args = parser.parse_args()
    out = cli_args.out or cli_args.log_dirs[0] / "learning_curves.png"
    print(f"Learning curves: {plot_learning_curves(cli_args.log_dirs, out, cli_args.mean_predictor)}")
