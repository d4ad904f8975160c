"""The baselines a trained network has to beat, per objective, on the test split.

    python baselines.py --root_dir demo_data
    python baselines.py --root_dir demo_data --results MOAF=$(ls -t .result/*_test.csv | head -1)

- mean predictor: always the objective's mean training defocus, what a network that has
  learnt nothing converges to.
- Sobel fit: |defocus| from the CSV's sobel_sharpness column, a cubic in log(sharpness)
  fitted per objective on the training split. Classical autofocus measures tell how far
  from focus an image is, never in which direction, so this row has no side accuracy.
- `--results NAME=CSV`: a result CSV of myTest.py (SOAF or MOAF), shown as one more row.

Errors are in micrometres and in depths of field (DOF); "within 1 DOF" is the share of
images whose error is at most one DOF; side accuracy counts images over one DOF from focus.
"""
import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from autofocuskit.datasets import DatasetError, read_split
from autofocuskit.metrics import focus_metrics
from autofocuskit.schema import CSV_COLUMNS, dof_um_of_rows, objective_name


def with_objective_and_dof(frame: pd.DataFrame) -> pd.DataFrame:
    """The split's table with an `objective` name and each row's depth of field in um."""
    frame = frame.copy()
    frame["objective"] = [objective_name(m, na) for m, na in zip(frame["magnification"], frame["NA"])]
    frame["dof_um"] = dof_um_of_rows(frame)
    return frame


def fit_sobel_curve(train: pd.DataFrame, degree: int = 3) -> np.poly1d:
    """|defocus| in DOF as a polynomial of log(Sobel sharpness), least squares on the training rows."""
    return np.poly1d(np.polyfit(np.log(train["sobel_sharpness"].clip(lower=1e-6)),
                                train["defocus_dof_label"].abs(), degree))


def baseline_rows(train: pd.DataFrame, test: pd.DataFrame) -> list[dict]:
    """Mean predictor and Sobel fit, one row each per objective of the test split."""
    rows = []
    for objective, test_rows in test.groupby("objective"):
        train_rows = train[train["objective"] == objective]
        if train_rows.empty:
            continue
        label = test_rows["defocus_dof_label"]
        mean_dof = pd.Series(train_rows["defocus_dof_label"].mean(), index=test_rows.index)
        rows.append({"objective": objective, "method": "mean predictor",
                     **focus_metrics(label, mean_dof, test_rows["dof_um"])})
        curve = fit_sobel_curve(train_rows)
        unsigned = pd.Series(curve(np.log(test_rows["sobel_sharpness"].clip(lower=1e-6))),
                             index=test_rows.index).clip(lower=0)
        rows.append({"objective": objective, "method": "Sobel fit, unsigned",
                     **focus_metrics(label.abs(), unsigned, test_rows["dof_um"], signed=False)})
    return rows


def network_rows(name: str, results_csv: Path, test: pd.DataFrame) -> list[dict]:
    """Rows of a myTest.py result CSV, whose label is in um (SOAF) or DOF (MOAF)."""
    try:
        results = pd.read_csv(results_csv, usecols=["image_path", "label", "pt_pred"])
    except (ValueError, pd.errors.ParserError) as error:
        raise SystemExit(f"error: {results_csv} is not a result CSV of myTest.py ({error})")
    results = results.merge(test, on="image_path", validate="one_to_one")
    if results.empty:
        raise SystemExit(f"error: no image of {results_csv} is in the test split")
    in_um = np.allclose(results["label"], results["defocus_label"], atol=1e-3)
    pred_dof = results["pt_pred"] / results["dof_um"] if in_um else results["pt_pred"]
    return [{"objective": objective, "method": name,
             **focus_metrics(group["defocus_dof_label"], pred_dof[group.index], group["dof_um"])}
            for objective, group in results.groupby("objective")]


def markdown_table(rows: list[dict]) -> str:
    lines = ["| objective | method | MAE (um) | MAE (DOF) | within 1 DOF | side accuracy |",
             "|---|---|---:|---:|---:|---:|"]
    for row in sorted(rows, key=lambda row: row["objective"]):
        sign = "-" if np.isnan(row["side_accuracy"]) else f"{row['side_accuracy']:.2f}"
        lines.append(f"| {row['objective']} | {row['method']} | {row['mae_um']:.2f} | {row['mae_dof']:.2f} | "
                     f"{row['within_1_dof']:.2f} | {sign} |")
    return "\n".join(lines)


def named_path(text: str) -> tuple[str, Path]:
    name, separator, path = text.partition("=")
    if not separator or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=CSV, got {text!r}")
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"result file {path} does not exist")
    return name, Path(path)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Mean-predictor and Sobel-sharpness baselines per objective.")
    parser.add_argument("--root_dir", type=Path, required=True, help="dataset root holding .train/ and .test/")
    parser.add_argument("--glob", default="*.csv", help="CSV files to use in each split (default: %(default)s)")
    parser.add_argument("--results", type=named_path, nargs="*", default=[], metavar="NAME=CSV",
                        help="myTest.py result CSVs to add as rows named NAME (default: none)")
    return parser


def main(args: argparse.Namespace) -> None:
    try:
        train, test = (with_objective_and_dof(read_split(args.root_dir, split, args.glob, CSV_COLUMNS))
                       for split in ("train", "test"))
    except DatasetError as error:
        raise SystemExit(f"error: {error}")
    rows = baseline_rows(train, test)
    for name, path in args.results:
        rows += network_rows(name, path, test)
    print(markdown_table(rows))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
