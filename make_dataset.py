"""Turn a microscope's focus stacks into an autofocus dataset in the layout myDataset.py reads.

    python make_dataset.py STACKS OUT --magnification 20 --na 0.7 [--z_step_um 0.5]   # every stack in a folder
    python make_dataset.py stack.ome.tif OUT --magnification 20 --na 0.7                # one stack
    python make_dataset.py stacks.csv OUT                                              # a table of stacks

A stack is one field imaged at known z steps: a multi-page TIFF, OME-TIFF or ImageJ
hyperstack (z step from the file's metadata where it has it), or a folder of images with
`z_positions.csv` (columns image,z_um). A table has the columns stack (path relative to the
table), magnification, NA and optionally z_step_um.

For every stack:
1. Focus per region: each tile position gets a focus curve over z (the Brenner measure by
   default, on the green channel of RGB frames), whose peak is placed between slices by a
   parabola through the log of the curve around its maximum. A plane (or quadratic) fitted
   robustly to the peaks of the tiles with content is the stack's focus surface, so that a
   tilted slide gets the right focus per tile.
   Stacks without a clear peak, or whose peaks lie at the first or last slice, are left out.
2. Labels: defocus_label = z of the slice - z of the focus surface at the tile's centre, in
   um. z grows with the slice index (--flip_z for stages that count the other way), so
   moving the stage by -defocus_label focuses the tile.
3. Tiles without content (blank, background, saturated), as focus.py judges them, are left out.

Stacks are split into train, val and test per objective, never one stack in two splits.
The dataset is written to a folder beside OUT and renamed to OUT when complete: a failed or
interrupted run leaves nothing behind. OUT/reports/ holds each stack's focus curves and
surface (PNG) and stacks.csv, a line per stack: kept and where, or why not.
"""
import argparse
import csv
import math
import shutil
import signal
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from autofocuskit.cli import add_bit_depth_argument, free_mib, progress_bar, run, usable_cpu_count
from autofocuskit.focus_measures import FOCUS_MEASURES, curve_peak, focus_channel
from autofocuskit.imaging import IMAGE_SIZE, MAD_TO_SD, MAX_CLIPPED, MIN_CONTRAST, as_uint8, full_range_uint16, has_content, rgb_uint8, sobel_sharpness, tile_origins
from autofocuskit.schema import (CAMERA_PIXEL_UM, CSV_COLUMNS, REFRACTIVE_INDEX, SPLITS, TRACE_COLUMNS, WAVELENGTH_UM,
                                 depth_of_field_um, split_folder)
from autofocuskit.stacks import OPEN_TIFFS, Stack, StackError, check_stacks, find_stacks, read_slice

# ---------------------------------------------------------------- focus per region

@dataclass(frozen=True)
class Settings:
    """What the workers need besides the stack and its tiles."""

    focus_measure: str
    min_contrast: float
    max_clipped: float
    bit_depth: int | None  # a 10-14 bit camera's, for 16-bit frames


def measure_slice(task: tuple[Stack, int, list[tuple[int, int]], Settings]) -> tuple[np.ndarray, np.ndarray]:
    """(focus measure of every tile, whether each tile has content) for one slice."""
    stack, index, origins, settings = task
    pixels = read_slice(stack, index)
    measure = FOCUS_MEASURES[settings.focus_measure](focus_channel(pixels), origins)
    seen = as_uint8(pixels, bit_depth=settings.bit_depth)  # as the network sees it (a float frame by its maximum)
    content = np.array([has_content(seen[y:y + IMAGE_SIZE, x:x + IMAGE_SIZE], settings.min_contrast,
                                    settings.max_clipped) for y, x in origins])
    return measure, content


def surface_terms(centres: np.ndarray, frame_shape: tuple[int, int], order: str) -> np.ndarray:
    """Design matrix of the focus surface at tile centres (y, x): 1, x, y [, x^2, xy, y^2] on a
    frame scaled to [-0.5, 0.5]."""
    y = centres[:, 0] / frame_shape[0] - 0.5
    x = centres[:, 1] / frame_shape[1] - 0.5
    terms = [np.ones_like(x), x, y]
    if order == "quadratic":
        terms += [x * x, x * y, y * y]
    return np.stack(terms, axis=1)


