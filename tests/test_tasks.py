"""tasks.py: the task table follows the schema's names, units and globs; a task's dataset as the scripts build it."""
from types import SimpleNamespace

from autofocuskit.imaging import IMAGE_SIZE
from autofocuskit.schema import MOAF_GLOB, SOAF_GLOB, TASK_NAMES
from autofocuskit.tasks import TASKS, build_dataset


def test_the_task_table_has_the_schema_names_units_and_globs():
    assert tuple(TASKS) == TASK_NAMES
    assert (TASKS["soaf"].unit, TASKS["soaf"].default_glob) == ("um", SOAF_GLOB)
    assert (TASKS["moaf"].unit, TASKS["moaf"].default_glob) == ("DOF", MOAF_GLOB)


def test_a_split_is_built_with_the_task_glob_unless_one_is_given(demo_root):
    args = SimpleNamespace(root_dir=demo_root, task="soaf", glob=None, allow_outside_root=False, bit_depth=None)
    soaf = build_dataset(args, "val", None)
    assert set(soaf.frame["magnification"]) == {10.0} and soaf.image_size == (IMAGE_SIZE, IMAGE_SIZE)
    assert set(build_dataset(args, "val", None, task="moaf").frame["magnification"]) == {10.0, 20.0}
    assert set(build_dataset(args, "val", None, glob="20x_0.7*.csv").frame["magnification"]) == {20.0}
