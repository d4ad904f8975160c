"""Autofocus datasets: one image of a slide and how far it is from focus.

Layout of a dataset root (paths inside the CSVs are relative to the root):

    DATA/
      .train/*.csv  .val/*.csv  .test/*.csv
      <image folders>

Every CSV has the columns
    image_path,sobel_sharpness,defocus_label,magnification,NA,defocus_dof_label

    from pathlib import Path
    from myDataset import SOAFDataset, MOAFDataset
    soaf = SOAFDataset(Path("demo_data"), "train")                  # (image, defocus_um)
    moaf = MOAFDataset(Path("demo_data"), "val", glob_pattern="*.csv")  # (image, (M, NA), defocus_dof)
"""
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

SPLITS = ("train", "val", "test")
MAX_LISTED_PROBLEMS = 5  # how many offending rows an error message lists before "... and N more"


class DatasetError(Exception):
    """A problem with the dataset on disk; scripts print its message instead of a traceback."""


class DatasetValueError(DatasetError, ValueError):
    """Bad arguments or bad CSV content."""


class DatasetFileNotFoundError(DatasetError, FileNotFoundError):
    """A split folder, CSV file or image file is missing."""


class ImageDecodeError(DatasetError, OSError):
    """An image file exists but cannot be read as an image."""


def load_rgb_image(path: Path) -> Image.Image:
    """Open an image file as 8-bit RGB; the error names the file if it cannot be decoded."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ImageDecodeError(f"cannot decode image {path}: {error}") from error


def csv_line(row_index: int) -> int:
    """Line number of a data row in its CSV file as an editor shows it (line 1 is the header)."""
    return row_index + 2


def summarize_problems(problems: list[str]) -> str:
    """Join problem descriptions, listing only the first few."""
    listed = problems[:MAX_LISTED_PROBLEMS]
    more = len(problems) - len(listed)
    return "\n  ".join(listed + ([f"... and {more} more"] if more else []))


def read_csv_file(csv_file: Path, required_columns: tuple[str, ...]) -> pd.DataFrame:
    """Read one dataset CSV, check its columns and values, and note where each row came from."""
    try:
        frame = pd.read_csv(csv_file, dtype={"image_path": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DatasetValueError(f"{csv_file}: not a readable CSV file ({error})") from error

    missing = [column for column in required_columns if column not in frame.columns]
    if missing:
        raise DatasetValueError(
            f"{csv_file}: missing required column(s) {missing}; "
            f"found columns {list(frame.columns)}"
        )

    problems = []
    blank_paths = frame["image_path"].isna() | (frame["image_path"].str.strip() == "")
    problems += [f"line {csv_line(i)}: image_path is empty" for i in frame.index[blank_paths]]
    for column in required_columns:
        if column == "image_path":
            continue
        numbers = pd.to_numeric(frame[column], errors="coerce")
        bad = numbers.isna() | ~numbers.abs().lt(float("inf"))
        problems += [
            f"line {csv_line(i)}: {column} = {frame.at[i, column]!r} is not a finite number"
            for i in frame.index[bad]
        ]
        frame[column] = numbers.astype("float64")
    if problems:
        raise DatasetValueError(f"{csv_file}: {len(problems)} bad value(s):\n  {summarize_problems(problems)}")

    frame["csv_file"] = str(csv_file)
    frame["csv_line"] = [csv_line(i) for i in range(len(frame))]
    return frame


def read_split(
    root_dir: Path, dataset_type: str, glob_pattern: str, required_columns: tuple[str, ...]
) -> pd.DataFrame:
    """Read every CSV of one split that matches `glob_pattern` into one checked table.

    The table keeps `image_path` as written in the CSV and adds `abs_image_path`
    (root_dir / image_path), `csv_file` and `csv_line` for error messages.
    """
    if dataset_type not in SPLITS:
        raise DatasetValueError(f"dataset_type must be one of {list(SPLITS)}, got {dataset_type!r}")
    if not isinstance(root_dir, Path):
        raise TypeError(f"root_dir must be a pathlib.Path, got {type(root_dir).__name__}")
    if ".csv" not in glob_pattern:
        raise DatasetValueError(f"glob_pattern must contain '.csv', got {glob_pattern!r}")

    split_dir = root_dir / f".{dataset_type}"
    if not split_dir.is_dir():
        raise DatasetFileNotFoundError(f"split folder {split_dir} does not exist")
    csv_files = sorted(path for path in split_dir.glob(glob_pattern) if path.is_file())
    if not csv_files:
        present = sorted(path.name for path in split_dir.glob("*.csv"))
        raise DatasetFileNotFoundError(
            f"no CSV file in {split_dir} matches {glob_pattern!r}; CSV files there: {present or 'none'}"
        )

    frame = pd.concat([read_csv_file(f, required_columns) for f in csv_files], ignore_index=True)
    if frame.empty:
        raise DatasetValueError(f"the CSV files matching {glob_pattern!r} in {split_dir} hold no rows")

    frame["abs_image_path"] = [root_dir / p for p in frame["image_path"]]
    missing = [
        f"{row.csv_file} line {row.csv_line}: {row.abs_image_path}"
        for row in frame.itertuples()
        if not row.abs_image_path.is_file()
    ]
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
    """What the SOAF and MOAF datasets share: reading the split and loading images."""

    required_columns: tuple[str, ...] = ("image_path",)
    target_column: str  # what the network predicts

    def __init__(self, root_dir: Path, dataset_type: str, transform=None, glob_pattern: str = "*.csv"):
        super().__init__()
        self.frame = read_split(root_dir, dataset_type, glob_pattern, self.required_columns)
        self.root_dir = root_dir
        self.dataset_dir = root_dir / f".{dataset_type}"
        self.image_paths = self.frame["abs_image_path"].tolist()
        self.transform = transform or transforms.ToTensor()

    def __len__(self) -> int:
        return len(self.image_paths)

    def load_image(self, idx: int):
        """The transformed image of row `idx`."""
        return self.transform(load_rgb_image(self.image_paths[idx]))


class MOAFDataset(AutofocusDataset):
    """Multi-objective autofocus: (image, (magnification, NA), defocus in depth-of-field units).

    `params` is a float32 tensor of shape (2,), `target` a float32 tensor of shape (1,).
    """

    required_columns = ("image_path", "magnification", "NA", "defocus_dof_label")
    target_column = "defocus_dof_label"

    def __init__(self, root_dir: Path, dataset_type: str, transform=None, glob_pattern: str = "*.csv"):
        super().__init__(root_dir, dataset_type, transform, glob_pattern)
        self.params = float_tensor(self.frame, ["magnification", "NA"])  # (N, 2)
        self.targets = float_tensor(self.frame, ["defocus_dof_label"])  # (N, 1)

    def __getitem__(self, idx: int):
        return self.load_image(idx), self.params[idx], self.targets[idx]


class SOAFDataset(AutofocusDataset):
    """Single-objective autofocus: (image, defocus distance in micrometres as a scalar tensor)."""

    required_columns = ("image_path", "defocus_label")
    target_column = "defocus_label"

    def __init__(
        self, root_dir: Path, dataset_type: str, transform=None, glob_pattern: str = "10x_0.3*.csv"
    ):
        super().__init__(root_dir, dataset_type, transform, glob_pattern)
        self.labels = float_tensor(self.frame, ["defocus_label"]).squeeze(1)  # (N,)

    def __getitem__(self, idx: int):
        return self.load_image(idx), self.labels[idx]