def fit_focus_surface(centres: np.ndarray, peaks: np.ndarray, frame_shape, order: str,
                      z_step_um: float) -> tuple[np.ndarray, np.ndarray]:
    """(coefficients, inlier mask) of the focus surface through the tiles' peaks.

    A least-absolute-deviations fit (iteratively reweighted least squares) first: it passes
    through the agreeing majority even when a column of tiles is fooled (dust, a tissue edge,
    bare glass), where least squares would tilt the plane towards them. Tiles further from it
    than 3 robust standard deviations (and half a z step) are left out, and the rest fitted
    by least squares.
    """
    terms = surface_terms(centres, frame_shape, order)
    floor = 0.05 * abs(z_step_um)
    weights = np.ones(len(peaks))
    for _ in range(30):
        root = np.sqrt(weights)[:, None]
        coefficients, *_ = np.linalg.lstsq(terms * root, peaks * root[:, 0], rcond=None)
        residuals = np.abs(peaks - terms @ coefficients)
        weights = 1 / np.maximum(residuals, floor)
    inliers = residuals <= max(3 * MAD_TO_SD * np.median(residuals), 0.5 * abs(z_step_um))
    if inliers.sum() >= terms.shape[1]:
        coefficients, *_ = np.linalg.lstsq(terms[inliers], peaks[inliers], rcond=None)
    return coefficients, inliers


@dataclass
class Focus:
    """Where a stack is in focus, tile by tile, or why that cannot be told."""

    origins: list[tuple[int, int]]
    curves: np.ndarray  # (slices, tiles) focus measure
    content: np.ndarray  # (slices, tiles) whether the tile has content
    peaks: np.ndarray  # (tiles,) z of each tile's own peak, nan where none
    peak_status: list[str]  # per tile: "ok", "edge", "flat" or "empty"
    surface_z: np.ndarray | None = None  # (tiles,) z of the fitted focus surface at each tile's centre
    inliers: np.ndarray | None = None  # (tiles,) peaks the surface was fitted to
    coefficients: np.ndarray | None = None
    problem: str = ""  # why the stack is left out; empty if kept


def find_focus(stack: Stack, curves: np.ndarray, content: np.ndarray, origins, args) -> Focus:
    """Each tile's peak, the focus surface through them, or the reason the stack is left out."""
    has_tissue = content.any(axis=0)
    peaks, status = np.full(len(origins), math.nan), []
    for tile in range(len(origins)):
        if not has_tissue[tile]:
            status.append("empty")
            continue
        peaks[tile], tile_status = curve_peak(stack.z_um, curves[:, tile], args.min_peak_contrast)
        status.append(tile_status)
    focus = Focus(origins, curves, content, peaks, status)
    usable = np.array([s == "ok" for s in status])
    needed = 6 if args.surface == "quadratic" else 3
    if usable.sum() < needed:
        counts = {kind: status.count(kind) for kind in ("empty", "edge", "flat")}
        if counts["empty"] == len(origins):
            focus.problem = "no tile has content (an empty field?)"
        elif counts["edge"] >= counts["flat"]:
            focus.problem = (f"the focus measure peaks at the first or last slice in {counts['edge']} of "
                             f"{len(origins) - counts['empty']} tiles with content: focus is outside the z range")
        else:
            focus.problem = (f"no clear focus peak: {usable.sum()} of {len(origins) - counts['empty']} tiles "
                             f"with content have one, {needed} are needed")
        return focus
    centres = np.array(origins, float) + IMAGE_SIZE / 2
    step = float(np.median(np.abs(np.diff(stack.z_um))))
    coefficients, inliers = fit_focus_surface(centres[usable], peaks[usable], stack.frame_shape, args.surface, step)
    focus.coefficients = coefficients
    focus.surface_z = surface_terms(centres, stack.frame_shape, args.surface) @ coefficients
    focus.inliers = np.zeros(len(origins), bool)
    focus.inliers[np.flatnonzero(usable)[inliers]] = True
    return focus


