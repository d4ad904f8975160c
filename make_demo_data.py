"""Write a synthetic autofocus dataset in the layout myDataset.py reads, or focus stacks with known focus.

    python make_demo_data.py demo_data                                   # 10x/0.3 and 20x/0.7, under a minute
    python make_demo_data.py small --train 192 --val 32 --seed 1         # fewer images, faster training
    python make_demo_data.py weak_cue --chromatic_shift_dof 0            # the side of focus barely shows
    python make_demo_data.py demo40 --objectives 10x_0.3 40x_0.75 --max_defocus_dof 8
    python make_demo_data.py stacks --stacks --objectives 20x_0.7        # focus stacks for make_dataset.py

The images are H&E-like tissue imaged through the physical model of the optics in
optics.py: defocus through a pupil-function PSF per colour channel, the side of focus
shown only by the weak asymmetries real objectives carry (longitudinal chromatic
aberration, spherical aberration). With `--chromatic_shift_dof 0` only the spherical
aberration is left, and the side is barely learnable, as with many real objectives.

The defocus range is a fixed number of depths of field, so every objective spans the same
blur range in DOF units. Each split gets its own tissue fields (no field appears in two
splits); every field is imaged at several defocus positions, like a z-stack. Output is
deterministic for a seed. PSFs are computed once per defocus on a grid of Z_GRID_DOF and
cached, and the labels lie on that grid.
"""
import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image

from autofocuskit.imaging import IMAGE_SIZE, sobel_sharpness
from autofocuskit.optics import OBJECTIVE_MEDIUM_INDEX, Z_GRID_DOF, Optics, VirtualMicroscope, image_at_defocus, tissue_field
from autofocuskit.schema import (CSV_COLUMNS, depth_of_field_um, objective_name, objective_prefix, objective_problem,
                                 split_folder)

OBJECTIVES = ((10.0, 0.3), (20.0, 0.7))
# defocus is drawn uniformly from +-this many depths of field, where `focus.py --simulate` starts:
# a wider range reaches further starts (--max_defocus_dof 6.5 for docs/focus_loop.md's +-6 DOF)
# and costs precision near focus for the same training (the quick start's network 0.30 DOF off at
# +-5, 0.46 at +-6.5, and its focus loops a third image)
MAX_DEFOCUS_DOF = 5.0
Z_PER_FIELD = 8  # defocus positions imaged per tissue field
SLIDES_PER_SPLIT = 2  # each split and objective is written as this many CSV files


def write_split(root: Path, split: str, n_images: int, magnification: float, na: float,
                rng: np.random.Generator, optics: Optics, max_defocus_dof: float) -> int:
    """Image `n_images` defocused views of fresh tissue fields; write images and CSVs for one split."""
    objective = objective_prefix(magnification, na)
    dof_um = depth_of_field_um(magnification, na)
    rows = {slide: [] for slide in range(1, SLIDES_PER_SPLIT + 1)}
    n_fields = math.ceil(n_images / Z_PER_FIELD)
    steps = round(max_defocus_dof / Z_GRID_DOF)
    z_grid_dof = np.arange(-steps, steps + 1) * Z_GRID_DOF
    for field in range(n_fields):
        slide = field % SLIDES_PER_SPLIT + 1
        transmission = tissue_field(rng, magnification)
        folder = root / "images" / objective / split / f"slide{slide}"
        folder.mkdir(parents=True, exist_ok=True)
        n_views = min(Z_PER_FIELD, n_images - field * Z_PER_FIELD)
        for z_dof in rng.choice(z_grid_dof, size=n_views, replace=False):  # distinct planes, as in a z-stack
            z_um = z_dof * dof_um
            image = image_at_defocus(rng, transmission, z_um, magnification, na, dof_um, optics)
            image_path = folder / f"field{field:03d}_z{z_um:+08.3f}um.png"
            Image.fromarray(image).save(image_path, compress_level=1)  # fast; PNG stays lossless
            rows[slide].append(
                f"{image_path.relative_to(root).as_posix()},{sobel_sharpness(image):.4f},"
                f"{z_um:.4f},{magnification:g},{na:g},{z_dof:.6f}"
            )
    split_dir = split_folder(root, split)
    split_dir.mkdir(parents=True, exist_ok=True)
    for slide, lines in rows.items():
        if lines:
            (split_dir / f"{objective}_slide{slide}.csv").write_text("\n".join([",".join(CSV_COLUMNS), *lines]) + "\n")
    return n_images


