"""error_model.py: a known error recovered from validation-like predictions, the text it travels
as, and the likelihood the focus loop reasons with."""
import json
from dataclasses import asdict, replace

import numpy as np
import pytest

from autofocuskit.error_model import ErrorModel, fit_error_model
from autofocuskit.sharpness import TAIL_WIDTHS

MODEL = ErrorModel(floor=1.5, gain=1.0, sigma0=0.5, sigma_slope=0.05, saturation=20.0, side_max=0.95,
                   side_reach=3.0, validation_images=400, field_spread=0.4)


def test_the_error_model_is_recovered_from_validation_predictions_and_travels_as_text():
    rng = np.random.default_rng(0)
    labels = rng.uniform(-20, 20, 400)
    truth = ErrorModel(floor=1.5, gain=1.0, sigma0=0.5, sigma_slope=0.05, saturation=20.0, side_max=0.95,
                       side_reach=3.0, validation_images=400)
    distances = truth.mean_distance(np.abs(labels)) + rng.normal(0, truth.sigma(np.abs(labels)))
    right = rng.random(400) < truth.side_accuracy(np.abs(labels))
    fitted = fit_error_model(labels, distances, np.where(right, labels, -labels), saturation=20.0)
    assert fitted.floor == pytest.approx(1.5, abs=0.5) and fitted.gain == pytest.approx(1.0, abs=0.05)
    assert fitted.sigma(np.array(10.0)) == pytest.approx(truth.sigma(np.array(10.0)), rel=0.25)
    assert fitted.side_max == pytest.approx(0.95, abs=0.04) and fitted.validation_images == 400
    assert asdict(ErrorModel.from_metadata(fitted.to_metadata())) == pytest.approx(asdict(fitted), rel=1e-4)
    assert "held-out images" in fitted.describe("um")


