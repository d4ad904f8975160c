"""Autofocus datasets: one image of a slide and how far it is from focus.

Layout of a dataset root (paths inside the CSVs are relative to the root):

    DATA/
      .train/*.csv  .val/*.csv  .test/*.csv
      <image folders>

Every CSV has the columns
    image_path,sobel_sharpness,defocus_label,magnification,NA,defocus_dof_label

    from pathlib import Path
    from autofocuskit.datasets import SOAFDataset, MOAFDataset
    soaf = SOAFDataset(Path("demo_data"), "train")                  # (image, defocus_um)
    moaf = MOAFDataset(Path("demo_data"), "val", glob_pattern="*.csv")  # (image, (M, NA), defocus_dof)
"""
import csv
import os
import re
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

from .cli import UserError
from .imaging import rgb_uint8
from .schema import MOAF_GLOB, SOAF_GLOB, SPLITS, split_folder

MAX_LISTED_PROBLEMS = 5  # how many offending rows an error message lists before "... and N more"
HEIGHT_IN_NAME = re.compile(r"(?:^|_)z[+-]?\d+(?:\.\d+)?(?:um)?(?=_|$)")  # z012, z+001.250um


class DatasetError(UserError):
    """A problem with the dataset on disk; scripts print its message instead of a traceback."""


class DatasetValueError(DatasetError, ValueError):
    """Bad arguments or bad CSV content."""


class DatasetFileNotFoundError(DatasetError, FileNotFoundError):
    """A split folder, CSV file or image file is missing."""


class ImageDecodeError(DatasetError, OSError):
    """An image file exists but cannot be read as an image, or has the wrong size."""