def make_demo_dataset(root: Path, n_train: int = 768, n_val: int = 128, n_test: int = 32, seed: int = 0,
                      objectives: tuple[tuple[float, float], ...] = OBJECTIVES, optics: Optics = Optics(),
                      max_defocus_dof: float = MAX_DEFOCUS_DOF) -> Path:
    """Write the demo dataset under `root` (images per objective per split) and return `root`."""
    rng = np.random.default_rng(seed)
    for magnification, na in objectives:
        for split, n_images in (("train", n_train), ("val", n_val), ("test", n_test)):
            write_split(root, split, n_images, magnification, na, rng, optics, max_defocus_dof)
    return root


# the focus stacks write_demo_stacks writes: name, defocus of the first slice at the frame's centre
# and tilt across the frame (both in DOF), share of the frame that is bare glass, file format
DEMO_STACKS = (
    ("flat", -4.0, 0.0, 0.0, "ome"),  # RGB, 8 bits, OME-TIFF
    ("tilted", -3.5, 1.5, 0.0, "imagej"),  # grey, 16 bits, ImageJ hyperstack
    ("half_bare", -4.5, 0.0, 0.65, "folder"),  # RGB PNG files and z_positions.csv
    ("no_focus", 1.5, 0.0, 0.0, "ome"),  # every slice on one side of focus: no focus in range
    ("empty", -4.0, 0.0, 1.0, "ome"),  # bare glass only
)


def write_demo_stacks(root: Path, magnification: float = 20.0, na: float = 0.7, size: int = 448,
                      n_slices: int = 17, z_step_dof: float = 0.5, seed: int = 0, optics: Optics = Optics(),
                      names: tuple[str, ...] = tuple(stack[0] for stack in DEMO_STACKS)) -> Path:
    """Write the focus stacks of DEMO_STACKS (those in `names`) under `root` as a microscope
    would, slice by slice, and `root/truth.csv` for checking a dataset made from them.

    Slice i is imaged with the stage i x z step further along z, so its defocus is the first
    slice's plus i x z step (the sign of defocus_label). truth.csv gives per stack the first
    slice's defocus at the frame's centre and the tilt, in um; `strip_defocus_um` turns them
    into the defocus of every column.
    """
    root.mkdir(parents=True, exist_ok=True)
    dof_um = depth_of_field_um(magnification, na)
    z_step_um = z_step_dof * dof_um
    truth = ["stack,first_defocus_um,tilt_um,z_step_um,size"]
    for number, (name, first_dof, tilt_dof, bare_share, kind) in enumerate(DEMO_STACKS):
        if name not in names:
            continue
        scope = VirtualMicroscope(magnification, na, size, first_dof * dof_um, seed + number, optics,
                                  tilt_dof * dof_um, empty=bare_share == 1.0, bare_share=bare_share)

        def slices():
            for _ in range(n_slices):
                yield scope.acquire(bits=16, grey=True) if kind == "imagej" else scope.acquire()
                scope.move_by(z_step_um)
        write_stack(root, name, kind, slices(), n_slices, size, z_step_um)
        truth.append(f"{name},{first_dof * dof_um:.6f},{tilt_dof * dof_um:.6f},{z_step_um:.6f},{size}")
    (root / "truth.csv").write_text("\n".join(truth) + "\n")
    return root


def write_stack(root: Path, name: str, kind: str, slices, n_slices: int, size: int, z_step_um: float) -> None:
    """One stack, its slices written as they come: an RGB OME-TIFF, a 16-bit grey ImageJ
    hyperstack, or a folder of RGB PNG files with z_positions.csv."""
    import tifffile  # only the stacks need it

    if kind == "ome":
        tifffile.imwrite(root / f"{name}.ome.tif", slices, shape=(n_slices, size, size, 3), dtype=np.uint8,
                         ome=True, photometric="rgb",
                         metadata={"axes": "ZYXS", "PhysicalSizeZ": z_step_um, "PhysicalSizeZUnit": "µm"})
    elif kind == "imagej":
        tifffile.imwrite(root / f"{name}.tif", slices, shape=(n_slices, size, size), dtype=np.uint16, imagej=True,
                         metadata={"axes": "ZYX", "spacing": z_step_um, "unit": "um"})
    else:
        folder = root / name
        folder.mkdir()
        lines = ["image,z_um"]
        for index, image in enumerate(slices):
            Image.fromarray(image).save(folder / f"z{index:03d}.png")
            lines.append(f"z{index:03d}.png,{index * z_step_um:.6f}")
        (folder / "z_positions.csv").write_text("\n".join(lines) + "\n")


