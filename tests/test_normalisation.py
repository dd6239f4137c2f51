"""The one value scaling: its rules, its round trip through configs and checkpoints, its use by datasets and
training, and the units check of an input pair."""
import numpy as np
import pytest
import torch

import csakd
from csakd.models import ModelConfig
from csakd.normalisation import Normalisation, check_units, units_factor
from csakd.train import TrainConfig, Trainer
from csakd.train.data import generated_source, open_source


def test_rules_parse_and_round_trip():
    assert Normalisation.parse(None) == Normalisation("lr_range")
    fixed = Normalisation.parse("fixed:0,10000")
    assert (fixed.rule, fixed.lo, fixed.hi) == ("fixed", 0.0, 10000.0)
    assert Normalisation.parse(fixed.to_config()) == fixed and Normalisation.parse(str(fixed)) == fixed
    for bad in ("fixed:5,1", "fixed", "minmax", "fixed:a,b"):
        with pytest.raises(ValueError, match="normalisation"):
            Normalisation.parse(bad)


def test_ranges_come_from_the_lr_hsi_or_the_recorded_range():
    lr = np.array([[[2.0, 6.0]]])
    assert Normalisation().range_of(lr) == (2.0, 6.0)
    assert Normalisation().range_of(np.full((1, 2, 2), 3.0)) == (3.0, 4.0)  # constant: shift only
    assert Normalisation("fixed", 0, 10).range_of(lr) == (0.0, 10.0)
    lo, hi = 2.0, 6.0
    x = np.array([2.0, 4.0, 8.0])
    np.testing.assert_allclose(Normalisation.undo(Normalisation.apply(x, lo, hi), lo, hi), x)


def test_the_rule_is_saved_with_the_model(tmp_path):
    model = csakd.create("student_tiny", bands=8, normalisation="fixed:0,10000")
    model.save(tmp_path / "m.safetensors")
    assert csakd.load(tmp_path / "m.safetensors").config.normalisation == ("fixed", 0.0, 10000.0)
    assert ModelConfig.from_json(ModelConfig().to_json()).normalisation == ("lr_range",)


def test_training_scales_data_and_builds_networks_with_one_rule():
    data = open_source(generated_source(2, 1, 0, size=32, bands=16, seed=0))[0]
    assert data[0]["min"] == pytest.approx(float(data.samples[0].load(None)["lr_hsi"].min()))
    config = TrainConfig(teacher="teacher_tiny", student="student_tiny", bands=16, msi_bands=4, batch_size=2,
                         crop=16, progress=False, device="cpu", backend="reference", precision="fp32",
                         normalisation="fixed:0,2", max_steps=1)
    trainer = Trainer(config, data)
    assert all(m.config.normalisation == ("fixed", 0.0, 2.0) for m in trainer.models.values())
    assert (data[0]["min"], data[0]["max"]) == (0.0, 2.0)
    trainer.shutdown()


def _pair(factor=1.0, seed=0):
    rng = np.random.default_rng(seed)
    hr = rng.random((10, 16, 16)) * 0.4 + 0.1
    srf = np.zeros((3, 10))
    srf[0, :3], srf[1, 3:7], srf[2, 7:] = 1 / 3, 1 / 4, 1 / 3
    lr = hr.reshape(10, 4, 4, 4, 4).mean(axis=(2, 4))
    msi = np.einsum("mc,chw->mhw", srf, hr) * factor
    return lr, msi, srf


def test_units_of_a_pair_are_checked():
    lr, msi, srf = _pair()
    np.testing.assert_allclose(units_factor(lr, msi, 4, srf), 1.0, rtol=1e-10)  # exact: block means commute
    check_units(lr, msi, 4, srf)
    check_units(lr, msi, 4)  # without a spectral response: against the band mean
    lr, msi, srf = _pair(factor=10000)
    with pytest.raises(ValueError, match=r"hr_msi: expected values in the LR-HSI's units, got about 1e\+04 x.*"
                                         r"--msi-scale 0\.0001"):
        check_units(lr, msi, 4, srf)
    with pytest.raises(ValueError, match="averaged over bands"):
        check_units(lr, msi, 4)
    check_units(lr, torch.as_tensor(msi).numpy() * 1e-4, 4, srf)
