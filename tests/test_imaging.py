"""imaging.py: the tile grid and the content test (blank, saturated; a grey tile as its RGB copy)."""
import numpy as np

from autofocuskit.imaging import IMAGE_SIZE, has_content, tile_origins
from autofocuskit.optics import VirtualMicroscope


def test_tiles_cover_the_frame_on_a_grid():
    assert tile_origins(448, 672, 3, None) == [(y, x) for y in (0, 112, 224) for x in (0, 224, 448)]
    assert tile_origins(448, 448, 4, 112)[:3] == [(0, 0), (0, 112), (0, 224)]


def test_blank_and_saturated_tiles_have_no_content(tissue_frame):
    blank = VirtualMicroscope(10, 0.3, size=256, empty=True).acquire()[:IMAGE_SIZE, :IMAGE_SIZE]
    saturated = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 255, np.uint8)
    saturated[::8] = tissue_frame[:IMAGE_SIZE:8, :IMAGE_SIZE]  # some detail, mostly clipped
    assert has_content(tissue_frame[:IMAGE_SIZE, :IMAGE_SIZE], 2.0, 0.25)
    assert not has_content(blank, 2.0, 0.25) and not has_content(saturated, 2.0, 0.25)
    for tile in (tissue_frame[:IMAGE_SIZE, :IMAGE_SIZE, 1], blank[..., 1], saturated[..., 1]):  # grey tiles as their RGB copies
        for contrast in np.linspace(0, 30, 61):
            assert has_content(tile, contrast, 0.25) == has_content(np.repeat(tile[..., None], 3, 2), contrast, 0.25)