def objective(text: str) -> tuple[float, float]:
    """An argparse type: '20x_0.7' -> (20.0, 0.7)."""
    try:
        magnification, na = (float(part) for part in text.lower().split("x_"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an objective like 20x_0.7") from None
    problem = objective_problem(magnification, na, max_na=OBJECTIVE_MEDIUM_INDEX)  # the demo optics are dry
    if problem:
        raise argparse.ArgumentTypeError(f"{text!r}: {problem} (the demo objectives are dry)")
    return magnification, na


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Write a synthetic autofocus dataset.")
    parser.add_argument("root_dir", type=Path, help="folder to write the dataset into")
    # 96 tissue fields to learn from and 16 to measure the error on: a network trained on 24 fields reads
    # fields unlike them long or short by up to a DOF, and 4 fields measure that only roughly
    parser.add_argument("--train", type=int, default=768, help="training images per objective (default: %(default)s)")
    parser.add_argument("--val", type=int, default=128, help="validation images per objective (default: %(default)s)")
    parser.add_argument("--test", type=int, default=32, help="test images per objective (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--objectives", type=objective, nargs="+", default=list(OBJECTIVES),
                        metavar="MAGx_NA", help="objectives to image, e.g. 10x_0.3 40x_0.75 (default: 10x_0.3 20x_0.7)")
    parser.add_argument("--max_defocus_dof", type=float, default=MAX_DEFOCUS_DOF,
                        help="defocus is drawn uniformly from +-this many depths of field (default: %(default)s)")
    parser.add_argument("--chromatic_shift_dof", type=float, default=Optics.chromatic_shift_dof,
                        help="red focuses this many DOF above green, blue as far below; 0 leaves only the weak "
                             "spherical-aberration cue to the side of focus (default: %(default)s)")
    parser.add_argument("--specimen_depth_um", type=float, default=Optics.specimen_depth_um,
                        help="depth of the tissue below the coverslip, the source of spherical "
                             "aberration (default: %(default)s)")
    parser.add_argument("--specimen_index", type=float, default=Optics.specimen_index,
                        help="refractive index of the specimen's medium (default: %(default)s, water)")
    stacks = parser.add_argument_group("focus stacks, the input of make_dataset.py, instead of a dataset")
    stacks.add_argument("--stacks", nargs="*", choices=[stack[0] for stack in DEMO_STACKS], default=None,
                        metavar="NAME", help="write these focus stacks of one objective (the first of "
                        f"--objectives); none named: all of {', '.join(stack[0] for stack in DEMO_STACKS)}")
    stacks.add_argument("--stack_size", type=int, default=448, help="frame width and height (default: %(default)s)")
    stacks.add_argument("--stack_slices", type=int, default=17, help="slices per stack (default: %(default)s)")
    stacks.add_argument("--z_step_dof", type=float, default=0.5, help="z step in DOF (default: %(default)s)")
    return parser


def main(args: argparse.Namespace) -> None:
    if any(n < 1 for n in (args.train, args.val, args.test)):
        raise SystemExit("error: --train, --val and --test must be at least 1")
    if not args.max_defocus_dof > 0 or args.specimen_depth_um < 0 or args.specimen_index < 1:
        raise SystemExit("error: --max_defocus_dof must be above 0, --specimen_depth_um at least 0 "
                         "and --specimen_index at least 1")
    if args.stacks is None and (args.root_dir / ".train").exists():
        print(f"{args.root_dir} already holds a dataset; leaving it as it is (delete it to write a new one)")
        return
    optics = Optics(args.chromatic_shift_dof, args.specimen_depth_um, args.specimen_index)
    if args.stacks is not None:
        write_stacks(args, optics)
        return
    make_demo_dataset(args.root_dir, args.train, args.val, args.test, args.seed, tuple(args.objectives),
                      optics, args.max_defocus_dof)
    for magnification, na in args.objectives:
        print(f"{objective_name(magnification, na)}: depth of field {depth_of_field_um(magnification, na):.2f} um, "
              f"defocus within +-{args.max_defocus_dof:g} DOF")
    print(f"{optics}\ndemo dataset written to {args.root_dir}")


def write_stacks(args: argparse.Namespace, optics: Optics) -> None:
    if args.stack_size < IMAGE_SIZE or args.stack_slices < 1 or not args.z_step_dof > 0:
        raise SystemExit(f"error: --stack_size must be at least {IMAGE_SIZE}, --stack_slices at least 1 and "
                         "--z_step_dof above 0")
    if (args.root_dir / "truth.csv").exists():
        print(f"{args.root_dir} already holds demo stacks; leaving them as they are")
        return
    magnification, na = args.objectives[0]
    write_demo_stacks(args.root_dir, magnification, na, args.stack_size, args.stack_slices, args.z_step_dof,
                      args.seed, optics, tuple(args.stacks) or tuple(stack[0] for stack in DEMO_STACKS))
    print(f"{optics}\nfocus stacks of a {objective_name(magnification, na)} objective written to {args.root_dir}; "
          f"their true focus is in {args.root_dir / 'truth.csv'}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
