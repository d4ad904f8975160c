"""myDataset.py: the notebook imports of the contract give the dataset classes, whose items match the CSVs."""

import pytest
import torch

from autofocuskit.imaging import IMAGE_SIZE
from myDataset import MOAFDataset, SOAFDataset
from test_datasets import csv_rows


def test_soaf_items_match_the_csv(demo_root):
    dataset = SOAFDataset(demo_root, "train")
    expected = csv_rows(demo_root, "train", "10x_0.3*.csv")
    assert len(dataset) == len(expected) == 16
    image, label = dataset[3]
    assert image.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert label.shape == () and label.dtype == torch.float32
    assert label.item() == pytest.approx(expected["defocus_label"][3], abs=1e-4)


def test_moaf_items_match_the_csv(demo_root):
    dataset = MOAFDataset(demo_root, "val")
    expected = csv_rows(demo_root, "val", "*.csv")
    assert len(dataset) == len(expected) == 16
    for index in (0, len(dataset) - 1):
        image, params, target = dataset[index]
        assert image.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
        assert params.shape == (2,) and params.dtype == torch.float32
        assert target.shape == (1,) and target.dtype == torch.float32
        assert params.tolist() == pytest.approx([expected["magnification"][index], expected["NA"][index]])
        assert target.item() == pytest.approx(expected["defocus_dof_label"][index], abs=1e-5)
    assert {(m, round(na, 4)) for m, na in dataset.params.tolist()} == {(10.0, 0.3), (20.0, 0.7)}
