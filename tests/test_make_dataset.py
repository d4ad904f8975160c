"""make_dataset.py on focus stacks the demo renderer writes: labels against the known focus,
empty tiles and stacks without focus left out, splits by stack, a dataset that loads and
trains, and every bad input refused with a message and nothing written."""
import errno
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import FAST, run_script, train_in_process
from PIL import Image

import make_dataset
from autofocuskit import stacks as stack_files
from autofocuskit.datasets import MOAFDataset, SOAFDataset
from autofocuskit.imaging import IMAGE_SIZE, as_uint8
from autofocuskit.optics import strip_defocus_um
from autofocuskit.schema import CSV_COLUMNS, TRACE_COLUMNS, depth_of_field_um

DOF_UM = depth_of_field_um(20, 0.7)
STRIDE = IMAGE_SIZE // 2  # 3x3 tile positions on the demo's 448x448 frames


@pytest.fixture(scope="module")
def dataset(stacks, tmp_path_factory) -> tuple[Path, str]:
    """The dataset made from every demo stack by the command line, and what it printed."""
    out = tmp_path_factory.mktemp("made") / "dataset"
    made = run_script("make_dataset.py", stacks, out, "--magnification", "20", "--na", "0.7", "--stride", STRIDE,
                      "--split", "0.5", "0.25", "0.25", "--workers", "2", cwd=out.parent)
    assert made.returncode == 0, made.stderr
    return out, made.stdout


def dataset_rows(out: Path) -> pd.DataFrame:
    return pd.concat([pd.read_csv(path).assign(split=path.parent.name) for path in sorted(out.glob(".*/*.csv"))])


def true_defocus_um(stacks: Path, rows: pd.DataFrame) -> np.ndarray:
    """Each row's defocus as rendered: the stack's first slice, its z steps and the tilt over the tile's columns."""
    truth = pd.read_csv(stacks / "truth.csv").set_index("stack")
    values = []
    for row in rows.itertuples():
        stack = truth.loc[stack_files.stack_name(Path(row.source_file))]
        columns = strip_defocus_um(0.0, stack.tilt_um, int(stack["size"]))[row.tile_x:row.tile_x + IMAGE_SIZE]
        values.append(stack.first_defocus_um + row.z_index * stack.z_step_um + columns.mean())
    return np.array(values)


def arguments(*args) -> object:
    return make_dataset.get_args_parser().parse_args([str(arg) for arg in args])


@pytest.mark.slow
def test_labels_match_the_rendered_focus_per_tile(stacks, dataset):
    rows = dataset_rows(dataset[0])
    assert set(rows["source_file"]) == {"flat.ome.tif", "tilted.tif", "half_bare"}
    error_dof = (rows["defocus_label"].to_numpy() - true_defocus_um(stacks, rows)) / DOF_UM
    assert np.abs(error_dof).max() < 0.2  # measured: 0.1 on the grey camera's stack, 0.02 on RGB
    tilted = rows[rows["source_file"] == "tilted.tif"]
    left, right = (tilted[tilted["tile_x"] == x] for x in (0, 2 * STRIDE))
    # the same slice is further from focus on the right edge, by the tilt between the tiles' centres
    def labels(tiles):
        return tiles.set_index(["z_index", "tile_y"])["defocus_label"]
    offset = labels(right) - labels(left)
    assert offset.mean() == pytest.approx(1.5 * DOF_UM * 2 * STRIDE / 447, rel=0.15)
    assert (rows["defocus_dof_label"] * DOF_UM - rows["defocus_label"]).abs().max() < 1e-3


@pytest.mark.slow
def test_empty_tiles_and_stacks_without_focus_are_left_out_and_reported(dataset):
    out, printed = dataset
    rows = dataset_rows(out)
    bare = rows[rows["source_file"] == "half_bare"]
    assert len(bare) > 0 and STRIDE not in set(bare["tile_x"])  # the bare glass band's tiles
    report = pd.read_csv(out / "reports" / "stacks.csv")
    report.index = [Path(stack).name for stack in report["stack"]]
    assert report.loc["half_bare", "empty_tiles"] == 3
    assert "outside the z range" in report.loc["no_focus.ome.tif", "problem"]
    assert "no tile has content" in report.loc["empty.ome.tif", "problem"]
    assert "left out" in printed and "no_focus.ome.tif" in printed
    for stack in ("flat", "tilted", "half_bare", "no_focus", "empty"):
        with Image.open(out / "reports" / f"20x_0.7_{stack}.png") as picture:
            assert picture.format == "PNG" and picture.width > 500


