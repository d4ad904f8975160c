"""Autofocus datasets: one image of a slide and how far it is from focus (their code is in
autofocuskit/datasets.py).

    from pathlib import Path
    from myDataset import SOAFDataset, MOAFDataset
    soaf = SOAFDataset(Path("demo_data"), "train")      # (image, defocus_label um); glob_pattern="10x_0.3*.csv"
    moaf = MOAFDataset(Path("demo_data"), "val")        # (image, (magnification, NA), defocus_dof_label)
"""
from autofocuskit.datasets import DatasetError, MOAFDataset, SOAFDataset

__all__ = ["SOAFDataset", "MOAFDataset", "DatasetError"]
