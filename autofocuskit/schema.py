"""The project's fixed names and facts, without torch: a dataset's splits, CSV columns and
file names, the tasks and heads a run chooses from, the objectives and the depth of field
that is the MOAF unit. Every script and test takes them from here.
"""
SPLITS = ("train", "val", "test")  # a dataset root holds .train, .val and .test
CSV_COLUMNS = ("image_path", "sobel_sharpness", "defocus_label", "magnification", "NA", "defocus_dof_label")
# columns make_dataset.py adds to every row, so that a bad label leads back to its stack, slice and place
TRACE_COLUMNS = ("source_file", "z_index", "tile_x", "tile_y")
SOAF_GLOB = "10x_0.3*.csv"  # CSV files a SOAF dataset reads unless told otherwise: one objective
MOAF_GLOB = "*.csv"  # CSV files a MOAF dataset reads unless told otherwise: every objective

TASK_NAMES = ("soaf", "moaf")  # soaf: one objective, target defocus_label (um); moaf: all, defocus_dof_label (DOF)
TASK_UNITS = {"soaf": "um", "moaf": "DOF"}  # of each task's target, predictions and loss
HEADS = ("signed", "split")  # signed: one signed defocus output; split: distance and side of focus
DEFAULT_BACKBONE = "mobilenetv4_conv_small"  # the timm backbone, --fe_str

# the depth-of-field formula's defaults: green light, a dry objective, a common camera pixel
WAVELENGTH_UM, REFRACTIVE_INDEX, CAMERA_PIXEL_UM = 0.55, 1.0, 6.5

CONFIDENT_P = 0.9  # a split head's side is confident when p_positive is above this or below 1 - this


def split_folder(root, split: str):
    """The folder of a split's CSVs under a dataset root: `root/.train` and so on."""
    return root / f".{split}"


def depth_of_field_um(magnification: float, na: float, wavelength_um: float = WAVELENGTH_UM,
                      refractive_index: float = REFRACTIVE_INDEX, camera_pixel_um: float = CAMERA_PIXEL_UM) -> float:
    """DOF = lambda*n/NA^2 + n*e/(M*NA), the unit of defocus_dof_label: the wave-optical plus the
    camera-pixel term."""
    return wavelength_um * refractive_index / na**2 + refractive_index * camera_pixel_um / (magnification * na)


def dof_um_of_rows(frame):
    """Each row's depth of field in um as its own CSV row states it, defocus_label /
    defocus_dof_label (a pandas Series), or None where the columns are missing.

    In-focus rows (label 0) give no ratio; they take the median of their objective.
    """
    if not {"defocus_label", "defocus_dof_label"} <= set(frame.columns):
        return None
    ratio = (frame["defocus_label"] / frame["defocus_dof_label"]).where(frame["defocus_dof_label"].abs() > 1e-9)
    keys = [c for c in ("magnification", "NA") if c in frame.columns]
    if keys:
        ratio = ratio.fillna(ratio.groupby([frame[k] for k in keys]).transform("median"))
    return ratio.abs()


MAX_NA = 2.0  # air objectives have an NA below 1, immersion objectives up to about 1.7


def objective_problem(magnification: float, na: float, max_na: float = MAX_NA) -> str | None:
    """What is wrong with an objective's numbers, or None: a magnification above 0, an NA in
    (0, max_na): below the refractive index of what lies between objective and coverslip."""
    if not (magnification > 0 and 0 < na < max_na):
        return f"magnification must be above 0 and na in (0, {max_na:g}), got {magnification:g} and {na:g}"
    return None


def objective_name(magnification: float, na: float) -> str:
    """How an objective is shown: 10x/0.3."""
    return f"{magnification:g}x/{na:g}"


def objective_of_name(name: str) -> tuple[float, float]:
    """(magnification, NA) of a name objective_name wrote: 10x/0.3 -> (10.0, 0.3)."""
    magnification, na = name.split("x/")
    return float(magnification), float(na)


def objective_prefix(magnification: float, na: float) -> str:
    """How a CSV file name starts for an objective, so that a glob picks it: 10x_0.3."""
    return f"{magnification:g}x_{na:g}"
