"""stacks.py: tables of stacks with their objectives and z steps, colour as a channel axis of 16-bit
planes, z steps in nanometres, a TIFF without a z step refused by name, the 12-bit warning."""
import numpy as np
import pytest
import tifffile

from autofocuskit import stacks as stack_files


def test_a_table_gives_objectives_and_z_steps_and_slices_read_as_the_file_holds_them(stacks, tmp_path):
    frames = tifffile.imread(stacks / "flat.ome.tif")
    tifffile.imwrite(tmp_path / "plain.tif", frames, photometric="rgb")  # no z step in the file
    table = tmp_path / "stacks.csv"
    table.write_text("stack,magnification,NA,z_step_um\nplain.tif,20,0.7,0.25\n")
    with pytest.raises(stack_files.StackError, match="plain.tif: the file states no z step"):
        stack_files.find_stacks(tmp_path / "plain.tif", 20, 0.7, None)
    stack, = stack_files.find_stacks(table, None, None, None)
    assert (stack.magnification, stack.na) == (20, 0.7) and np.diff(stack.z_um) == pytest.approx(0.25)
    # colour as a channel axis of grey planes, 16 bits, z step in nanometres
    tifffile.imwrite(tmp_path / "planes.ome.tif", np.moveaxis(frames, -1, 1).astype(np.uint16) * 257, ome=True,
                     metadata={"axes": "ZCYX", "PhysicalSizeZ": 250, "PhysicalSizeZUnit": "nm"})
    planes_file = tmp_path / "planes.ome.tif"
    planes, = stack_files.find_stacks(planes_file, 20, 0.7, None)
    assert np.diff(planes.z_um) == pytest.approx(0.25)
    assert (stack_files.read_slice(planes, 3) == frames[3].astype(np.uint16) * 257).all()


def test_a_twelve_bit_camera_in_sixteen_bit_files_is_warned_about(stacks, tmp_path, capsys):
    frames = tifffile.imread(stacks / "tilted.tif") // 16  # the values a 12-bit camera gives
    tifffile.imwrite(tmp_path / "dim.tif", frames, imagej=True, metadata={"axes": "ZYX", "spacing": 0.8})
    stack_files.check_stacks(stack_files.find_stacks(tmp_path / "dim.tif", 20, 0.7, None))
    assert "dim.tif: 16-bit frames whose brightest value is" in capsys.readouterr().out
