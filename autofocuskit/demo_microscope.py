"""The demo microscope as pymmcore-plus Python devices: a tilted, warped tissue slide seen
through the demo optics, its camera, lamp, Z and XY stages, and a core that has them loaded.
"""
import logging
import math
from contextlib import contextmanager

import numpy as np
from pymmcore_plus import PixelFormat
from pymmcore_plus.experimental.unicore import (ShutterDevice, SimpleCameraDevice, StageDevice, UniMMCore,
                                                XYStageDevice)

from .optics import Optics, VirtualMicroscope
from .schema import CAMERA_PIXEL_UM, depth_of_field_um


class DemoSlide:
    """A tissue section through the demo optics whose focal plane is tilted and warped across the
    slide, so that positions differ in focus: `focus_z_um(x, y)`, by up to about 4.5 DOF within
    1.5 mm of the centre with the default tilt (DOF per mm) and warp (DOF); bare glass at
    `empty_xy`. Each position's tissue is drawn once, from its coordinates."""

    def __init__(self, magnification: float = 20, na: float = 0.7, size: int = 512,
                 tilt_dof_per_mm: tuple[float, float] = (1.4, -0.9), warp_dof: float = 1.0, focus_z_um: float = 0.0,
                 optics: Optics = Optics(), pixel_um: float | None = None, empty_xy=(), seed: int = 0):
        self.magnification, self.na, self.size, self.optics = magnification, na, size, optics
        self.dof_um = depth_of_field_um(magnification, na)
        self.pixel_um = pixel_um or CAMERA_PIXEL_UM / magnification
        self.tilt_dof_per_mm, self.warp_dof, self.z0_um = tilt_dof_per_mm, warp_dof, focus_z_um
        self.empty_xy, self.seed = [tuple(xy) for xy in empty_xy], seed
        self.fields: dict[tuple[int, int], VirtualMicroscope] = {}

    def focus_z_um(self, x_um: float, y_um: float) -> float:
        tilt = (self.tilt_dof_per_mm[0] * x_um + self.tilt_dof_per_mm[1] * y_um) / 1000
        warp = self.warp_dof * math.sin(2 * math.pi * x_um / 3000) * math.cos(2 * math.pi * y_um / 3000)
        return self.z0_um + (tilt + warp) * self.dof_um

    def image(self, x_um: float, y_um: float, z_um: float, bits: int, grey: bool) -> np.ndarray:
        """The camera frame with the stage at (x, y, z)."""
        key = (round(x_um), round(y_um))
        if key not in self.fields:
            empty = any(math.dist(key, xy) < 1 for xy in self.empty_xy)
            self.fields[key] = VirtualMicroscope(self.magnification, self.na, self.size, seed=hash((self.seed, key)) % 2**32,
                                                 optics=self.optics, empty=empty, pixel_um=self.pixel_um)
        field = self.fields[key]
        field.defocus_um = z_um - self.focus_z_um(x_um, y_um)
        return field.acquire(bits, grey)


class DemoZStage(StageDevice):
    """The focus drive: z in um, larger z further up (defocus grows with z above focus); every
    position it was sent to is in `visited`."""

    def __init__(self) -> None:
        super().__init__()
        self.z_um = 0.0
        self.visited: list[float] = []

    def set_position_um(self, val: float) -> None:
        self.z_um = float(val)
        self.visited.append(self.z_um)

    def get_position_um(self) -> float:
        return self.z_um

    def home(self) -> None:
        self.z_um = 0.0

    def stop(self) -> None:
        pass

    def set_origin(self) -> None:
        self.z_um = 0.0


class DemoXYStage(XYStageDevice):
    def __init__(self) -> None:
        super().__init__()
        self.xy_um = (0.0, 0.0)

    def set_position_um(self, x: float, y: float) -> None:
        self.xy_um = (float(x), float(y))

    def get_position_um(self) -> tuple[float, float]:
        return self.xy_um

    def set_origin_x(self) -> None:
        self.xy_um = (0.0, self.xy_um[1])

    def set_origin_y(self) -> None:
        self.xy_um = (self.xy_um[0], 0.0)

    def home(self) -> None:
        self.xy_um = (0.0, 0.0)

    def stop(self) -> None:
        pass


class DemoLamp(ShutterDevice):
    def __init__(self) -> None:
        super().__init__()
        self.is_open = False

    def get_open(self) -> bool:
        return self.is_open

    def set_open(self, open: bool) -> None:
        self.is_open = open


class DemoCamera(SimpleCameraDevice):
    """The demo slide seen through the camera: RGB or grey, 8 bits or 10-16 bits in 16-bit frames."""

    def __init__(self, slide: DemoSlide, xy: DemoXYStage, z: DemoZStage, bits: int = 8, grey: bool = False):
        self.slide, self.xy, self.z, self.bits, self.grey = slide, xy, z, bits, grey
        self.exposure_ms = 10.0
        super().__init__()

    def get_exposure(self) -> float:
        return self.exposure_ms

    def set_exposure(self, exposure: float) -> None:
        self.exposure_ms = exposure

    def get_pixel_format(self) -> PixelFormat:
        return PixelFormat(f"{'Mono' if self.grey else 'RGB'}{self.bits}")

    def sensor_shape(self) -> tuple[int, ...]:
        return (self.slide.size, self.slide.size) if self.grey else (self.slide.size, self.slide.size, 3)

    def dtype(self):
        return np.uint8 if self.bits == 8 else np.uint16

    def snap(self, buffer: np.ndarray) -> dict:
        buffer[:] = self.slide.image(*self.xy.xy_um, self.z.z_um, self.bits, self.grey)
        return {}


@contextmanager
def no_installation_search_error():
    """pymmcore-plus looks for a Micro-Manager installation whenever a core is made and logs an
    error when it finds none; a core of Python devices needs none."""
    logger = logging.getLogger("pymmcore-plus")

    def keep(record: logging.LogRecord) -> bool:
        return "Could not find a compatible Micro-Manager installation" not in record.getMessage()

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def python_device_core() -> UniMMCore:
    """A core for Python devices, made without the search for a Micro-Manager installation."""
    with no_installation_search_error():
        return UniMMCore()


def demo_core(slide: DemoSlide | None = None, bits: int = 8, grey: bool = False,
              pixel_size_um: float | None = None, z: DemoZStage | None = None) -> UniMMCore:
    """A pymmcore-plus core whose camera, lamp, Z and XY stages are the demo microscope's
    Python devices, with a pixel-size configuration (the slide's pixel size unless given)."""
    slide, z = slide or DemoSlide(), z or DemoZStage()
    core = python_device_core()
    xy = DemoXYStage()
    devices = {"Camera": DemoCamera(slide, xy, z, bits, grey), "Z": z, "XY": xy, "Lamp": DemoLamp()}
    for label, device in devices.items():
        core.loadPyDevice(label, device)
        core.initializeDevice(label)
    core.setCameraDevice("Camera")
    core.setFocusDevice("Z")
    core.setXYStageDevice("XY")
    core.setShutterDevice("Lamp")
    core.definePixelSizeConfig("demo")
    core.setPixelSizeUm("demo", pixel_size_um or slide.pixel_um)
    core.setPixelSizeConfig("demo")
    return core
