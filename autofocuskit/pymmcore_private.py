"""The parts of pymmcore-plus's acquisition engine that have no public form yet, touched here
alone: the z correction it keeps per position after a hardware autofocus, and the method that
moves the focus device to an event's z. pymmcore-plus is pinned below its next minor version
in requirements; tests/test_pymmcore_private.py fails by name when these change.
"""
from pymmcore_plus.mda import MDAEngine

PRIVATE_ATTRIBUTES = ("_z_correction",)  # set by MDAEngine.__init__
PRIVATE_METHODS = ("_set_event_z",)


def z_correction(engine: MDAEngine) -> dict:
    """The engine's z correction per position index (the z a hardware autofocus moved), which it
    adds to every later event's z at that position."""
    return engine._z_correction


def set_event_z(engine: MDAEngine, event) -> None:
    """The engine's own move of the focus device to the event's z plus its position's correction."""
    MDAEngine._set_event_z(engine, event)


def missing_private_parts(engine: MDAEngine) -> list[str]:
    """The private parts this module needs that this pymmcore-plus lacks (none, where it still fits)."""
    return [name for name in PRIVATE_ATTRIBUTES if not hasattr(engine, name)] + \
        [name for name in PRIVATE_METHODS if not callable(getattr(MDAEngine, name, None))]
