"""error_model.py: a known error recovered from validation-like predictions, the text it travels
as, and the likelihood the focus loop reasons with."""
import json
from dataclasses import asdict

import numpy as np
import pytest

from autofocuskit.error_model import ErrorModel, fit_error_model

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
    assert "validation images" in fitted.describe("um")


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