# ---------------------------------------------------------------- writing tiles

@dataclass(frozen=True)
class SliceJob:
    stack: Stack
    index: int
    labels_um: np.ndarray  # (tiles,) defocus of each tile at this slice; nan: leave the tile out
    origins: list[tuple[int, int]]
    dof_um: float
    folder: Path  # where this stack's tiles go
    root: Path  # the dataset's root, for relative paths
    bit_depth: int | None  # a 10-14 bit camera's, for 16-bit frames


def tile_pixels(tile: np.ndarray, seen: np.ndarray, bit_depth: int | None) -> np.ndarray:
    """A tile as it is stored: 8-bit grey or RGB as is, 16-bit grey as 16-bit (a 10-14 bit
    camera's stretched to the 16-bit range, so that the dataset needs no bit depth); other
    types (16-bit RGB, float) as `seen`, the tile on the 8-bit scale, in RGB as the dataset
    classes would make of them."""
    if tile.dtype == np.uint16 and tile.ndim == 2:
        return full_range_uint16(tile, bit_depth) if bit_depth else tile
    if tile.dtype == np.uint8:
        return tile
    return rgb_uint8(seen)


def write_slice_tiles(job: SliceJob) -> list[list]:
    """Write the tiles of one slice that have a label; their CSV rows."""
    pixels = read_slice(job.stack, job.index)
    seen = as_uint8(pixels, bit_depth=job.bit_depth)  # as the network sees it (a float frame by its maximum)
    rows = []
    for (y, x), label in zip(job.origins, job.labels_um):
        if math.isnan(label):
            continue
        tile = pixels[y:y + IMAGE_SIZE, x:x + IMAGE_SIZE]
        seen_tile = seen[y:y + IMAGE_SIZE, x:x + IMAGE_SIZE]
        path = job.folder / f"z{job.index:03d}_y{y:05d}_x{x:05d}.tif"
        # uncompressed TIFF: lossless, 16 bits kept, and 30x faster to write than PNG, which
        # gains little on noisy camera tiles
        stored = tile_pixels(tile, seen_tile, job.bit_depth)
        tifffile.imwrite(path, stored, photometric="minisblack" if stored.ndim == 2 else "rgb")
        rows.append([path.relative_to(job.root).as_posix(), f"{sobel_sharpness(seen_tile):.4f}",
                     f"{label:.4f}", f"{job.stack.magnification:g}", f"{job.stack.na:g}",
                     f"{label / job.dof_um:.6f}", job.stack.source.name, job.index, x, y])
    return rows


def slice_labels(stack: Stack, focus: Focus, index: int, dof_um: float, max_defocus_dof: float | None) -> np.ndarray:
    """The defocus of every tile in slice `index` (z of the slice - z of focus there); nan for
    tiles left out: no content in this slice, or beyond --max_defocus_dof."""
    labels = stack.z_um[index] - focus.surface_z
    labels[~focus.content[index]] = math.nan
    if max_defocus_dof is not None:
        labels[np.abs(labels) > max_defocus_dof * dof_um] = math.nan
    return labels


# ---------------------------------------------------------------- splits and reports

def split_stacks(stacks: list[Stack], fractions: list[float], seed: int) -> dict[str, str]:
    """{stack source: split}, per objective: shuffled, then shared out by the fractions; every
    split with a fraction above 0 gets at least one stack of every objective."""
    wanted = [split for split, fraction in zip(SPLITS, fractions) if fraction > 0]
    rng = np.random.default_rng(seed)
    assignment = {}
    for objective in sorted({stack.objective for stack in stacks}):
        group = [stack for stack in stacks if stack.objective == objective]
        if len(group) < len(wanted):
            raise StackError(f"{objective}: {len(group)} usable stack(s) cannot fill {len(wanted)} splits "
                             f"({', '.join(wanted)}), and no stack may be in two; add stacks or set a "
                             "split's fraction to 0 with --split")
        counts = share_out(len(group), [fractions[SPLITS.index(split)] for split in wanted])
        order = rng.permutation(len(group))
        start = 0
        for split, count in zip(wanted, counts):
            for i in order[start:start + count]:
                assignment[str(group[i].source)] = split
            start += count
    return assignment


