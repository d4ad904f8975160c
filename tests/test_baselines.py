"""baselines.py: the mean predictor and the Sobel fit per objective, and a network's rows."""
import numpy as np
import pandas as pd
import pytest
from conftest import run_script

from autofocuskit.datasets import read_split
from autofocuskit.schema import CSV_COLUMNS
from baselines import (
    baseline_rows,
    markdown_table,
    network_rows,
    with_objective_and_dof,
)


@pytest.fixture(scope="module")
def splits(demo_root):
    return [with_objective_and_dof(read_split(demo_root, split, "*.csv", CSV_COLUMNS)) for split in ("train", "test")]


def test_mean_predictor_row_by_hand(splits):
    train, test = splits
    rows = {(row["objective"], row["method"]): row for row in baseline_rows(train, test)}
    for objective in ("10x/0.3", "20x/0.7"):
        test_rows = test[test["objective"] == objective]
        mean = train.loc[train["objective"] == objective, "defocus_label"].mean()
        assert rows[objective, "mean predictor"]["mae_um"] == pytest.approx(
            (test_rows["defocus_label"] - mean).abs().mean(), rel=1e-4)  # via DOF and back
        sobel = rows[objective, "Sobel fit, unsigned"]
        assert np.isnan(sobel["side_accuracy"])  # |defocus| has no direction
        assert 0 <= sobel["mae_dof"] < 5


def test_network_rows_from_a_result_csv_in_either_unit(splits, tmp_path):
    _train, test = splits
    soaf = test[test["objective"] == "10x/0.3"]
    perfect = pd.DataFrame({"image_path": soaf["image_path"], "label": soaf["defocus_label"],
                            "pt_pred": soaf["defocus_label"]})
    perfect.to_csv(tmp_path / "soaf.csv", index=False)
    (row,) = network_rows("SOAF", tmp_path / "soaf.csv", test)
    assert row["mae_um"] == pytest.approx(0.0, abs=1e-9)
    assert (row["within_1_dof"], row["side_accuracy"]) == (1.0, 1.0)

    off_by_one_dof = pd.DataFrame({"image_path": test["image_path"], "label": test["defocus_dof_label"],
                                   "pt_pred": test["defocus_dof_label"] + 0.5})
    off_by_one_dof.to_csv(tmp_path / "moaf.csv", index=False)
    rows = network_rows("MOAF", tmp_path / "moaf.csv", test)
    assert [row["objective"] for row in rows] == ["10x/0.3", "20x/0.7"]
    assert all(row["mae_dof"] == pytest.approx(0.5) for row in rows)
    assert "| 10x/0.3 | MOAF | " in markdown_table(rows)


@pytest.mark.slow
def test_script_prints_a_table_and_refuses_bad_arguments(demo_root, tmp_path):
    result = run_script("baselines.py", "--root_dir", demo_root, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("| mean predictor |") == 2 and result.stdout.count("| Sobel fit, unsigned |") == 2
    missing = run_script("baselines.py", "--root_dir", demo_root, "--results", "net=nowhere.csv", cwd=tmp_path)
    assert missing.returncode == 2 and "nowhere.csv does not exist" in missing.stderr


def test_a_csv_that_is_no_result_file_is_refused_by_name(splits, tmp_path):
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SystemExit, match="other.csv is not a result CSV of myTest.py"):
        network_rows("net", tmp_path / "other.csv", splits[1])