@pytest.mark.slow
def test_splits_hold_whole_stacks_and_the_dataset_loads_and_trains(dataset, tmp_path, capsys):
    out, printed = dataset
    rows = dataset_rows(out)
    assert rows.groupby("source_file")["split"].nunique().max() == 1
    assert set(rows["split"]) == {".train", ".val", ".test"}
    assert "train: 1 stacks, 17 slices" in printed
    assert list(rows.columns[:10]) == list(CSV_COLUMNS + TRACE_COLUMNS)
    soaf = SOAFDataset(out, "train", glob_pattern="20x_0.7*.csv", image_size=(IMAGE_SIZE, IMAGE_SIZE))
    moaf = MOAFDataset(out, "test", image_size=(IMAGE_SIZE, IMAGE_SIZE))
    image, label = soaf[0]
    assert image.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and moaf[0][1].tolist() == pytest.approx([20, 0.7])
    grey = rows[rows["source_file"] == "tilted.tif"]["image_path"].iloc[0]
    with Image.open(out / grey) as tile:
        assert tile.mode in ("I;16", "I") and np.asarray(tile).max() > 255  # 16-bit grey stays 16-bit
    printed = train_in_process(tmp_path, "--root_dir", out, "--glob", "20x_0.7*.csv", "--epochs", "1", *FAST,
                               capsys=capsys)
    assert "Epoch 0" in printed and (tmp_path / ".ckpts").is_dir()


def test_tiles_are_stored_as_the_network_sees_them_and_flip_z_turns_the_labels(stacks, tmp_path):
    frames = tifffile.imread(stacks / "flat.ome.tif")
    tifffile.imwrite(tmp_path / "planes.ome.tif", np.moveaxis(frames, -1, 1).astype(np.uint16) * 257, ome=True,
                     metadata={"axes": "ZCYX", "PhysicalSizeZ": 250, "PhysicalSizeZUnit": "nm"})
    planes, = stack_files.find_stacks(tmp_path / "planes.ome.tif", 20, 0.7, None)
    sixteen_bit_rgb = stack_files.read_slice(planes, 3)
    assert (make_dataset.tile_pixels(sixteen_bit_rgb, as_uint8(sixteen_bit_rgb), None) == frames[3]).all()
    grey = frames[3, ..., 1].astype(np.float32) / 255  # floats in [0, 1], as the frame's maximum says
    assert (make_dataset.tile_pixels(grey, as_uint8(grey, float_max=1.0), None) == np.repeat(frames[3, ..., 1:2], 3, axis=2)).all()

    shutil.copytree(stacks / "half_bare", tmp_path / "folder" / "half_bare")
    for name in ("flat.ome.tif", "tilted.tif"):
        shutil.copy(stacks / name, tmp_path / "folder" / name)
    for flip, out in (((), tmp_path / "up"), (("--flip_z",), tmp_path / "down")):
        make_dataset.main(arguments(tmp_path / "folder", out, "--magnification", 20, "--na", 0.7, "--stride",
                                    IMAGE_SIZE, "--workers", 1, *flip))
    up, down = (dataset_rows(out).set_index("image_path")["defocus_label"].sort_index()
                for out in (tmp_path / "up", tmp_path / "down"))
    assert down.to_numpy() == pytest.approx(-up.to_numpy(), abs=1e-3)


