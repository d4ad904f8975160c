"""datasets.py: the dataset contract and every error it documents, a property-based test of CSV content,
image modes and sizes, paths leaving the root, the image cache."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision import transforms

from autofocuskit.datasets import (
    DatasetError,
    ImageDecodeError,
    field_key,
    MOAFDataset,
    SOAFDataset,
)
from autofocuskit.imaging import IMAGE_SIZE

COLUMNS = ["image_path", "sobel_sharpness", "defocus_label", "magnification", "NA", "defocus_dof_label"]


def csv_rows(root: Path, split: str, pattern: str) -> pd.DataFrame:
    return pd.concat([pd.read_csv(f) for f in sorted((root / f".{split}").glob(pattern))], ignore_index=True)


def write_dataset(root: Path, rows_by_csv: dict[str, list[dict]], split: str = "train") -> Path:
    """A hand-made dataset: {csv name: rows}; every image_path gets a small RGB image."""
    (root / f".{split}").mkdir(parents=True, exist_ok=True)
    for name, rows in rows_by_csv.items():
        for row in rows:
            image_file = root / str(row["image_path"])
            if not image_file.exists() and str(row["image_path"]).endswith(".png"):
                image_file.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (100, 150, 200)).save(image_file)
        pd.DataFrame(rows).to_csv(root / f".{split}" / name, index=False)
    return root


def row(image_path: str, defocus=1.5, magnification: float = 10, na: float = 0.3, **extra) -> dict:
    """One CSV row; `defocus` may be a deliberately bad value."""
    return {"image_path": image_path, "sobel_sharpness": 3.0, "defocus_label": defocus,
            "magnification": magnification, "NA": na, "defocus_dof_label": 0.25, **extra}


def test_glob_selects_objectives(demo_root):
    assert set(SOAFDataset(demo_root, "test", glob_pattern="20x_0.7*.csv").frame["magnification"]) == {20.0}
    assert set(MOAFDataset(demo_root, "test", glob_pattern="10x*.csv").frame["magnification"]) == {10.0}
    assert len(MOAFDataset(demo_root, "test")) == 16


def test_paths_are_relative_to_root_with_several_csvs_and_extra_columns(tmp_path):
    root = write_dataset(tmp_path, {
        "10x_0.3_a.csv": [row("deep/nested/folder/a.png", 2.0, comment="x")],
        "10x_0.3_b.csv": [row("other/b.png", -4.0, comment="y")],
    })
    dataset = SOAFDataset(root, "train")
    assert [p for p in dataset.image_paths] == [root / "deep/nested/folder/a.png", root / "other/b.png"]
    assert dataset.labels.tolist() == [2.0, -4.0]
    assert dataset[1][0].shape == (3, IMAGE_SIZE, IMAGE_SIZE)


def test_transform_is_applied_and_default_is_to_tensor(demo_root):
    resized = SOAFDataset(demo_root, "val", transform=transforms.Compose([transforms.Resize(32), transforms.ToTensor()]))
    assert resized[0][0].shape == (3, 32, 32)
    assert isinstance(SOAFDataset(demo_root, "val").transform, transforms.ToTensor)


def test_each_class_requires_only_its_columns(tmp_path):
    moaf_only = [{"image_path": "a.png", "magnification": 10, "NA": 0.3, "defocus_dof_label": 0.5}]
    root = write_dataset(tmp_path, {"10x_0.3_a.csv": moaf_only})
    assert len(MOAFDataset(root, "train")) == 1
    with pytest.raises(ValueError, match=r"10x_0.3_a.csv.*missing required column.*defocus_label"):
        SOAFDataset(root, "train")


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(dataset_type="training"), ValueError, "dataset_type must be one of"),
    (dict(root_dir="as a string"), TypeError, "pathlib.Path"),
    (dict(glob_pattern="10x_0.3*"), ValueError, "must contain '.csv'"),
    (dict(glob_pattern="40x*.csv"), FileNotFoundError, r"no CSV file .* matches '40x\*.csv'"),
])
def test_argument_checks(demo_root, kwargs, error, message):
    arguments = dict(root_dir=demo_root, dataset_type="train") | kwargs
    for dataset_class in (SOAFDataset, MOAFDataset):
        with pytest.raises(error, match=message):
            dataset_class(**arguments)


def test_missing_split_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"\.val does not exist"):
        MOAFDataset(tmp_path, "val")


def test_bad_values_name_file_and_line(tmp_path):
    root = write_dataset(tmp_path, {"10x_0.3_a.csv": [
        row("a.png"), row("b.png", defocus="far"), row("c.png"), row("d.png", defocus=float("nan"))]})
    with pytest.raises(ValueError) as caught:
        SOAFDataset(root, "train")
    message = str(caught.value)
    assert "10x_0.3_a.csv" in message and "2 problem(s)" in message
    assert "line 3: defocus_label = 'far'" in message
    assert "line 5: defocus_label" in message


def test_missing_images_are_reported_together(tmp_path):
    root = write_dataset(tmp_path, {"10x_0.3_a.csv": [row(f"img/{i}.png") for i in range(9)]})
    for i in (1, 2, 3, 4, 5, 6, 7):
        (root / f"img/{i}.png").unlink()
    with pytest.raises(FileNotFoundError) as caught:
        MOAFDataset(root, "train")
    message = str(caught.value)
    assert "7 of 9 image file(s)" in message
    assert "10x_0.3_a.csv line 3" in message and "img/1.png" in message
    assert "... and 2 more" in message


def test_undecodable_image_names_its_path(tmp_path):
    root = write_dataset(tmp_path, {"10x_0.3_a.csv": [row("broken.png")]})
    (root / "broken.png").write_bytes(b"not a png at all")
    dataset = SOAFDataset(root, "train")
    with pytest.raises(ImageDecodeError, match="broken.png"):
        dataset[0]


def test_non_rgb_images_become_rgb(tmp_path):
    root = write_dataset(tmp_path, {"10x_0.3_a.csv": [row("grey.png"), row("rgba.png")]})
    Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 128).save(root / "grey.png")
    Image.new("RGBA", (IMAGE_SIZE, IMAGE_SIZE), (10, 20, 30, 40)).save(root / "rgba.png")
    dataset = SOAFDataset(root, "train")
    assert dataset[0][0].shape == dataset[1][0].shape == (3, IMAGE_SIZE, IMAGE_SIZE)


def test_unreadable_csv_is_named(tmp_path):
    (tmp_path / ".train").mkdir()
    (tmp_path / ".train" / "10x_0.3_a.csv").write_text("")
    with pytest.raises(ValueError, match="10x_0.3_a.csv: not a readable CSV"):
        SOAFDataset(tmp_path, "train")


def test_datasets_work_in_a_dataloader_with_workers(demo_root):
    loader = torch.utils.data.DataLoader(MOAFDataset(demo_root, "test"), batch_size=5, num_workers=2)
    images, params, targets = next(iter(loader))
    assert images.shape == (5, 3, IMAGE_SIZE, IMAGE_SIZE) and params.shape == (5, 2) and targets.shape == (5, 1)


def test_sixteen_bit_and_palette_images_become_8_bit_rgb(tmp_path):
    root = write_dataset(tmp_path, {"10x_0.3_a.csv": [row("i16.png"), row("palette.png"), row("la.png")]})
    ramp = np.array([[0, 32768, 65535]], dtype=np.uint16).repeat(IMAGE_SIZE, axis=0).repeat(75, axis=1)[:, :IMAGE_SIZE]
    Image.fromarray(ramp).save(root / "i16.png")
    assert Image.open(root / "i16.png").mode.startswith("I")
    Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (200, 10, 10)).convert("P").save(root / "palette.png")
    Image.new("LA", (IMAGE_SIZE, IMAGE_SIZE), (90, 10)).save(root / "la.png")
    dataset = SOAFDataset(root, "train")
    sixteen = (dataset[0][0] * 255).round()
    assert sixteen[:, 0, 0].tolist() == [0, 0, 0]
    assert sixteen[:, 0, 100].tolist() == [128, 128, 128]  # mid-grey, not clipped to white
    assert sixteen[:, 0, 223].tolist() == [255, 255, 255]
    assert (dataset[1][0][:, 0, 0] * 255).round().tolist() == pytest.approx([200, 10, 10], abs=20)
    assert (dataset[2][0] * 255).round()[:, 0, 0].tolist() == [90, 90, 90]


def test_a_12_bit_camera_s_16_bit_images_are_scaled_by_its_bit_depth(tmp_path):
    root = write_dataset(tmp_path, {"10x_0.3_a.csv": [row("i12.png")]})
    ramp = np.array([[0, 2048, 4095]], dtype=np.uint16).repeat(IMAGE_SIZE, axis=0).repeat(75, axis=1)[:, :IMAGE_SIZE]
    Image.fromarray(ramp).save(root / "i12.png")
    twelve = (SOAFDataset(root, "train", bit_depth=12)[0][0] * 255).round()
    assert twelve[0, 0, [0, 100, 223]].tolist() == [0, 128, 255]
    assert (SOAFDataset(root, "train")[0][0] * 255).round()[0, 0, 223] == 16  # read as 16-bit: nearly black


def test_images_of_another_size_are_refused_when_a_size_is_required(tmp_path):
    root = write_dataset(tmp_path, {"10x_0.3_a.csv": [row("small.png")]})
    Image.new("RGB", (100, 80)).save(root / "small.png")
    assert SOAFDataset(root, "train")[0][0].shape == (3, 80, 100)  # without image_size: used as it is
    with pytest.raises(ImageDecodeError, match=rf"small.png is 100x80, not {IMAGE_SIZE}x{IMAGE_SIZE}"):
        SOAFDataset(root, "train", image_size=(IMAGE_SIZE, IMAGE_SIZE))[0]


def test_duplicate_header_is_refused(tmp_path):
    (tmp_path / ".train").mkdir()
    (tmp_path / ".train" / "10x_0.3_a.csv").write_text(
        "image_path,defocus_label,defocus_label\na.png,1,2\n")
    with pytest.raises(ValueError, match=r"10x_0.3_a.csv: column\(s\) \['defocus_label'\] appear more than once"):
        SOAFDataset(tmp_path, "train")


@pytest.mark.parametrize("image_path", ["../outside.png", "/etc/outside.png", "img/../../outside.png"])
def test_paths_leaving_the_root_need_permission(tmp_path, image_path):
    root = tmp_path / "root"
    write_dataset(root, {"10x_0.3_a.csv": [row("inside.png"), row(image_path)]})
    with pytest.raises(ValueError, match=r"10x_0.3_a.csv line 3: image_path .* points outside root_dir"):
        SOAFDataset(root, "train")


@pytest.mark.parametrize("image_path", ["../outside.png", "img/../../outside.png"])
def test_paths_leaving_the_root_are_read_with_permission(tmp_path, image_path):
    root = tmp_path / "root"
    write_dataset(root, {"10x_0.3_a.csv": [row("inside.png"), row(image_path)]})
    Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE)).save(tmp_path / "outside.png")
    assert len(SOAFDataset(root, "train", allow_outside_root=True)) == 2


def test_infinite_values_and_empty_paths_are_refused(tmp_path):
    root = write_dataset(tmp_path, {"10x_0.3_a.csv": [row("a.png"), row("a.png", defocus=float("inf")),
                                                      row("")]})
    with pytest.raises(ValueError) as caught:
        SOAFDataset(root, "train")
    assert "line 3: defocus_label = inf" in str(caught.value) and "line 4: image_path is empty" in str(caught.value)


def test_header_only_csv_is_an_empty_split(tmp_path):
    (tmp_path / ".val").mkdir()
    (tmp_path / ".val" / "10x_0.3_a.csv").write_text(",".join(COLUMNS) + "\n")
    with pytest.raises(ValueError, match="hold no rows"):
        SOAFDataset(tmp_path, "val")


CELLS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6),
                  st.text(max_size=8), st.sampled_from(["", "nan", "inf", "1e3", "img.png", "../x.png", "/x.png"]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.lists(st.sampled_from(COLUMNS + ["extra", ""]), min_size=0, max_size=8),
       rows=st.lists(st.lists(CELLS, min_size=0, max_size=9), max_size=5), raw_tail=st.text(max_size=20))
def test_any_csv_content_loads_or_gives_a_documented_error(tmp_path_factory, header, rows, raw_tail):
    root = tmp_path_factory.mktemp("hyp")
    (root / ".train").mkdir()
    Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE)).save(root / "img.png")
    lines = [",".join(header)] + [",".join(str(cell).replace("\n", " ") for cell in r) for r in rows]
    (root / ".train" / "10x_0.3_a.csv").write_text("\n".join(lines) + raw_tail)
    for dataset_class in (SOAFDataset, MOAFDataset):
        try:
            dataset = dataset_class(root, "train")
        except DatasetError as error:
            assert isinstance(error, (ValueError, FileNotFoundError)) and str(error)
            continue
        assert len(dataset) > 0 and (dataset.image_paths[0] == root / "img.png")
        assert torch.isfinite(dataset[0][-1]).all()


def test_image_cache_gives_the_same_images(demo_root, capsys):
    plain = SOAFDataset(demo_root, "train")
    cached = SOAFDataset(demo_root, "train")
    megabytes = cached.cache_images()
    assert megabytes == pytest.approx(len(cached) * IMAGE_SIZE * IMAGE_SIZE * 3 / 2**20)
    for index in (0, len(plain) - 1):
        assert torch.equal(plain[index][0], cached[index][0])
        assert torch.equal(plain[index][1], cached[index][1])


@pytest.mark.parametrize("path, field", [
    ("images/10x_0.3/val/slide1/field003_z+001.250um.png", "images/10x_0.3/val/slide1/field003"),  # make_demo_data.py
    ("images/10x_0.3/val/slide1/field003_z-005.733um.png", "images/10x_0.3/val/slide1/field003"),
    ("tiles/stack7/z012_y00448_x00224.tif", "tiles/stack7/_y00448_x00224"),  # make_dataset.py
    ("tiles/stack7/z013_y00448_x00224.tif", "tiles/stack7/_y00448_x00224"),
    ("a/zebra.png", "a/zebra"),  # no height in the name: a field of its own
])
def test_an_images_field_is_its_path_without_the_height(path, field):
    assert field_key(path) == field
