"""make_demo_data.py: labels on the PSF grid."""
import numpy as np

import make_demo_data as demo
from autofocuskit import optics


def test_labels_lie_on_the_psf_grid(tmp_path):
    demo.make_demo_dataset(tmp_path, n_train=4, n_val=1, n_test=1, objectives=((10.0, 0.3),))
    rows = np.loadtxt(next((tmp_path / ".train").glob("*.csv")), delimiter=",", skiprows=1, usecols=5, ndmin=1)
    np.testing.assert_allclose(rows / optics.Z_GRID_DOF, np.round(rows / optics.Z_GRID_DOF), atol=1e-6)
