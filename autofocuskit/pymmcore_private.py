"""The one private part of pymmcore-plus's acquisition engine that has no public form yet,
read here alone: the z correction it keeps per position after a hardware autofocus (a focus
lock), which it adds to later events' z and which the z-range check must count. pymmcore-plus
is bounded below its next minor version in requirements; tests/test_pymmcore_private.py fails
by name when this changes.
"""
from pymmcore_plus.mda import MDAEngine

PRIVATE_ATTRIBUTES = ("_z_correction",)  # set by MDAEngine.__init__


def z_correction(engine: MDAEngine) -> dict:
    """The engine's z correction per position index (the z a hardware autofocus moved), which it
    adds to every later single event's z at that position."""
    return engine._z_correction


def missing_private_parts(engine: MDAEngine) -> list[str]:
    """The private parts this module needs that this pymmcore-plus lacks (none, where it still fits)."""
    return [name for name in PRIVATE_ATTRIBUTES if not hasattr(engine, name)]
