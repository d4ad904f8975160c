"""checkpoints.py: the saving rules, crash-safe writes, resuming from the newest readable file,
random states per process."""
import random

import numpy as np
import pytest
import torch

from autofocuskit import checkpoints
from autofocuskit.checkpoints import (
    CheckpointSaver,
    checkpoint_to_resume,
    find_best_checkpoint,
    is_regular_checkpoint_epoch,
    load_checkpoint,
    restore_rng_states,
    rng_states,
    save_atomically,
)


@pytest.mark.parametrize("epoch, saved", [
    (0, True), (5, False), (10, True), (199, False), (200, True), (205, True), (207, False), (399, False),
    (400, False), (402, True), (599, False), (600, True), (601, True), (799, True)])
def test_regular_checkpoint_tiers(epoch, saved):
    assert is_regular_checkpoint_epoch(epoch) is saved


def test_regular_checkpoint_counts_per_tier():
    saved = [e for e in range(800) if is_regular_checkpoint_epoch(e)]
    assert sum(e < 200 for e in saved) == 20
    assert sum(200 <= e < 400 for e in saved) == 40
    assert sum(600 <= e for e in saved) == 200


def test_newest_best_checkpoint_is_found(tmp_path):
    assert find_best_checkpoint(tmp_path) is None
    for name in ("ckpt_best_0009.pt", "ckpt_best_0100.pt", "ckpt_0200.pt", "ckpt_best_0011.pt.tmp"):
        (tmp_path / name).touch()
    assert find_best_checkpoint(tmp_path).name == "ckpt_best_0100.pt"


def test_saver_applies_both_rules_and_keeps_one_best(tmp_path):
    saver = CheckpointSaver(tmp_path)
    saved = [saver.save_epoch(epoch, loss, {"model": {}}) for epoch, loss in enumerate([3.0, 2.0, 2.5, 1.0, 1.5])]
    assert saved == [["ckpt_0000.pt", "ckpt_best_0000.pt"], ["ckpt_best_0001.pt"], [], ["ckpt_best_0003.pt"], []]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ckpt_0000.pt", "ckpt_best_0003.pt"]
    best = load_checkpoint(tmp_path / "ckpt_best_0003.pt")
    assert (best["epoch"], best["val_loss"], best["best_loss"], best["best_epoch"]) == (3, 1.0, 1.0, 3)


def test_resumed_saver_continues_the_best_rule(tmp_path):
    saver = CheckpointSaver(tmp_path, best_loss=1.0, best_epoch=3)
    assert saver.save_epoch(11, 1.2, {"model": {}}) == []  # not better than before the resume
    assert saver.save_epoch(12, 0.9, {"model": {}}) == ["ckpt_best_0012.pt"]


def test_the_folder_is_flushed_after_the_rename(tmp_path, monkeypatch):
    flushed = []
    monkeypatch.setattr(checkpoints, "fsync_folder", flushed.append)
    save_atomically({"model": {}}, tmp_path / "ckpt_0000.pt")
    assert flushed == [tmp_path] and (tmp_path / "ckpt_0000.pt").is_file()
    assert not list(tmp_path.glob("*.tmp"))


def test_an_unreadable_best_falls_back_to_the_newest_readable_checkpoint(tmp_path, capsys):
    for name, epoch in (("ckpt_0010.pt", 10), ("ckpt_0020.pt", 20), ("ckpt_best_0015.pt", 15)):
        save_atomically({"model": {}, "epoch": epoch}, tmp_path / name)
    (tmp_path / "ckpt_best_0025.pt").write_bytes(b"truncated")
    path, checkpoint = checkpoint_to_resume(tmp_path, "best")
    assert path.name == "ckpt_0020.pt" and checkpoint["epoch"] == 20
    assert "cannot read checkpoint" in capsys.readouterr().err


def test_resume_from_best_takes_the_best_even_when_newer_regular_files_exist(tmp_path):
    for name in ("ckpt_0020.pt", "ckpt_best_0015.pt"):
        save_atomically({"model": {}}, tmp_path / name)
    assert checkpoint_to_resume(tmp_path, "best")[0].name == "ckpt_best_0015.pt"
    assert checkpoint_to_resume(tmp_path, "latest")[0].name == "ckpt_0020.pt"
    assert checkpoint_to_resume(tmp_path / "empty", "best") == (None, None)


def draws() -> tuple:
    return torch.rand(1).item(), random.random(), np.random.rand()


def test_each_process_restores_its_own_random_state():
    states = []
    for seed in (1, 2):  # two processes
        torch.manual_seed(seed), random.seed(seed), np.random.seed(seed)
        states.append(rng_states())
    expected = []
    for state in states:
        restore_rng_states(state)
        expected.append(draws())
    for rank in (0, 1):
        restore_rng_states(states, rank)
        assert draws() == expected[rank]
    assert expected[0] != expected[1]
