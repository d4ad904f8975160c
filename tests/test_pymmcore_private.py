"""pymmcore_private.py: the private parts of pymmcore-plus's engine that the autofocus touches are there,
by name, in the installed version; a test that fails here says which one changed."""
import pytest
from pymmcore_plus import CMMCorePlus
from pymmcore_plus.mda import MDAEngine

from autofocuskit.pymmcore_private import PRIVATE_ATTRIBUTES, missing_private_parts, z_correction


@pytest.fixture(scope="module")
def engine():
    return MDAEngine(CMMCorePlus())


def test_every_private_part_used_is_there(engine):
    assert missing_private_parts(engine) == [], "pymmcore-plus changed: update pymmcore_private.py"


@pytest.mark.parametrize("name", PRIVATE_ATTRIBUTES)
def test_each_private_part_by_name(engine, name):
    assert hasattr(engine, name), f"pymmcore-plus {name} is gone: update pymmcore_private.py"


def test_the_z_correction_is_the_engines_own_dictionary(engine):
    z_correction(engine)[3] = 1.5
    assert z_correction(engine) == {3: 1.5}