def share_out(total: int, fractions: list[float]) -> list[int]:
    """`total` items in proportion to `fractions`, at least one each (largest remainders)."""
    weights = np.array(fractions) / sum(fractions)
    counts = np.maximum(1, np.floor(weights * total)).astype(int)
    while counts.sum() > total:
        counts[np.argmax(counts)] -= 1
    remainders = weights * total - counts
    while counts.sum() < total:
        best = int(np.argmax(remainders))
        counts[best] += 1
        remainders[best] -= 1
    return counts.tolist()


def plot_stack_report(path: Path, stack: Stack, focus: Focus) -> None:
    """Focus curves with each tile's peak, and the focus surface over the frame with the peaks on it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (curves_axis, surface_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    scale = focus.curves.max(axis=0, keepdims=True)
    for tile, status in enumerate(focus.peak_status):
        if status == "empty":
            continue
        curves_axis.plot(stack.z_um, focus.curves[:, tile] / max(scale[0, tile], 1e-12),
                         color="C0" if status == "ok" else "0.7", lw=0.8, alpha=0.6)
    if focus.surface_z is not None:
        for z in np.nanpercentile(focus.surface_z, [0, 100]):
            curves_axis.axvline(z, color="C3", lw=1, ls="--")
        ok = ~np.isnan(focus.peaks)
        curves_axis.plot(focus.peaks[ok], np.ones(ok.sum()), "v", color="C1", ms=4, label="tile peaks")
        curves_axis.legend(loc="lower right", fontsize=8)
    curves_axis.set(xlabel="z (um)", ylabel="focus measure / its maximum",
                    title=f"{stack.source.name}: "
                    + (focus.problem[:60] or "focus curves; dashed: focus surface's range"))
    height, width = stack.frame_shape
    if focus.surface_z is not None:
        yy, xx = np.mgrid[0:height:complex(0, 32), 0:width:complex(0, 32)]
        grid = surface_terms(np.stack([yy.ravel(), xx.ravel()], 1), stack.frame_shape, "quadratic"
                             if len(focus.coefficients) == 6 else "plane") @ focus.coefficients
        image = surface_axis.imshow(grid.reshape(yy.shape), extent=(0, width, height, 0), cmap="viridis")
        figure.colorbar(image, ax=surface_axis, label="focus z (um)")
        centres = np.array(focus.origins) + IMAGE_SIZE / 2
        ok = ~np.isnan(focus.peaks)
        surface_axis.scatter(centres[ok, 1], centres[ok, 0], c=focus.peaks[ok], cmap="viridis",
                             vmin=grid.min(), vmax=grid.max(), edgecolors="w", s=40)
        outliers = ok & ~focus.inliers
        surface_axis.scatter(centres[outliers, 1], centres[outliers, 0], marker="x", color="r", s=40,
                             label="left out of the fit")
        if outliers.any():
            surface_axis.legend(loc="lower right", fontsize=8)
    surface_axis.set(xlim=(0, width), ylim=(height, 0), xlabel="x (px)", ylabel="y (px)",
                     title="focus surface; dots: tile peaks")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


# ---------------------------------------------------------------- main

def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Turn focus stacks into an autofocus dataset (train/val/test CSVs "
                                                 "and 224x224 tiles).",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("stacks", type=Path, help="a folder of stacks or one TIFF stack (one objective), or a "
                                                  "CSV table of stacks (stack,magnification,NA[,z_step_um])")
    parser.add_argument("out", type=Path, help="folder to write the dataset into; must not hold one already")
    parser.add_argument("--magnification", type=float, default=None, help="the objective, for a folder of stacks")
    parser.add_argument("--na", type=float, default=None, help="the objective's NA, for a folder of stacks")
    parser.add_argument("--z_step_um", type=float, default=None,
                        help="z step of stacks whose file states none (the file's metadata wins)")
    parser.add_argument("--flip_z", action="store_true",
                        help="the stage's z falls as the slice index grows (the default: it rises)")
    parser.add_argument("--stride", type=int, default=IMAGE_SIZE, help="pixels between tiles")
    parser.add_argument("--focus_measure", choices=sorted(FOCUS_MEASURES), default="brenner",
                        help="focus measure of the focus curves")
    parser.add_argument("--surface", choices=("plane", "quadratic"), default="plane",
                        help="shape of the focus surface fitted to the tiles' peaks")
    parser.add_argument("--min_peak_contrast", type=float, default=0.3,
                        help="a focus curve's maximum must stand this share above its lowest value to count")
    parser.add_argument("--max_defocus_dof", type=float, default=None,
                        help="leave out slices further than this many DOF from focus (default: keep all)")
    parser.add_argument("--split", type=float, nargs=3, default=[0.7, 0.15, 0.15], metavar=("TRAIN", "VAL", "TEST"),
                        help="share of each objective's stacks per split")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split")
    add_bit_depth_argument(parser)
    parser.add_argument("--min_contrast", type=float, default=MIN_CONTRAST,
                        help="a tile has content when its 4x4-pixel blocks differ by this many grey levels (0-255)")
    parser.add_argument("--max_clipped", type=float, default=MAX_CLIPPED,
                        help="share of clipped values a tile may have")
    parser.add_argument("--wavelength_um", type=float, default=WAVELENGTH_UM, help="DOF formula: wavelength")
    parser.add_argument("--refractive_index", type=float, default=REFRACTIVE_INDEX,
                        help="DOF formula: refractive index of the objective's immersion medium")
    parser.add_argument("--camera_pixel_um", type=float, default=CAMERA_PIXEL_UM, help="DOF formula: camera pixel")
    parser.add_argument("--workers", type=int, default=usable_cpu_count(),
                        help="processes reading and writing slices (the CPU cores this job may use)")
    return parser


def check_args(args) -> None:
    if args.stride < 1 or args.workers < 1:
        raise StackError("--stride and --workers must be at least 1")
    if any(f < 0 for f in args.split) or sum(args.split) <= 0 or args.split[0] <= 0:
        raise StackError(f"--split {args.split}: shares must be at least 0 and the training share above 0")
    if args.z_step_um is not None and not args.z_step_um > 0:
        raise StackError("--z_step_um must be above 0")
    if args.max_defocus_dof is not None and not args.max_defocus_dof > 0:
        raise StackError("--max_defocus_dof must be above 0")
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        what = "holds a dataset" if (args.out / ".train").exists() else "is not an empty folder"
        raise StackError(f"{args.out} {what}; nothing was written: choose a new folder")


def start_worker() -> None:
    """Workers leave Ctrl-C to the main process, which stops them and removes the partial output,
    and open the stacks themselves: a file inherited open from the main process shares its read
    position with it and with every other worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    OPEN_TIFFS.clear()