def to_rgb(image: Image.Image, bit_depth: int | None = None) -> Image.Image:
    """8-bit RGB from any PIL mode; 16- and 32-bit greyscale are scaled down by the camera's
    `bit_depth` (else the container's), not clipped to white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return Image.fromarray(rgb_uint8(np.asarray(image), bit_depth=bit_depth))
    return image.convert("RGB")


def load_rgb_image(path: Path, bit_depth: int | None = None) -> Image.Image:
    """Open an image file as 8-bit RGB; the error names the file if it cannot be decoded."""
    try:
        with Image.open(path) as image:
            return to_rgb(image, bit_depth)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageDecodeError(f"cannot decode image {path}: {error}") from error


def field_key(image_path: str) -> str:
    """The field an image shows, the same at every height: its path without the height in its
    name (make_dataset.py's z012_y00448_x00224.tif, make_demo_data.py's field003_z+001.250um.png)."""
    path = PurePosixPath(image_path)
    return str(path.parent / HEIGHT_IN_NAME.sub("", path.stem))


def csv_line(row_index: int) -> int:
    """Line number of a data row in its CSV file as an editor shows it (line 1 is the header)."""
    return row_index + 2


def summarize_problems(problems: list[str]) -> str:
    """Join problem descriptions, listing only the first few."""
    listed = problems[:MAX_LISTED_PROBLEMS]
    more = len(problems) - len(listed)
    return "\n  ".join(listed + ([f"... and {more} more"] if more else []))


def check_arguments(root_dir, dataset_type: str, glob_pattern: str) -> None:
    """The argument checks the contract names, with the valid choices in the message."""
    if dataset_type not in SPLITS:
        raise DatasetValueError(f"dataset_type must be one of {list(SPLITS)}, got {dataset_type!r}")
    if not isinstance(root_dir, Path):
        raise TypeError(f"root_dir must be a pathlib.Path, got {type(root_dir).__name__}")
    if ".csv" not in glob_pattern:
        raise DatasetValueError(f"glob_pattern must contain '.csv', got {glob_pattern!r}")


def split_csv_files(root_dir: Path, dataset_type: str, glob_pattern: str) -> list[Path]:
    """The CSV files of one split that match the glob, sorted; an error if there are none."""
    split_dir = split_folder(root_dir, dataset_type)
    if not split_dir.is_dir():
        hint = "" if root_dir.is_dir() else f" (root_dir {root_dir} itself does not exist)"
        raise DatasetFileNotFoundError(f"split folder {split_dir} does not exist{hint}")
    csv_files = sorted(path for path in split_dir.glob(glob_pattern) if path.is_file())
    if not csv_files:
        present = sorted(path.name for path in split_dir.glob("*.csv"))
        raise DatasetFileNotFoundError(
            f"no CSV file in {split_dir} matches {glob_pattern!r}; CSV files there: {present or 'none'}"
        )
    return csv_files


def read_csv_file(csv_file: Path, required_columns: tuple[str, ...]) -> pd.DataFrame:
    """Read one dataset CSV and check its header; note where each row came from."""
    try:
        with open(csv_file, newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), [])  # pandas would rename a repeated name silently
        frame = pd.read_csv(csv_file, dtype={"image_path": str}, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, csv.Error) as error:
        raise DatasetValueError(f"{csv_file}: not a readable CSV file ({error})") from error
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise DatasetValueError(f"{csv_file}: column(s) {duplicated} appear more than once in the header")
    missing = [column for column in required_columns if column not in frame.columns]
    if missing:
        raise DatasetValueError(
            f"{csv_file}: missing required column(s) {missing}; found columns {list(frame.columns)}"
        )
    frame["csv_file"] = str(csv_file)
    frame["csv_line"] = [csv_line(i) for i in range(len(frame))]
    return frame


def shown(cell) -> str:
    """A CSV cell as an error message quotes it: text in quotes, numbers as they read."""
    return repr(cell) if isinstance(cell, str) else str(cell)


def path_leaves_root(image_path: str) -> bool:
    """Whether a CSV path is absolute or climbs out of the root with '..' (judged on the text)."""
    return os.path.isabs(image_path) or os.path.normpath(image_path).split(os.sep)[0] == ".."


def value_problems(frame: pd.DataFrame, required_columns: tuple[str, ...], allow_outside_root: bool) -> list[str]:
    """Bad cells of one CSV's table as 'file line N: ...'; turns numeric columns into floats."""
    where = frame["csv_file"] + " line " + frame["csv_line"].astype(str)
    problems = []
    paths = frame["image_path"]
    blank = paths.isna() | (paths.fillna("").str.strip() == "")
    problems += [f"{where[i]}: image_path is empty" for i in frame.index[blank]]
    if not allow_outside_root:
        outside = ~blank & paths.fillna("").map(path_leaves_root)
        problems += [f"{where[i]}: image_path {paths[i]!r} points outside root_dir (absolute or '..'); "
                     "pass allow_outside_root=True (--allow_outside_root) if that is meant"
                     for i in frame.index[outside]]
    for column in required_columns:
        if column == "image_path":
            continue
        numbers = pd.to_numeric(frame[column], errors="coerce")
        bad = ~numbers.abs().lt(float("inf"))  # NaN and +-inf both fail
        problems += [f"{where[i]}: {column} = {shown(frame.at[i, column])} is not a finite number"
                     for i in frame.index[bad]]
        frame[column] = numbers.astype("float64")
    return problems


