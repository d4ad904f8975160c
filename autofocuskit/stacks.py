"""Focus stacks as microscopes write them, read slice by slice: multi-page TIFF, OME-TIFF
and ImageJ hyperstacks (tifffile; the z step from OME PhysicalSizeZ or ImageJ spacing),
folders of images with z_positions.csv, and tables of stacks with their objectives.

    stacks = find_stacks(Path("STACKS"), magnification=20, na=0.7, z_step_um=None)
    check_stacks(stacks)
    pixels = read_slice(stacks[0], 3)      # (H, W) grey or (H, W, 3) RGB, the file's own type
"""
import csv
import math
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from .cli import UserError
from .imaging import IMAGE_SIZE, image_pixels
from .schema import objective_prefix, objective_problem

MIN_SLICES = 5  # fewer cannot place a peak between slices and tell it from the ends
Z_POSITIONS_CSV = "z_positions.csv"  # in a folder stack: image,z_um per slice, in the stack's order
TIFF_SUFFIXES = (".tif", ".tiff")
UNIT_IN_UM = {"nm": 1e-3, "um": 1.0, "µm": 1.0, "μm": 1.0, "\\u00b5m": 1.0, "micron": 1.0, "microns": 1.0,
              "mm": 1e3}

class StackError(UserError):
    """A stack, table or argument the tool cannot use; the message names the file."""


@dataclass
class Stack:
    """One focus stack: where it is, its objective, and how to read slice i."""

    source: Path  # the file, or the folder of images
    name: str  # for file names: the source's name without its suffixes
    magnification: float
    na: float
    z_um: np.ndarray  # stage position of each slice, in the stack's order
    frame_shape: tuple[int, int]
    pages: list[tuple[int, ...]] = field(default_factory=list)  # TIFF: the pages of each slice (3 for planar RGB)
    planar: bool = False  # TIFF pages hold (S, Y, X) instead of (Y, X, S)
    images: list[Path] = field(default_factory=list)  # folder: the file of each slice

    @property
    def objective(self) -> str:
        return objective_prefix(self.magnification, self.na)


def tiff_z_step_um(tif: tifffile.TiffFile) -> float | None:
    """The z step a TIFF's metadata states: OME PhysicalSizeZ or ImageJ spacing, in um; None if it states none."""
    if tif.is_ome:
        for element in ElementTree.fromstring(tif.ome_metadata).iter():
            if element.tag.endswith("Pixels") and "PhysicalSizeZ" in element.attrib:
                unit = element.attrib.get("PhysicalSizeZUnit", "µm")
                return unit_to_um(float(element.attrib["PhysicalSizeZ"]), unit, tif.filehandle.path)
    if tif.is_imagej and "spacing" in (tif.imagej_metadata or {}):
        metadata = tif.imagej_metadata
        return unit_to_um(float(metadata["spacing"]), str(metadata.get("unit", "um")), tif.filehandle.path)
    return None


def unit_to_um(value: float, unit: str, source) -> float:
    if unit.strip().lower() not in UNIT_IN_UM:
        raise StackError(f"{source}: z step in unit {unit!r}, which this tool does not know ({sorted(UNIT_IN_UM)})")
    return value * UNIT_IN_UM[unit.strip().lower()]


def open_tiff_stack(path: Path, magnification: float, na: float, z_step_um: float | None) -> Stack:
    """A multi-page TIFF, OME-TIFF or ImageJ hyperstack as a Stack: one z axis (Z, or the
    unnamed page axis of a plain multi-page TIFF), grey or RGB."""
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            page_axes = series.pages[0].axes if series.pages and series.pages[0] is not None else ""
            metadata_step = tiff_z_step_um(tif)
            n_pages = len(series.pages)
    except StackError:
        raise
    except Exception as error:  # tifffile raises many kinds on broken files
        raise StackError(f"{path}: not a readable TIFF file ({error})") from error
    lead_axes = series.axes[: len(series.axes) - len(page_axes)]
    lead_shape = series.shape[: len(lead_axes)]
    if page_axes not in ("YX", "YXS", "SYX"):
        raise StackError(f"{path}: pages with axes {page_axes!r}; expected grey (YX) or RGB (YXS) images")
    z_axes = [i for i, axis in enumerate(lead_axes) if axis in "ZIQ" and lead_shape[i] > 1]
    others = [axis for i, axis in enumerate(lead_axes) if lead_shape[i] > 1 and i not in z_axes and axis != "C"]
    if len(z_axes) != 1 or others:
        raise StackError(f"{path}: axes {series.axes} {series.shape}; expected one z axis (and at most RGB "
                         "channels), e.g. ZYX, ZYXS or ZCYX")
    channel_axis = lead_axes.find("C")
    channels = lead_shape[channel_axis] if channel_axis >= 0 else 1
    if channels not in (1, 3):
        raise StackError(f"{path}: {channels} channels; expected grey (1) or RGB (3)")
    if n_pages != math.prod(lead_shape):
        raise StackError(f"{path}: {n_pages} pages for axes {series.axes} {series.shape}: truncated or incomplete")
    pages = []
    for z in range(lead_shape[z_axes[0]]):
        index = [0] * len(lead_axes)
        index[z_axes[0]] = z
        slice_pages = []
        for c in range(channels):
            if channel_axis >= 0:
                index[channel_axis] = c
            slice_pages.append(int(np.ravel_multi_index(index, lead_shape)))
        pages.append(tuple(slice_pages))
    step = metadata_step if metadata_step else z_step_um
    if step is None:
        raise StackError(f"{path}: the file states no z step; give --z_step_um (or a z_step_um column in the table)")
    if metadata_step and z_step_um and not math.isclose(metadata_step, z_step_um, rel_tol=1e-3):
        print(f"warning: {path}: the file's z step {metadata_step:g} um is used, not {z_step_um:g} um")
    height, width = series.shape[-3:-1] if page_axes == "YXS" else series.shape[-2:]
    return Stack(path, stack_name(path), magnification, na, np.arange(len(pages)) * step, (height, width),
                 pages=pages, planar=page_axes == "SYX")