def mapped(function, tasks: list, workers: int, description: str):
    """function over tasks in order, in `workers` processes (in this one when 1), with a progress bar."""
    if workers == 1 or len(tasks) == 1:
        yield from progress_bar(map(function, tasks), description, "slice", len(tasks))
        return
    with ProcessPoolExecutor(min(workers, len(tasks)), initializer=start_worker) as pool:
        yield from progress_bar(pool.map(function, tasks), description, "slice", len(tasks))


def analyse(stacks: list[Stack], args) -> dict[str, Focus]:
    """Focus of every stack, read slice by slice (memory: a few slices per worker)."""
    settings = Settings(args.focus_measure, args.min_contrast, args.max_clipped, args.bit_depth)
    results = {}
    for stack in stacks:
        origins = tile_origins(*stack.frame_shape, stride=args.stride)
        measured = list(mapped(measure_slice, [(stack, i, origins, settings) for i in range(len(stack.z_um))],
                               args.workers, f"focus {stack.source.name}"))
        curves = np.stack([m for m, _ in measured])
        content = np.stack([c for _, c in measured])
        results[str(stack.source)] = find_focus(stack, curves, content, origins, args)
    return results


def write_dataset(root: Path, stacks: list[Stack], focus: dict[str, Focus], splits: dict[str, str], args) -> list[dict]:
    """Tiles, split CSVs and reports of every stack under `root`; a summary line per stack."""
    (root / "reports").mkdir(parents=True)
    summary = []
    for stack in stacks:
        found = focus[str(stack.source)]
        plot_stack_report(root / "reports" / f"{stack.objective}_{stack.name}.png", stack, found)
        line = {"stack": str(stack.source), "objective": stack.objective, "slices": len(stack.z_um),
                "split": splits.get(str(stack.source), ""), "tiles": 0, "tile_positions": len(found.origins),
                "empty_tiles": found.peak_status.count("empty"), "focus_z_um_centre": "", "tilt_um_across": "",
                "problem": found.problem}
        if not found.problem:
            dof_um = depth_of_field_um(stack.magnification, stack.na, args.wavelength_um, args.refractive_index,
                                       args.camera_pixel_um)
            folder = root / "images" / stack.objective / stack.name
            folder.mkdir(parents=True)
            jobs = [SliceJob(stack, i, slice_labels(stack, found, i, dof_um, args.max_defocus_dof), found.origins,
                             dof_um, folder, root, args.bit_depth) for i in range(len(stack.z_um))]
            rows = [row for rows in mapped(write_slice_tiles, jobs, args.workers, f"tiles {stack.source.name}")
                    for row in rows]
            split_dir = split_folder(root, line["split"])
            split_dir.mkdir(exist_ok=True)
            with open(split_dir / f"{stack.objective}_{stack.name}.csv", "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(CSV_COLUMNS + TRACE_COLUMNS)
                writer.writerows(rows)
            coefficients = found.coefficients
            line.update(tiles=len(rows), focus_z_um_centre=f"{coefficients[0]:.3f}",
                        tilt_um_across=f"{math.hypot(coefficients[1], coefficients[2]):.3f}")
        summary.append(line)
    with open(root / "reports" / "stacks.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    return summary


def print_summary(summary: list[dict]) -> None:
    for line in summary:
        if line["problem"]:
            print(f"left out  {line['stack']}: {line['problem']}")
        else:
            print(f"{line['split']:5s}    {line['stack']}: {line['slices']} slices, {line['tiles']} tiles "
                  f"({line['empty_tiles']} of {line['tile_positions']} tile positions empty), focus at "
                  f"{line['focus_z_um_centre']} um in the centre, {line['tilt_um_across']} um tilt across the frame")
    for split in SPLITS:
        kept = [line for line in summary if line["split"] == split]
        print(f"{split}: {len(kept)} stacks, {sum(line['slices'] for line in kept)} slices, "
              f"{sum(line['tiles'] for line in kept)} tiles")


def main(args) -> None:
    check_args(args)
    stacks = find_stacks(args.stacks, args.magnification, args.na, args.z_step_um)
    check_stacks(stacks, args.bit_depth)
    if args.flip_z:
        for stack in stacks:
            stack.z_um = -stack.z_um
    focus = analyse(stacks, args)
    usable = [stack for stack in stacks if not focus[str(stack.source)].problem]
    if not usable:
        problems = "\n  ".join(f"{stack.source}: {focus[str(stack.source)].problem}" for stack in stacks)
        raise StackError(f"no stack has a focus to label tiles by; nothing was written:\n  {problems}")
    splits = split_stacks(usable, args.split, args.seed)
    staging = args.out.parent / f".{args.out.name}.incomplete"
    if staging.exists():
        shutil.rmtree(staging)  # left by a run that was killed outright
    try:
        summary = write_dataset(staging, stacks, focus, splits, args)
        if args.out.exists():
            args.out.rmdir()  # empty: checked before
        staging.rename(args.out)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError):  # a full disk, most often
            raise StackError(f"cannot write the dataset ({error.strerror or error}; "
                             f"{free_mib(staging.parent):.1f} MiB free in {staging.parent}): the partial output was "
                             f"removed and {args.out} is as it was; free some space and run the same command again"
                             ) from error
        raise
    print_summary(summary)
    print(f"dataset written to {args.out}; focus curves and surfaces in {args.out / 'reports'}")


if __name__ == "__main__":
    run(main, get_args_parser().parse_args(), "Interrupted; nothing was written.")