def collect_split(root_dir: Path, dataset_type: str, glob_pattern: str, required_columns: tuple[str, ...],
                  allow_outside_root: bool = False, image_size: tuple[int, int] | None = None,
                  ) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Read every CSV of one split that matches `glob_pattern` and collect every problem.

    Returns (table, invalid, unreadable): the rows of the readable CSV files; problems with
    files, columns and values; image files that are missing or, with `image_size` given,
    cannot be decoded at that size (decoding every image is slow: --check does it).
    Problems read 'file line N: ...'. Bad arguments, a missing split folder and no matching
    CSV raise at once: nothing else can be checked then. The table keeps `image_path` as
    written and adds `abs_image_path` (root_dir / image_path), `csv_file` and `csv_line`.
    """
    check_arguments(root_dir, dataset_type, glob_pattern)
    frames, invalid = [], []
    for csv_file in split_csv_files(root_dir, dataset_type, glob_pattern):
        try:
            frames.append(read_csv_file(csv_file, required_columns))
        except DatasetValueError as error:
            invalid.append(str(error))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if frame.empty:
        split_dir = split_folder(root_dir, dataset_type)
        return frame, invalid + [f"the CSV files matching {glob_pattern!r} in {split_dir} hold no rows"], []
    invalid += value_problems(frame, required_columns, allow_outside_root)
    frame["abs_image_path"] = [root_dir / p if isinstance(p, str) else None for p in frame["image_path"]]
    unreadable = []
    for row in frame.itertuples():
        problem = image_problem(row.abs_image_path, image_size) if row.abs_image_path else None
        if problem:
            unreadable.append(f"{row.csv_file} line {row.csv_line}: {row.image_path}: {problem}")
    return frame, invalid, unreadable


def read_split(
    root_dir: Path, dataset_type: str, glob_pattern: str, required_columns: tuple[str, ...],
    allow_outside_root: bool = False,
) -> pd.DataFrame:
    """Every CSV row of one split that matches `glob_pattern` as one checked table (see
    collect_split); bad content raises DatasetValueError, missing images DatasetFileNotFoundError."""
    frame, invalid, missing = collect_split(root_dir, dataset_type, glob_pattern, required_columns,
                                            allow_outside_root)
    split_dir = split_folder(root_dir, dataset_type)
    if invalid:
        raise DatasetValueError(f"{len(invalid)} problem(s) in {split_dir}:\n  {summarize_problems(invalid)}")
    if missing:
        raise DatasetFileNotFoundError(
            f"{len(missing)} of {len(frame)} image file(s) listed in {split_dir} do not exist "
            f"(image_path is joined to root_dir {root_dir}):\n  {summarize_problems(missing)}"
        )
    return frame


def float_tensor(frame: pd.DataFrame, columns: list[str]) -> torch.Tensor:
    """Columns of a table as a float32 tensor of shape (rows, len(columns))."""
    return torch.tensor(frame[columns].to_numpy(dtype="float32"))


class AutofocusDataset(Dataset):
    """What the SOAF and MOAF datasets share: reading the split and loading images.

    Image paths that are absolute or climb out of root_dir with '..' are refused unless
    `allow_outside_root=True`; `image_size=(224, 224)` refuses images of any other size
    when they are read; `bit_depth` (10-14) scales 16-bit images of such a camera.
    """

    required_columns: tuple[str, ...] = ("image_path",)
    target_column: str  # what the network predicts

    def __init__(self, root_dir: Path, dataset_type: str, transform=None, glob_pattern: str = MOAF_GLOB,
                 *, allow_outside_root: bool = False, image_size: tuple[int, int] | None = None,
                 bit_depth: int | None = None):
        super().__init__()
        self.frame = read_split(root_dir, dataset_type, glob_pattern, self.required_columns, allow_outside_root)
        self.image_size, self.bit_depth = image_size, bit_depth
        self.root_dir = root_dir
        self.dataset_dir = split_folder(root_dir, dataset_type)
        self.image_paths = self.frame["abs_image_path"].tolist()
        self.transform = transform or transforms.ToTensor()
        self.cache: np.ndarray | None = None  # decoded images, once cache_images() has run

    def __len__(self) -> int:
        return len(self.image_paths)

    def read_image(self, idx: int) -> Image.Image:
        """The RGB image of row `idx` from its file; with `image_size` set, other sizes are refused.
        The error names the CSV file and line of the row: a file can become unreadable mid-run."""
        where = f"{self.frame['csv_file'].iat[idx]} line {self.frame['csv_line'].iat[idx]}"
        try:
            image = load_rgb_image(self.image_paths[idx], self.bit_depth)
        except ImageDecodeError as error:
            raise ImageDecodeError(f"{where}: {error}") from error
        if self.image_size is not None and image.size != tuple(self.image_size):
            raise ImageDecodeError(
                f"{where}: image {self.image_paths[idx]} is {image.size[0]}x{image.size[1]}, not "
                f"{self.image_size[0]}x{self.image_size[1]}: crop or tile it to that size (resizing "
                "would change the blur, and with it what the label means)")
        return image

    def cache_images(self, show_progress=lambda indices: indices) -> float:
        """Decode every image once into one uint8 array in memory and return its size in MiB.

        Later reads skip the file and the decoder. DataLoader workers started afterwards
        share the array with the main process (fork), so it costs its size once.
        """
        first = np.asarray(self.read_image(0))
        cache = np.empty((len(self), *first.shape), dtype=np.uint8)
        for idx in show_progress(range(len(self))):
            image = np.asarray(self.read_image(idx))
            if image.shape != first.shape:
                raise ImageDecodeError(
                    f"image {self.image_paths[idx]} is {image.shape[1]}x{image.shape[0]}, unlike "
                    f"{self.image_paths[0]} ({first.shape[1]}x{first.shape[0]}): the cache needs one size")
            cache[idx] = image
        self.cache = cache
        return cache.nbytes / 2**20

    def load_image(self, idx: int):
        """The transformed image of row `idx`, from the cache when `cache_images` has filled it."""
        image = Image.fromarray(self.cache[idx]) if self.cache is not None else self.read_image(idx)
        return self.transform(image)


class MOAFDataset(AutofocusDataset):
    """Multi-objective autofocus: (image, (magnification, NA), defocus in depth-of-field units).

    `params` is a float32 tensor of shape (2,), `target` a float32 tensor of shape (1,).
    Keywords as for AutofocusDataset.
    """

    required_columns = ("image_path", "magnification", "NA", "defocus_dof_label")
    target_column = "defocus_dof_label"

    def __init__(self, root_dir: Path, dataset_type: str, transform=None, glob_pattern: str = MOAF_GLOB, **options):
        super().__init__(root_dir, dataset_type, transform, glob_pattern, **options)
        self.params = float_tensor(self.frame, ["magnification", "NA"])  # (N, 2)
        self.targets = float_tensor(self.frame, ["defocus_dof_label"])  # (N, 1)

    def __getitem__(self, idx: int):
        return self.load_image(idx), self.params[idx], self.targets[idx]


class SOAFDataset(AutofocusDataset):
    """Single-objective autofocus: (image, defocus distance in micrometres as a scalar tensor).

    Keywords as for AutofocusDataset.
    """

    required_columns = ("image_path", "defocus_label")
    target_column = "defocus_label"

    def __init__(self, root_dir: Path, dataset_type: str, transform=None, glob_pattern: str = SOAF_GLOB, **options):
        super().__init__(root_dir, dataset_type, transform, glob_pattern, **options)
        self.labels = float_tensor(self.frame, ["defocus_label"]).squeeze(1)  # (N,)

    def __getitem__(self, idx: int):
        return self.load_image(idx), self.labels[idx]


def image_problem(path: Path, image_size: tuple[int, int] | None = None) -> str | None:
    """What is wrong with one image file, or None: missing; with `image_size`, also undecodable or another size."""
    if not path.is_file():
        return "file does not exist"
    if image_size is None:
        return None
    try:
        with Image.open(path) as image:
            image.load()
            size, mode = image.size, image.mode
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return f"cannot decode ({error})"
    if size != tuple(image_size):
        return f"size {size[0]}x{size[1]} in mode {mode}, the network expects {image_size[0]}x{image_size[1]}"
    return None


def check_split(root_dir: Path, dataset_type: str, glob_pattern: str, dataset_class,
                image_size: tuple[int, int], allow_outside_root: bool = False) -> tuple[list[str], list[str]]:
    """Check one split completely, decoding every image: (summary lines, every problem)."""
    try:
        frame, invalid, unreadable = collect_split(root_dir, dataset_type, glob_pattern,
                                                   dataset_class.required_columns, allow_outside_root, image_size)
    except DatasetError as error:
        return [], [str(error)]
    summary = split_summary(frame, dataset_type, dataset_class.target_column) if not frame.empty else []
    return summary, invalid + unreadable


def split_summary(frame: pd.DataFrame, dataset_type: str, target_column: str) -> list[str]:
    """Rows and label range per objective of one split."""
    keys = [c for c in ("magnification", "NA") if c in frame.columns]
    groups = frame.groupby(keys, dropna=False) if keys else [(("all",), frame)]
    lines = []
    for key, group in groups:
        objective = "x/".join(f"{k:g}" if isinstance(k, float) else str(k) for k in key)
        target = pd.to_numeric(group[target_column], errors="coerce")
        lines.append(f"{dataset_type:5s} {objective:>10s}: {len(group):6d} rows, "
                     f"{target_column} from {target.min():.3f} to {target.max():.3f}")
    return lines
