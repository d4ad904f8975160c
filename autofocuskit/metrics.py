"""Test metrics per objective and the plots that show them, from a result table of myTest.py;
they also work on a result CSV loaded in a notebook:

    results = pd.read_csv(result_csv)   # the path myTest.py printed
    per_objective_metrics(results, unit="DOF", train_label_mean=None)
"""
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # figures without pyplot: no display needed, none changed

from .schema import CONFIDENT_P, objective_name


def error_metrics(results: pd.DataFrame, unit: str, train_label_mean: float | None = None) -> dict:
    """Errors of the PyTorch predictions: MAE (and ONNX's), RMSE, median absolute error and R²
    in the task's unit; MAE in um and in DOF, the share within one DOF, side accuracy, and
    the batch-1 ONNX latency (median and 95th percentile, ms).

    Side accuracy counts images more than one DOF from focus (closer, the sign hardly
    matters for a focus loop), or every image off focus when the DOF is unknown.
    `distance_mae` is the error of the distance from focus alone, whatever the side
    (|prediction| against |label|, or the split head's distance). For the split head,
    `confident_share` is the share of images with p_positive above 0.9 or below 0.1 and
    `confident_side_accuracy` how often their side is right (beyond one DOF, as above):
    whether the probabilities can be trusted.
    `mean_predictor_mae` is the MAE of always predicting the training labels' mean: the
    bar a network has to clear.
    """
    error = results["pt_pred"] - results["label"]
    residual = ((results["label"] - results["label"].mean()) ** 2).sum()
    distance = results["pt_distance"] if "pt_distance" in results else results["pt_pred"].abs()
    metrics = {"images": len(results), "mae": error.abs().mean(),
               "distance_mae": (distance - results["label"].abs()).abs().mean(),
               "onnx_mae": (results["onnx_pred"] - results["label"]).abs().mean(),
               "rmse": np.sqrt((error ** 2).mean()), "median_ae": error.abs().median(),
               "r2": 1 - (error ** 2).sum() / residual if residual > 0 else float("nan")}
    if train_label_mean is not None:
        metrics["mean_predictor_mae"] = (results["label"] - train_label_mean).abs().mean()
    if "dof_um" in results:
        to_dof = 1.0 if unit == "DOF" else 1.0 / results["dof_um"]
        focus = focus_metrics(results["label"] * to_dof, results["pt_pred"] * to_dof, results["dof_um"])
        for same_as_mae in (("mae_um",) if unit == "um" else ("mae_dof", "distance_mae_dof")):
            del focus[same_as_mae]  # the task's unit: `mae` and `distance_mae` give it
        metrics.update(focus)
    else:
        judged = results["label"] != 0
        same_sign = np.sign(results["pt_pred"]) == np.sign(results["label"])
        metrics["side_accuracy"] = same_sign[judged].mean() if judged.any() else float("nan")
    if "pt_p_positive" in results:
        metrics.update(confidence_metrics(results, unit))
    metrics["latency_median_ms"] = results["onnx_time_cost"].median()
    metrics["latency_p95_ms"] = results["onnx_time_cost"].quantile(0.95)
    if "int8_pred" in results:  # myTest.py --quantize
        metrics["int8_mae"] = (results["int8_pred"] - results["label"]).abs().mean()
        metrics["int8_latency_median_ms"] = results["int8_time_cost"].median()
    return {name: float(value) if name != "images" else value for name, value in metrics.items()}


def focus_metrics(label_dof: pd.Series, pred_dof: pd.Series, dof_um: pd.Series, signed: bool = True) -> dict:
    """What a focus loop cares about: MAE in um and in DOF, the share within one DOF, and how
    often the direction is right for images more than one DOF from focus (closer, the
    direction hardly matters). `signed=False` for predictions of |defocus|: no direction."""
    error_dof = (pred_dof - label_dof).abs()
    judged = label_dof.abs() > 1
    same_sign = np.sign(pred_dof) == np.sign(label_dof)
    return {"mae_um": (error_dof * dof_um).mean(), "mae_dof": error_dof.mean(),
            "distance_mae_dof": ((pred_dof.abs() - label_dof.abs()).abs()).mean(),
            "within_1_dof": (error_dof <= 1).mean(),
            "side_accuracy": same_sign[judged].mean() if signed and judged.any() else float("nan")}


def confidence_metrics(results: pd.DataFrame, unit: str, confident_p: float = CONFIDENT_P) -> dict:
    """How far the split head's side probabilities can be trusted: the share of images with
    p_positive beyond `confident_p` (or below 1 - `confident_p`), and how often their side is
    right among those more than one DOF from focus (every one off focus if the DOF is unknown)."""
    p_positive = results["pt_p_positive"]
    sure = (p_positive > confident_p) | (p_positive < 1 - confident_p)
    if "dof_um" in results:
        label_dof = results["label"] * (1.0 if unit == "DOF" else 1.0 / results["dof_um"])
        judged = sure & (label_dof.abs() > 1)
    else:
        judged = sure & (results["label"] != 0)
    right = (p_positive > 0.5) == (results["label"] > 0)
    return {"confident_share": sure.mean(),
            "confident_side_accuracy": right[judged].mean() if judged.any() else float("nan")}