def test_a_reading_is_likeliest_where_the_model_expects_it_and_flat_beyond_the_saturation():
    candidates = np.linspace(-40, 40, 801)
    offsets, _ = MODEL.field_offsets()
    reading = float(MODEL.mean_distance(np.array(8.0)))
    likelihood = MODEL.log_likelihood(reading, reading, None, 16, 0.5, candidates, offsets)[len(offsets) // 2]
    assert abs(candidates[np.argmax(likelihood)]) == pytest.approx(8.0, abs=0.2)
    assert candidates[np.argmax(likelihood)] > 0  # the side read: positive
    saturated = MODEL.log_likelihood(float(MODEL.mean_distance(np.array(30.0))), 1.0, None, 16, 0.5, candidates,
                                     offsets)[len(offsets) // 2]
    assert saturated[candidates == 25.0] == pytest.approx(saturated[candidates == 35.0], abs=1e-3)


def test_a_fields_offset_scales_with_the_distance_read():
    """A field that reads 20 % long, at 4 and at 16 um: one offset explains both frames."""
    offsets = np.array([0.0, 0.2 * MODEL.field_scale()])
    for distance in (4.0, 16.0):
        reading = 1.2 * float(MODEL.mean_distance(np.array(distance)))
        likelihood = MODEL.log_likelihood(reading, reading, None, 16, 0.5, np.array([distance]), offsets)[:, 0]
        assert likelihood[1] > likelihood[0] + 1


def test_a_split_heads_side_counts_only_where_it_was_found_reliable():
    candidates = np.array([-0.05, 0.05, -10.0, 10.0])
    offsets = np.zeros(1)
    likelihood = MODEL.log_likelihood(1.5, 1.5, 0.99, 16, 0.5, candidates, offsets)[0]
    near = likelihood[1] - likelihood[0]  # at focus the side is a coin flip, whatever p says
    far = likelihood[3] - likelihood[2]
    assert abs(near) < 0.1 and far == pytest.approx(np.log(0.95 / 0.05), abs=0.05)


def test_a_file_exported_with_the_former_field_names_still_reads():
    former = json.loads(MODEL.to_metadata())
    former["side_scale"], former["images"] = former.pop("side_reach"), former.pop("validation_images")
    assert ErrorModel.from_metadata(json.dumps(former)) == ErrorModel.from_metadata(MODEL.to_metadata())


def test_the_sharpness_curve_is_measured_with_the_error_and_files_without_it_still_read():
    rng = np.random.default_rng(1)
    labels = rng.uniform(-20, 20, 64)
    fields = np.repeat(np.arange(8), 8)
    depths, levels = rng.uniform(0.8, 2.0, 8), rng.uniform(3, 8, 8)
    u = ((labels - 0.5) / 4.0) ** 2
    sharpness = levels[fields] - depths[fields] * u / (1 + u) + rng.normal(0, 0.02, 64)
    distances = MODEL.mean_distance(np.abs(labels))
    fitted = fit_error_model(labels, distances, labels, 20.0, sharpness, fields)
    curve = fitted.sharpness_curve()
    assert curve.measured and curve.width_um == pytest.approx(4.0, rel=0.15)
    assert curve.center_um == pytest.approx(0.5, abs=0.4) and curve.spread >= 0.03  # never trusted below MIN_SPREAD
    assert 0.8 <= curve.depth <= 2.0 and curve.depth_spread >= 0.25 * curve.depth  # never trusted closer
    assert asdict(ErrorModel.from_metadata(fitted.to_metadata()).sharpness_curve()) == pytest.approx(asdict(curve))
    assert curve.tail_widths > TAIL_WIDTHS  # images on the dip to five widths out: trusted further than assumed
    assert "log sharpness" in fitted.describe("um")
    without = json.loads(fitted.to_metadata())
    del without["sharpness_tail"]  # a file from before the tail was measured assumes it
    assert ErrorModel.from_metadata(json.dumps(without)).sharpness_curve().tail_widths == TAIL_WIDTHS
    for name in ("sharpness_width", "sharpness_center", "sharpness_spread", "sharpness_depth", "sharpness_depth_spread"):
        del without[name]
    assert ErrorModel.from_metadata(json.dumps(without)).sharpness_curve() is None
    assert fit_error_model(labels, distances, labels, 20.0).sharpness_curve() is None  # no sharpness given


def test_a_moaf_model_in_dof_is_given_in_um_with_every_length():
    in_dof = ErrorModel(floor=0.2, gain=1.0, sigma0=0.1, sigma_slope=0.05, saturation=5.0, side_max=0.9,
                        side_reach=1.0, validation_images=64, field_spread=0.3, sharpness_width=1.1,
                        sharpness_center=0.1, sharpness_spread=0.04)
    in_um = in_dof.in_um(2.0)
    assert (in_um.floor, in_um.sigma0, in_um.saturation, in_um.side_reach) == pytest.approx((0.4, 0.2, 10.0, 2.0))
    assert (in_um.field_spread, in_um.sharpness_width, in_um.sharpness_center) == pytest.approx((0.6, 2.2, 0.2))
    assert in_um.sigma_slope == 0.05 and in_um.sharpness_spread == 0.04  # no unit


def test_a_network_resolves_the_tolerance_only_if_enough_fields_measured_its_spread():
    """The reading changes by 1.4 times its spread at focus within the tolerance: sixteen held-out
    fields leave that spread plausible within a factor 1.3, four within 2.3. The spread between
    fields is part of one image's spread (both come from the same residuals), not added to it."""
    model = ErrorModel(floor=2.5, gain=1.0, sigma0=0.5, sigma_slope=0.0, saturation=20.0, side_max=0.9,
                       side_reach=2.0, validation_images=128, field_spread=0.4)
    change = float(model.mean_distance(np.array(2.0)) - model.mean_distance(np.array(0.0)))
    assert change / 0.5 == pytest.approx(1.4, abs=0.1)
    assert replace(model, validation_fields=16).resolves(2.0) and not replace(model, validation_fields=4).resolves(2.0)
    assert replace(model, validation_fields=16, field_spread=0.5).resolves(2.0)
