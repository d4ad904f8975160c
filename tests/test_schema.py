"""schema.py: the depth of field from the formula and from a CSV's own labels; objective names."""
import pandas as pd
import pytest

from autofocuskit.schema import (
    depth_of_field_um,
    dof_um_of_rows,
    objective_name,
    objective_of_name,
    objective_prefix,
)


def test_depth_of_field_comes_from_the_csv_ratio():
    frame = pd.DataFrame({"defocus_label": [16.0, 0.0, -3.2], "defocus_dof_label": [2.0, 0.0, -2.0],
                          "magnification": [10.0, 10.0, 20.0], "NA": [0.3, 0.3, 0.7]})
    assert dof_um_of_rows(frame).tolist() == pytest.approx([8.0, 8.0, 1.6])
    assert dof_um_of_rows(frame.drop(columns="defocus_dof_label")) is None


def test_depth_of_field_formula_gives_the_readme_values():
    assert depth_of_field_um(10, 0.3) == pytest.approx(0.55 / 0.09 + 6.5 / 3)  # 8.28 um
    assert depth_of_field_um(20, 0.7) == pytest.approx(0.55 / 0.49 + 6.5 / 14)  # 1.59 um


def test_an_objective_is_shown_one_way_and_named_in_files_another():
    assert objective_name(10.0, 0.3) == "10x/0.3" and objective_prefix(40.0, 0.75) == "40x_0.75"
    assert objective_of_name(objective_name(40.0, 0.75)) == (40.0, 0.75)