def test_a_12_bit_camera_gives_the_dataset_of_its_16_bit_twin_with_bit_depth(stacks, tmp_path):
    """The tilted grey stack as a 12-bit camera writes it (values up to 4095 in 16-bit pages):
    with --bit_depth 12 the same tiles get the same labels, stored stretched to 16 bits."""
    frames = tifffile.imread(stacks / "tilted.tif")
    for name, pixels in (("full", frames), ("twelve", frames // 16)):
        (tmp_path / name).mkdir()
        tifffile.imwrite(tmp_path / name / "tilted.tif", pixels, imagej=True, metadata={"axes": "ZYX", "spacing": 0.8})
    make_dataset.main(arguments(tmp_path / "full", tmp_path / "full_out", "--magnification", 20, "--na", 0.7,
                                "--stride", STRIDE, "--workers", 1, "--split", 1, 0, 0))
    make_dataset.main(arguments(tmp_path / "twelve", tmp_path / "twelve_out", "--magnification", 20, "--na", 0.7,
                                "--stride", STRIDE, "--workers", 1, "--split", 1, 0, 0, "--bit_depth", 12))
    full, twelve = (dataset_rows(tmp_path / out).set_index("image_path").sort_index() for out in ("full_out", "twelve_out"))
    assert list(full.index) == list(twelve.index) and len(full) > 0
    assert twelve["defocus_label"].to_numpy() == pytest.approx(full["defocus_label"].to_numpy(), abs=0.05)
    path = full.index[0]
    stored, original = (tifffile.imread(tmp_path / out / path).astype(int) for out in ("twelve_out", "full_out"))
    assert np.abs(stored - original).max() <= 16


@pytest.mark.parametrize("problem, message", [
    ("truncated", "truncated.ome.tif"),
    ("few_slices", "4 z slices; at least 5"),
    ("mixed_sizes", "frames of mixed sizes"),
    ("no_objective", "line 2: the objective is missing"),
    ("holds_dataset", "holds a dataset"),
    ("too_few_stacks", "cannot fill 3 splits"),
])
@pytest.mark.slow
def test_bad_input_is_refused_by_name_and_nothing_is_written(stacks, tmp_path, problem, message):
    source, out = tmp_path / "stacks", tmp_path / "out"
    source.mkdir()
    extra = ["--magnification", 20, "--na", 0.7]
    if problem == "truncated":
        data = (stacks / "flat.ome.tif").read_bytes()
        (source / "truncated.ome.tif").write_bytes(data[: len(data) // 2])
    elif problem == "few_slices":
        tifffile.imwrite(source / "short.tif", tifffile.imread(stacks / "tilted.tif")[:4], imagej=True,
                         metadata={"axes": "ZYX", "spacing": 0.8})
    elif problem == "mixed_sizes":
        shutil.copytree(stacks / "half_bare", source / "half_bare")
        Image.open(source / "half_bare" / "z003.png").crop((0, 0, 300, 300)).save(source / "half_bare" / "z003.png")
    elif problem == "no_objective":
        shutil.copy(stacks / "flat.ome.tif", source)
        (source / "table.csv").write_text("stack,magnification,NA\nflat.ome.tif,,0.7\n")
        source, extra = source / "table.csv", []
    elif problem == "holds_dataset":
        (out / ".train").mkdir(parents=True)
        (out / ".train" / "mine.csv").write_text("kept")
    else:
        shutil.copy(stacks / "flat.ome.tif", source)
    result = run_script("make_dataset.py", source, out, *extra, "--workers", 1, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert message in result.stderr
    if problem == "holds_dataset":
        assert (out / ".train" / "mine.csv").read_text() == "kept"
    else:
        assert not out.exists()
    assert [path.name for path in tmp_path.iterdir() if "incomplete" in path.name] == []


def test_surface_fit_ignores_a_column_of_fooled_tiles():
    centres = np.array([(y, x) for y in range(100, 1000, 200) for x in range(100, 1000, 200)], float)
    peaks = 5.0 + 0.002 * centres[:, 1]  # a tilted slide
    peaks[centres[:, 1] == 100] = 1.0  # a column of tiles on bare glass or dust
    coefficients, inliers = make_dataset.fit_focus_surface(centres, peaks, (1000, 1000), "plane", 0.5)
    assert inliers.tolist() == [x != 100 for x in centres[:, 1]]
    terms = make_dataset.surface_terms(centres, (1000, 1000), "plane")
    assert terms @ coefficients == pytest.approx(5.0 + 0.002 * centres[:, 1])


def test_a_full_disk_mid_write_removes_the_partial_dataset_and_says_so(stacks, tmp_path, monkeypatch):
    written, imwrite = [], tifffile.imwrite

    def imwrite_until_the_disk_is_full(path, *args, **kwargs):
        if len(written) == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(path)
        return imwrite(path, *args, **kwargs)

    monkeypatch.setattr(make_dataset.tifffile, "imwrite", imwrite_until_the_disk_is_full)
    source, out = tmp_path / "stacks", tmp_path / "out"
    source.mkdir()
    shutil.copy(stacks / "flat.ome.tif", source)
    shutil.copy(stacks / "tilted.tif", source)
    shutil.copytree(stacks / "half_bare", source / "half_bare")
    with pytest.raises(stack_files.StackError, match="cannot write the dataset \\(No space left on device; "):
        make_dataset.main(arguments(source, out, "--magnification", 20, "--na", 0.7, "--workers", 1))
    assert len(written) == 5 and not out.exists()
    assert [path.name for path in tmp_path.iterdir() if "incomplete" in path.name] == []