def open_folder_stack(folder: Path, magnification: float, na: float) -> Stack:
    """A folder of images, one per slice, with z_positions.csv (image,z_um) giving their order and z."""
    table = folder / Z_POSITIONS_CSV
    try:
        with open(table, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise StackError(f"{table}: cannot be read ({error})") from error
    if not rows or not {"image", "z_um"} <= set(rows[0]):
        raise StackError(f"{table}: needs the columns image,z_um and a row per slice")
    images, z_um = [], []
    for line, row in enumerate(rows, start=2):
        try:
            z = float(row["z_um"])
        except (TypeError, ValueError):
            z = math.nan
        if not math.isfinite(z):
            raise StackError(f"{table} line {line}: z_um = {row['z_um']!r} is not a finite number")
        image = folder / (row["image"] or "")
        if not image.is_file():
            raise StackError(f"{table} line {line}: image {row['image']!r} does not exist in {folder}")
        images.append(image)
        z_um.append(z)
    if len(set(z_um)) != len(z_um):
        raise StackError(f"{table}: two slices at the same z")
    shapes = {path: image_shape(path) for path in images}
    frame_shape = shapes[images[0]]
    odd = [f"{path.name} ({shape[1]}x{shape[0]})" for path, shape in shapes.items() if shape != frame_shape]
    if odd:
        raise StackError(f"{folder}: frames of mixed sizes: {images[0].name} is "
                         f"{frame_shape[1]}x{frame_shape[0]}, but {', '.join(odd[:3])}")
    return Stack(folder, stack_name(folder), magnification, na, np.array(z_um), frame_shape, images=images)


def image_shape(path: Path) -> tuple[int, int]:
    """(height, width) of an image file from its header."""
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                shape = tif.series[0].shape
                return (shape[-3], shape[-2]) if tif.series[0].axes.endswith("S") else (shape[-2], shape[-1])
        with Image.open(path) as image:
            return image.size[1], image.size[0]
    except Exception as error:
        raise StackError(f"{path}: not a readable image ({error})") from error


def stack_name(path: Path) -> str:
    """The source's name without .ome.tif / .tif, in characters safe for file names."""
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


OPEN_TIFFS: dict[Path, tifffile.TiffFile] = {}  # each process keeps the stacks it reads open


def read_slice(stack: Stack, index: int) -> np.ndarray:
    """Slice `index` of a stack as (H, W) grey or (H, W, 3) RGB in the file's own type."""
    source = stack.images[index] if stack.images else stack.source
    try:
        if stack.images:
            if source.suffix.lower() in TIFF_SUFFIXES:
                pixels = tifffile.imread(source)
            else:
                with Image.open(source) as image:
                    pixels = image_pixels(image)
        else:
            if source not in OPEN_TIFFS:
                OPEN_TIFFS[source] = tifffile.TiffFile(source)
            pages = OPEN_TIFFS[source].series[0].pages
            planes = [pages[page].asarray() for page in stack.pages[index]]
            pixels = np.stack(planes, axis=-1) if len(planes) == 3 else planes[0]
            if stack.planar:
                pixels = np.moveaxis(pixels, 0, -1)
    except Exception as error:  # a truncated or damaged file fails in many ways
        raise StackError(f"{source}: slice {index} cannot be read ({error})") from error
    if pixels.ndim == 3 and pixels.shape[-1] == 4:
        pixels = pixels[..., :3]  # alpha carries no image
    if pixels.shape[:2] != stack.frame_shape or (pixels.ndim == 3 and pixels.shape[-1] != 3) or pixels.ndim > 3:
        raise StackError(f"{source}: slice {index} is {pixels.shape}, unlike the stack's frames "
                         f"{stack.frame_shape}: frames of mixed sizes")
    return pixels


def find_stacks(source: Path, magnification: float | None, na: float | None, z_step_um: float | None) -> list[Stack]:
    """The stacks of a table, or of a folder or one TIFF file (one objective, given here);
    `z_step_um` serves stacks whose file states none."""
    if source.is_file() and source.suffix.lower() not in TIFF_SUFFIXES:
        return stacks_from_table(source, z_step_um)
    if not source.exists():
        raise StackError(f"{source} does not exist")
    if magnification is None or na is None:
        raise StackError("stacks outside a table need --magnification and --na (a table gives them per stack)")
    if source.is_file():
        return [open_tiff_stack(source, magnification, na, z_step_um)]
    stacks = []
    for path in sorted(source.iterdir()):
        if path.is_file() and path.suffix.lower() in TIFF_SUFFIXES:
            stacks.append(open_tiff_stack(path, magnification, na, z_step_um))
        elif path.is_dir() and (path / Z_POSITIONS_CSV).is_file():
            stacks.append(open_folder_stack(path, magnification, na))
    if not stacks:
        raise StackError(f"{source}: no stack in it (TIFF files, or folders with {Z_POSITIONS_CSV})")
    return stacks


def stacks_from_table(table: Path, default_z_step_um: float | None) -> list[Stack]:
    """The stacks a CSV table lists: stack, magnification, NA[, z_step_um]."""
    try:
        with open(table, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise StackError(f"{table}: cannot be read as a CSV table ({error})") from error
    if not rows or not {"stack", "magnification", "NA"} <= set(rows[0]):
        raise StackError(f"{table}: needs the columns stack,magnification,NA (and optionally z_step_um)")
    stacks = []
    for line, row in enumerate(rows, start=2):
        where = f"{table} line {line}"
        try:
            magnification, na = float(row["magnification"]), float(row["NA"])
        except (TypeError, ValueError):
            raise StackError(f"{where}: the objective is missing or not numbers (magnification "
                             f"{row.get('magnification')!r}, NA {row.get('NA')!r})") from None
        if objective_problem(magnification, na):
            raise StackError(f"{where}: {objective_problem(magnification, na)}")
        step_text = (row.get("z_step_um") or "").strip()
        z_step_um = float(step_text) if step_text else default_z_step_um
        path = table.parent / (row["stack"] or "")
        if path.is_dir():
            stacks.append(open_folder_stack(path, magnification, na))
        elif path.is_file():
            stacks.append(open_tiff_stack(path, magnification, na, z_step_um))
        else:
            raise StackError(f"{where}: stack {row['stack']!r} does not exist ({path})")
    return stacks


def check_stacks(stacks: list[Stack], bit_depth: int | None = None) -> None:
    """Refuse what no analysis can use: too few slices, frames smaller than a tile, repeated names."""
    seen = {}
    for stack in stacks:
        if len(stack.z_um) < MIN_SLICES:
            raise StackError(f"{stack.source}: {len(stack.z_um)} z slices; at least {MIN_SLICES} are needed "
                             "to find where focus is")
        if min(stack.frame_shape) < IMAGE_SIZE:
            raise StackError(f"{stack.source}: frames of {stack.frame_shape[1]}x{stack.frame_shape[0]}, smaller "
                             f"than a {IMAGE_SIZE}x{IMAGE_SIZE} tile")
        key = (stack.objective, stack.name)
        if key in seen:
            raise StackError(f"{stack.source} and {seen[key]} would share the name {stack.name}: rename one")
        seen[key] = stack.source
        if bit_depth is None:
            warn_if_dark(stack)


def warn_if_dark(stack: Stack) -> None:
    """16-bit frames that use only the lowest 12 bits (a 12-bit camera) become nearly black at
    the 16-bit scaling, and their tiles would count as empty: say so before the work."""
    middle = read_slice(stack, len(stack.z_um) // 2)
    if middle.dtype == np.uint16 and middle.max() < 4096:
        print(f"warning: {stack.source}: 16-bit frames whose brightest value is {middle.max()} (a 12-bit "
              "camera?); 16-bit images are scaled by 1/257 for the network, so these look nearly black and "
              "their tiles may count as empty: give the camera's bits per pixel, --bit_depth 12")