def per_objective_metrics(results: pd.DataFrame, unit: str, train_label_mean: float | None) -> pd.DataFrame:
    """One row of error_metrics per (magnification, NA) present, and one for all images."""
    rows = [{"objective": name, **error_metrics(group, unit, train_label_mean)}
            for name, group in objective_groups(results)]
    if len(rows) > 1:
        rows.append({"objective": "all", **error_metrics(results, unit, train_label_mean)})
    return pd.DataFrame(rows).set_index("objective")


def objective_groups(results: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """("10x/0.3", rows) for each objective present; ("all", results) when the CSV names none."""
    if not {"magnification", "NA"} <= set(results.columns):
        return [("all", results)]
    return [(objective_name(magnification, na), group)
            for (magnification, na), group in results.groupby(["magnification", "NA"])]


def plot_report(results: pd.DataFrame, unit: str, stem: Path) -> list[Path]:
    """Three PNGs next to the result CSV: predicted vs true, |error| vs true, ONNX latency; one colour per objective."""
    groups = objective_groups(results)
    figure_paths = []

    figure = Figure(figsize=(6, 6))
    axis = figure.subplots()
    low, high = results["label"].min(), results["label"].max()
    axis.plot([low, high], [low, high], color="black", linewidth=1, label="perfect prediction")
    for name, group in groups:
        axis.scatter(group["label"], group["pt_pred"], s=12, alpha=0.7, label=name)
    axis.set(xlabel=f"true defocus ({unit})", ylabel=f"predicted defocus ({unit})",
             title="Predicted vs true defocus")
    axis.set_aspect("equal", adjustable="datalim")
    figure_paths.append(save_figure(figure, axis, stem.with_name(stem.name + "_pred_vs_true.png")))

    figure = Figure(figsize=(7, 4.5))
    axis = figure.subplots()
    for name, group in groups:
        axis.scatter(group["label"], (group["pt_pred"] - group["label"]).abs(), s=12, alpha=0.7, label=name)
    if "dof_um" in results and unit == "DOF":
        axis.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="one depth of field")
    axis.set(xlabel=f"true defocus ({unit})", ylabel=f"absolute error ({unit})",
             title="Absolute error vs true defocus")
    figure_paths.append(save_figure(figure, axis, stem.with_name(stem.name + "_error_vs_true.png")))

    figure = Figure(figsize=(7, 4.5))
    axis = figure.subplots()
    bins = np.linspace(results["onnx_time_cost"].min(), results["onnx_time_cost"].quantile(0.99), 30)
    for name, group in groups:
        axis.hist(group["onnx_time_cost"].clip(upper=bins[-1]), bins=bins, alpha=0.6, label=name)
    median = results["onnx_time_cost"].median()
    axis.axvline(median, color="black", linewidth=1, label=f"median {median:.2f} ms")
    axis.set(xlabel="ONNX Runtime time per image, batch 1 (ms)", ylabel="images",
             title="Inference latency")
    figure_paths.append(save_figure(figure, axis, stem.with_name(stem.name + "_latency.png")))
    return figure_paths


def plot_error_model(labels: np.ndarray, distances: np.ndarray, signed: np.ndarray, model, unit: str,
                     path: Path) -> Path:
    """The held-out images' predicted distance against the true one with the error model's
    mean and spread of one tile, and the side's reliability, measured and modelled."""
    true = np.abs(labels)
    grid = np.linspace(0, max(true.max(), model.saturation) * 1.05, 200)
    figure = Figure(figsize=(11, 4.5))
    left, right = figure.subplots(1, 2)
    left.scatter(true, distances, s=12, alpha=0.7, label="held-out images")
    mean, sigma = model.mean_distance(grid), model.sigma(grid)
    left.plot(grid, mean, color="black", label="error model: mean")
    left.fill_between(grid, mean - sigma, mean + sigma, color="grey", alpha=0.3, label="+- one tile's spread")
    left.plot(grid, grid, color="grey", linestyle="--", linewidth=1, label="perfect")
    left.set(xlabel=f"true distance from focus ({unit})", ylabel=f"predicted distance ({unit})",
             title="Distance: what the loop expects to read")
    left.grid(alpha=0.3)
    left.legend()
    edges = np.quantile(true, np.linspace(0, 1, 7))
    centres, shares = [], []
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (true >= low) & (true <= high) & (true > 0)
        if inside.any():
            centres.append(true[inside].mean())
            shares.append(np.mean(np.sign(signed[inside]) == np.sign(labels[inside])))
    right.plot(centres, shares, "o", label="held-out images (sixths by distance)")
    right.plot(grid, model.side_accuracy(grid), color="black", label="error model")
    right.set(xlabel=f"true distance from focus ({unit})", ylabel="side right", ylim=(0.3, 1.02),
              title="Side of focus")
    figure_paths = save_figure(figure, right, path)
    return figure_paths


def save_figure(figure, axis, path: Path) -> Path:
    """Legend, grid, tight layout, PNG at a readable resolution."""
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path
