"""myTrain.py: resuming after a run, a real Ctrl-C and a SIGKILL; unreadable checkpoints; interrupted-and-
resumed equal to straight training; --check; bad arguments and input; TensorBoard; seeds and schedules;
two-process torchrun; threads fitted to the cores; one-sided labels; and a learning check (the README's
recipe with the split head must learn the distance and beat the mean predictor)."""
import errno
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from conftest import FAST, ROOT, finish, in_folder, run_script, scalar_steps, start_script, train_in_process
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from autofocuskit import checkpoints, cli
from autofocuskit.checkpoints import (
    checkpoints_newest_first,
    find_best_checkpoint,
    load_checkpoint,
)
from autofocuskit.datasets import SOAFDataset
from autofocuskit.epochs import DefocusLoss, validation_epoch
from autofocuskit.networks import SOAFModel
from autofocuskit.tasks import build_loader
from myTest import predict_pytorch
from myTrain import get_args_parser, main, out_of_patience, say_if_still_learning, still_falling, training_labels


def test_resume_continues_counter_optimizer_and_curves(demo_root, tmp_path, capsys):
    train_in_process(tmp_path, "--root_dir", demo_root, "--epochs", "2", *FAST, capsys=capsys)
    best = find_best_checkpoint(tmp_path / ".ckpts")
    resumed_epoch = torch.load(best, weights_only=True)["epoch"] + 1

    second = train_in_process(tmp_path, "--root_dir", demo_root, "--epochs", "4", *FAST, capsys=capsys)
    assert f"continuing at epoch {resumed_epoch}" in second
    assert f"Epoch {resumed_epoch} ({resumed_epoch + 1}/4)" in second and "Epoch 3 (4/4)" in second
    assert f"Epoch {resumed_epoch - 1} (" not in second
    assert scalar_steps(tmp_path / "runs" / "soaf") == [0, 1, 2, 3]  # no step twice

    newest = find_best_checkpoint(tmp_path / ".ckpts")
    state = torch.load(newest, weights_only=True)
    batches_per_epoch = 2  # 16 training images, batch 8
    adam_steps = {int(s["step"]) for s in state["optimizer"]["state"].values()}
    assert adam_steps == {(state["epoch"] + 1) * batches_per_epoch}  # the optimizer kept counting

    done = train_in_process(tmp_path, "--root_dir", demo_root, "--epochs", str(state["epoch"] + 1), *FAST,
                            capsys=capsys)
    assert "Nothing to do" in done


def test_steps_set_the_epochs_from_the_training_set(demo_root, tmp_path, capsys):
    printed = train_in_process(tmp_path, "--root_dir", demo_root, "--steps", "5", "--epochs", "50", *FAST,
                               capsys=capsys)
    assert "--steps 5: 3 epochs of 2 batches" in printed  # 16 training images, batch 8
    assert "Epoch 2 (3/3)" in printed and "Epoch 3 (" not in printed
    state = torch.load(find_best_checkpoint(tmp_path / ".ckpts"), weights_only=True)
    assert state["args"]["epochs"] == 3 and state["args"]["steps"] == 5
    again = train_in_process(tmp_path, "--root_dir", demo_root, "--steps", "6", "--resume_from", "latest", *FAST,
                             capsys=capsys)
    assert "Nothing to do: 3 epochs are already trained; raise --steps" in again


@pytest.mark.slow
def test_ctrl_c_keeps_checkpoints_and_rerun_resumes(demo_root, tmp_path):
    command = [sys.executable, str(ROOT / "myTrain.py"), "--root_dir", str(demo_root), "--epochs", "50", *FAST]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={"PYTHONUNBUFFERED": "1", **dict(__import__("os").environ)})
    lines = []
    for line in process.stdout:  # wait until two epochs are done, then interrupt a later one
        lines.append(line)
        if line.startswith("Epoch 1 (2/50)"):
            break
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    rest, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "rerun the same command to resume" in stderr and "Traceback" not in stderr
    assert not list((tmp_path / ".ckpts").glob("*.tmp"))
    # on a fast machine more epochs may finish in the half second; the best is one that did
    finished = sum(line.startswith("Epoch ") for line in [*lines, *rest.splitlines()])
    assert 2 <= finished < 50
    best = find_best_checkpoint(tmp_path / ".ckpts")
    assert torch.load(best, weights_only=True)["epoch"] < finished
    assert scalar_steps(tmp_path / "runs" / "soaf")[:2] == [0, 1]  # the writer was closed properly

    rerun = run_script("myTrain.py", "--root_dir", demo_root, "--epochs", "3", *FAST, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert "Resumed from" in rerun.stdout


@pytest.mark.slow
def test_existing_checkpoints_are_never_overwritten_by_a_fresh_start(demo_root, tmp_path):
    (tmp_path / ".ckpts").mkdir()
    (tmp_path / ".ckpts" / "ckpt_0000.pt").write_bytes(b"precious")
    for extra in ((), ("--no-resume",)):
        result = run_script("myTrain.py", "--root_dir", demo_root, "--epochs", "1", *FAST, *extra, cwd=tmp_path)
        assert result.returncode != 0
        assert "would overwrite them" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / ".ckpts" / "ckpt_0000.pt").read_bytes() == b"precious"


@pytest.mark.slow
def test_bad_input_gives_a_message_not_a_traceback(demo_root, tmp_path):
    (tmp_path / "broken.pt").write_bytes(b"half a checkpoint")
    started = [start_script("myTrain.py", "--root_dir", tmp_path / "nowhere", "--epochs", "1", *FAST, cwd=tmp_path),
               start_script("myTrain.py", "--root_dir", demo_root, "--glob", "40x*.csv", *FAST, cwd=tmp_path),
               start_script("myTest.py", "--root_dir", demo_root, "--ckpt", "broken.pt", cwd=tmp_path),
               start_script("myTest.py", "--root_dir", demo_root, cwd=tmp_path)]
    missing, bad_glob, broken, no_ckpt = map(finish, started)
    assert missing.returncode != 0 and "error: split folder" in missing.stderr
    assert bad_glob.returncode != 0 and "matches '40x*.csv'" in bad_glob.stderr
    assert broken.returncode != 0 and "cannot read checkpoint broken.pt" in broken.stderr
    assert no_ckpt.returncode != 0 and "train first" in no_ckpt.stderr
    for result in (missing, bad_glob, broken, no_ckpt):
        assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_soaf_checkpoint_does_not_resume_as_moaf(demo_root, tmp_path):
    assert run_script("myTrain.py", "--root_dir", demo_root, "--epochs", "1", *FAST, cwd=tmp_path).returncode == 0
    moaf = run_script("myTrain.py", "--root_dir", demo_root, "--task", "moaf", "--epochs", "2", *FAST, cwd=tmp_path)
    assert moaf.returncode != 0 and "trained with --task soaf, not moaf" in moaf.stderr


@pytest.mark.slow
def test_split_head_learns_to_focus_on_demo_data(learning_root, trained_split_run):
    """A real learning check on the demo optics, whose side of focus shows only weakly: the README's
    from-scratch recipe with the split head (SOAF, micrometres) must at least halve the error of the
    distance from focus of always predicting the training labels' mean distance, and its signed
    prediction must beat always predicting the training mean."""
    checkpoint = torch.load(find_best_checkpoint(trained_split_run / ".ckpts"), weights_only=True)
    model = SOAFModel(pretrained=False, head="split")
    model.load_state_dict(checkpoint["model"])
    test_set = SOAFDataset(learning_root, "test")
    loader = build_loader(test_set, 32, 0, torch.device("cpu"), shuffle=False)
    outputs = predict_pytorch(model, loader, torch.device("cpu"))
    signed, distance = torch.from_numpy(outputs["output"]), torch.from_numpy(outputs["distance"])
    labels, train_labels = test_set.labels, SOAFDataset(learning_root, "train").labels
    distance_mae = (distance - labels.abs()).abs().mean().item()
    mean_distance_mae = (labels.abs() - train_labels.abs().mean()).abs().mean().item()
    signed_mae = (signed - labels).abs().mean().item()
    mean_predictor_mae = (labels - checkpoint["train_label_mean"]).abs().mean().item()
    print(f"distance MAE {distance_mae:.2f} um (mean distance {mean_distance_mae:.2f}), "
          f"signed MAE {signed_mae:.2f} um (training mean {mean_predictor_mae:.2f})")
    assert distance_mae <= 0.5 * mean_distance_mae, (distance_mae, mean_distance_mae)
    assert signed_mae < mean_predictor_mae, (signed_mae, mean_predictor_mae)


@pytest.mark.slow
def test_check_reports_a_clean_dataset(demo_root, tmp_path):
    result = run_script("myTrain.py", "--root_dir", demo_root, "--task", "moaf", "--check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(r"train +10x/0.3: +16 rows", result.stdout) and re.search(r"test +20x/0.7: +8 rows", result.stdout)
    assert "No problems found." in result.stdout
    assert not (tmp_path / ".ckpts").exists()  # nothing was trained


@pytest.mark.slow
def test_check_lists_every_problem_with_file_and_line(demo_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    train_csv = sorted((root / ".train").glob("10x_0.3*.csv"))[0]
    lines = train_csv.read_text().splitlines()
    first_image = root / lines[1].split(",")[0]
    first_image.write_bytes(b"broken")
    Image.new("RGB", (64, 64)).save(root / lines[2].split(",")[0])
    lines[3] = lines[3].replace(",10,", ",ten,")
    lines[4] = "missing/file.png," + lines[4].split(",", 1)[1]
    train_csv.write_text("\n".join(lines) + "\n")
    (root / ".val" / "10x_0.3_extra.csv").write_text("image_path,NA\n")

    result = run_script("myTrain.py", "--root_dir", root, "--task", "moaf", "--check", cwd=tmp_path)
    assert result.returncode == 1
    assert "5 problem(s)" in result.stderr
    assert f"{train_csv} line 2: {lines[1].split(',')[0]}: cannot decode" in result.stderr
    assert f"{train_csv} line 3:" in result.stderr and "size 64x64" in result.stderr
    assert f"{train_csv} line 4: magnification = 'ten' is not a finite number" in result.stderr
    assert f"{train_csv} line 5: missing/file.png: file does not exist" in result.stderr
    assert "10x_0.3_extra.csv: missing required column(s)" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_resume_skips_an_unreadable_checkpoint(demo_root, tmp_path):
    first = run_script("myTrain.py", "--root_dir", demo_root, "--epochs", "2", *FAST, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    best = find_best_checkpoint(tmp_path / ".ckpts")
    best.write_bytes(best.read_bytes()[:1000])  # truncated, as by a full disk
    resumed = run_script("myTrain.py", "--root_dir", demo_root, "--epochs", "3", *FAST, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"cannot read checkpoint {best.relative_to(tmp_path)}" in resumed.stderr
    assert "trying the next newest checkpoint" in resumed.stderr
    # whichever epoch the best was, ckpt_0000.pt is the newest readable checkpoint
    assert "Resumed from .ckpts/ckpt_0000.pt: continuing at epoch 1" in resumed.stdout


@pytest.mark.slow
def test_sigkill_leaves_only_complete_checkpoints_and_rerun_resumes(demo_root, tmp_path):
    command = [sys.executable, str(ROOT / "myTrain.py"), "--root_dir", str(demo_root), "--epochs", "50", *FAST]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in process.stdout:
        if line.startswith("Epoch 1 (2/50)"):
            break
    time.sleep(0.7)
    process.kill()
    process.wait(timeout=30)
    for checkpoint in (tmp_path / ".ckpts").glob("ckpt_*.pt"):
        torch.load(checkpoint, weights_only=True)  # every file under a final name is complete
    assert scalar_steps(tmp_path / "runs" / "soaf")[:2] == [0, 1]

    # the kill may land in any epoch after the second: resume from the newest and train one more
    newest_epoch = torch.load(checkpoints_newest_first(tmp_path / ".ckpts", best_only=False)[0],
                              weights_only=True)["epoch"]
    epochs = newest_epoch + 2
    rerun = run_script("myTrain.py", "--root_dir", demo_root, "--epochs", epochs, "--resume_from", "latest", *FAST,
                       cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert "Resumed from" in rerun.stdout and f"Epoch {epochs - 1} ({epochs}/{epochs})" in rerun.stdout
    assert not list((tmp_path / ".ckpts").glob("*.tmp"))


def test_interrupted_and_resumed_equals_straight_training(demo_root, tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    straight.mkdir(), split.mkdir()
    both = ("--root_dir", demo_root, "--resume_from", "latest", *FAST)
    train_in_process(straight, "--epochs", "2", *both, capsys=capsys)
    train_in_process(split, "--epochs", "1", *both, capsys=capsys)
    assert "continuing at epoch 1" in train_in_process(split, "--epochs", "2", *both, capsys=capsys)
    for tag in ("Loss/train", "Loss/val"):
        runs = [EventAccumulator(str(folder / "runs" / "soaf")) for folder in (straight, split)]
        for run in runs:
            run.Reload()
        assert [e.value for e in runs[0].Scalars(tag)] == [e.value for e in runs[1].Scalars(tag)]
    best = find_best_checkpoint(straight / ".ckpts").name
    assert find_best_checkpoint(split / ".ckpts").name == best
    for name in ("ckpt_0000.pt", best):
        weights = [torch.load(folder / ".ckpts" / name, weights_only=True)["model"] for folder in (straight, split)]
        for key in weights[0]:
            torch.testing.assert_close(weights[0][key], weights[1][key], rtol=0, atol=0)


@pytest.mark.parametrize("arguments, message", [
    (("--epochs", "0"), "--epochs: must be above 0"),
    (("--lr=-1e-3",), "--lr: must be above 0"),
    (("--lr", "nan"), "--lr: must be above 0"),
    (("--batch_size", "many"), "--batch_size: 'many' is not a whole number"),
    (("--num_workers", "-2"), "--num_workers: must be 0 or more"),
    (("--task", "both"), "--task: invalid choice: 'both'"),
])
def test_bad_arguments_are_refused(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        get_args_parser().parse_args(["--root_dir", "data", *arguments])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_early_stop_rule():
    assert not out_of_patience(epoch=9, best_epoch=5, patience=0)  # 0: never
    assert not out_of_patience(epoch=7, best_epoch=5, patience=3)
    assert out_of_patience(epoch=8, best_epoch=5, patience=3)


def test_a_run_that_ended_still_learning_is_told_apart(capsys):
    falling = [4.0 - 0.1 * epoch for epoch in range(12)]  # last quarter's best 2.9, before it 3.2
    assert still_falling(falling) == pytest.approx(0.3 / 3.2)
    settled = [1.0, 0.8, 0.7, 0.65, 0.64, 0.66, 0.63, 0.65, 0.64, 0.63, 0.64, 0.62]
    assert still_falling(settled) is None  # 1.6 % below: within the noise of a settled run
    assert still_falling(falling[:7]) is None  # too few epochs to tell
    say_if_still_learning(settled)
    assert capsys.readouterr().out == ""
    say_if_still_learning(falling)
    assert "9% below" in capsys.readouterr().out


@pytest.mark.slow
def test_schedule_config_and_images_reach_tensorboard(demo_root, tmp_path):
    result = run_script("myTrain.py", "--root_dir", demo_root, "--epochs", "3", *FAST, "--scheduler", "cosine",
                        "--warmup_epochs", "1", "--log_images_every", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    accumulator = EventAccumulator(str(tmp_path / "runs" / "soaf"), size_guidance={"images": 0, "tensors": 0})
    accumulator.Reload()
    learning_rates = [event.value for event in accumulator.Scalars("Learning Rate")]
    assert learning_rates == pytest.approx([1e-4 * 0.5, 1e-4, 1e-4 * 0.5])  # warm-up, then half a cosine to 0 at epoch 3
    assert [event.step for event in accumulator.Images("Validation images")] == [0, 2]
    assert len(accumulator.Tensors("config/text_summary")) == 1

    config = json.loads((tmp_path / ".ckpts" / "config.json").read_text())
    assert config["args"]["scheduler"] == "cosine" and config["args"]["seed"] == 0
    assert config["versions"]["torch"] == torch.__version__
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert config["git_commit"] == (commit or None)  # the code the run was made with


def test_same_seed_same_first_epoch(demo_root, tmp_path, capsys):
    losses = []
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        folder = tmp_path / name
        folder.mkdir()
        train_in_process(folder, "--root_dir", demo_root, "--epochs", "1", *FAST, "--seed", seed,
                         "--num_workers", "1", capsys=capsys)
        state = torch.load(folder / ".ckpts" / "ckpt_0000.pt", weights_only=True)
        losses.append((state["train_loss"], state["val_loss"]))
    assert losses[0] == losses[1] and losses[0] != losses[2]


def test_a_longer_schedule_on_resume_applies_from_the_first_resumed_epoch(demo_root, tmp_path, capsys):
    cosine = ("--root_dir", demo_root, *FAST, "--scheduler", "cosine", "--resume_from", "latest")
    train_in_process(tmp_path, *cosine, "--epochs", "2", capsys=capsys)
    resumed = train_in_process(tmp_path, *cosine, "--epochs", "6", capsys=capsys)
    start = int(re.search(r"continuing at epoch (\d+)", resumed).group(1))
    accumulator = EventAccumulator(str(tmp_path / "runs" / "soaf"))
    accumulator.Reload()
    rates = {event.step: event.value for event in accumulator.Scalars("Learning Rate")}
    expected = {epoch: 1e-4 * 0.5 * (1 + math.cos(math.pi * epoch / 6)) for epoch in range(start, 6)}
    assert {epoch: rates[epoch] for epoch in expected} == pytest.approx(expected)


def torchrun(*args, cwd):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(ROOT / "myTrain.py"), *map(str, args)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=400)


@pytest.mark.slow
def test_torchrun_two_processes_train_validate_and_resume(demo_root, tmp_path):
    trained = torchrun("--root_dir", demo_root, "--epochs", "2", *FAST, cwd=tmp_path)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert trained.stdout.count("Epoch 1 (2/2)") == 1, trained.stdout  # only rank 0 prints
    assert "x 2 processes" in trained.stdout

    # the validation loss both processes agreed on is the loss of the saved model on the whole split
    best = load_checkpoint(find_best_checkpoint(tmp_path / ".ckpts"))
    model = SOAFModel(pretrained=False)
    model.load_state_dict(best["model"])
    val_loader = build_loader(SOAFDataset(demo_root, "val"), 8, 0, torch.device("cpu"), shuffle=False)
    assert validation_epoch(model, val_loader, DefocusLoss(), torch.device("cpu")) == pytest.approx(
        best["val_loss"], rel=1e-4)

    resumed = torchrun("--root_dir", demo_root, "--epochs", "3", *FAST, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Resumed from" in resumed.stdout and resumed.stdout.count("Epoch 2 (3/3)") == 1
    assert "Epoch 0 (1/3)" not in resumed.stdout


@pytest.mark.slow
def test_threads_and_loader_processes_fit_the_cores_the_job_may_use(demo_root, tmp_path):
    """Confined to one core (as taskset, cgroup cpusets or SLURM do), training uses one compute
    thread and one loader process, whatever --num_workers asks, and says so first."""
    trained = subprocess.run([sys.executable, str(ROOT / "myTrain.py"), "--root_dir", str(demo_root), "--epochs", "1",
                              *FAST, "--num_workers", "2"],  # the last --num_workers counts
                             cwd=tmp_path, capture_output=True, text=True, timeout=300,
                             preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}))
    assert trained.returncode == 0, trained.stderr
    first_line = trained.stdout.splitlines()[0]
    assert "1 compute thread(s) and 1 loader process(es) per process for 1 usable CPU core(s)" in first_line


def test_one_sided_labels_are_warned_about(capsys):
    def split_with_labels(*labels):
        return SimpleNamespace(frame=pd.DataFrame({"defocus_label": labels}), target_column="defocus_label")

    assert training_labels(split_with_labels(0.5, 2.0, 3.0)).tolist() == [0.5, 2.0, 3.0]
    assert "same sign" in capsys.readouterr().err
    training_labels(split_with_labels(-0.5, 2.0))
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_resuming_with_the_other_head_is_refused_and_overwrites_nothing(demo_root, tmp_path):
    assert run_script("myTrain.py", "--root_dir", demo_root, "--epochs", "1", *FAST, cwd=tmp_path).returncode == 0
    before = {path.name: path.stat().st_mtime_ns for path in (tmp_path / ".ckpts").iterdir()}
    split = run_script("myTrain.py", "--root_dir", demo_root, "--head", "split", "--epochs", "2", *FAST, cwd=tmp_path)
    assert split.returncode != 0 and "Traceback" not in split.stderr
    assert "trained with --head signed, not split" in split.stderr
    assert {path.name: path.stat().st_mtime_ns for path in (tmp_path / ".ckpts").iterdir()} == before


def wait_for_line(process: subprocess.Popen, start: str) -> None:
    for line in process.stdout:
        if line.startswith(start):
            return
    raise AssertionError(f"the run ended before printing {start!r}: {process.stderr.read()}")


def last_finished_epoch(stderr: str, folder: Path) -> int:
    """The epoch a stopped run said it kept, checked against the file it named (relative to `folder`)."""
    found = re.search(r"The last finished epoch \((\d+)\) is in (\S+):", stderr)
    assert found, stderr
    assert torch.load(folder / found.group(2), weights_only=True)["epoch"] == int(found.group(1))
    return int(found.group(1))


@pytest.mark.slow
def test_sigterm_keeps_the_last_finished_epoch_and_resuming_it_is_the_uninterrupted_run(demo_root, tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    straight.mkdir(), stopped.mkdir()
    both = ("--root_dir", demo_root, "--epochs", 5, *FAST)
    straight_run = start_script("myTrain.py", *both, cwd=straight)
    try:  # the straight run goes on beside the stopped one, and ends whatever happens to that
        process = start_script("myTrain.py", *both, cwd=stopped)
        wait_for_line(process, "Epoch 1 (2/5)")
        process.send_signal(signal.SIGTERM)  # a preempted job, docker stop
        _, stderr = process.communicate(timeout=60)
    finally:
        straight_result = finish(straight_run)
    assert process.returncode == 128 + signal.SIGTERM and "Traceback" not in stderr, stderr
    assert straight_result.returncode == 0, straight_result.stderr
    assert "SIGTERM received: stopping at the next batch" in stderr
    epoch = last_finished_epoch(stderr, stopped)
    assert epoch < 4 and not list((stopped / ".ckpts").glob("*.tmp"))
    resumed = run_script("myTrain.py", *both, "--resume_from", "latest", cwd=stopped)
    assert resumed.returncode == 0 and f"continuing at epoch {epoch + 1}" in resumed.stdout, resumed.stderr
    for tag in ("Loss/train", "Loss/val"):  # the writer was closed properly, and the same run went on
        runs = [EventAccumulator(str(folder / "runs" / "soaf")) for folder in (straight, stopped)]
        for run in runs:
            run.Reload()
        assert [(e.step, e.value) for e in runs[0].Scalars(tag)] == [(e.step, e.value) for e in runs[1].Scalars(tag)]
    best = find_best_checkpoint(straight / ".ckpts")
    weights = [torch.load(folder / ".ckpts" / best.name, weights_only=True)["model"] for folder in (straight, stopped)]
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGUSR1])
def test_ctrl_c_in_a_background_run_and_sigusr1_stop_it_cleanly(demo_root, tmp_path, signum):
    """Started in the background from a script, a run inherits SIGINT as ignored; SLURM sends SIGUSR1."""
    def as_in_the_background():
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    process = start_script("myTrain.py", "--root_dir", demo_root, "--epochs", 50, *FAST, cwd=tmp_path,
                           preexec_fn=as_in_the_background)
    wait_for_line(process, "Epoch 0 (1/50)")
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signum and "Traceback" not in stderr, stderr
    assert last_finished_epoch(stderr, tmp_path) >= 0 and "rerun the same command to resume" in stderr


def child_pids(pid: int) -> list[int]:
    return [int(child) for child in (Path("/proc") / str(pid) / "task" / str(pid) / "children").read_text().split()]


@pytest.mark.slow
def test_a_loader_process_that_dies_is_named_with_what_to_try_and_resuming_works(demo_root, tmp_path):
    process = start_script("myTrain.py", "--root_dir", demo_root, "--epochs", 50, *FAST, "--num_workers", 1,
                           cwd=tmp_path)
    wait_for_line(process, "Epoch 0 (1/50)")
    loaders = child_pids(process.pid)
    assert loaders
    for pid in loaders:
        os.kill(pid, signal.SIGKILL)  # as the out-of-memory killer does
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1 and "Traceback" not in stderr, stderr
    assert "an image-loading process died" in stderr and "fewer --num_workers (this run: 1)" in stderr
    epoch = last_finished_epoch(stderr, tmp_path)
    resumed = run_script("myTrain.py", "--root_dir", demo_root, "--epochs", epoch + 2, "--resume_from", "latest",
                         *FAST, cwd=tmp_path)
    assert resumed.returncode == 0 and f"continuing at epoch {epoch + 1}" in resumed.stdout, resumed.stderr


@pytest.mark.slow
def test_an_image_unreadable_mid_run_is_named_with_its_csv_line(demo_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    rows = SOAFDataset(root, "train").frame
    process = start_script("myTrain.py", "--root_dir", root, "--epochs", 50, *FAST, cwd=tmp_path)
    wait_for_line(process, "Epoch 0 (1/50)")
    (root / rows["image_path"].iat[3]).write_bytes(b"the share dropped")  # a file replaced mid-run
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1 and "Traceback" not in stderr, stderr
    assert f"{rows['csv_file'].iat[3]} line {rows['csv_line'].iat[3]}: cannot decode image" in stderr
    assert last_finished_epoch(stderr, tmp_path) >= 0
    assert scalar_steps(tmp_path / "runs" / "soaf")[0] == 0  # the writer was closed


class FullDisk:
    """A checkpoint file whose write runs out of space halfway, as on a full disk."""

    def __init__(self, handle):
        self.handle = handle

    def write(self, data: bytes):
        self.handle.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        self.handle.close()


def test_a_full_disk_removes_the_failed_write_and_says_what_it_needs(demo_root, tmp_path, monkeypatch, capsys):
    def open_on_a_full_disk(path, mode="r", *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)
        return FullDisk(handle) if Path(path).name.startswith("ckpt_best_") else handle

    monkeypatch.setattr(checkpoints, "open", open_on_a_full_disk, raising=False)
    arguments = get_args_parser().parse_args(["--root_dir", str(demo_root), "--epochs", "2", *FAST])
    with pytest.raises(SystemExit) as stopped:
        in_folder(tmp_path, cli.run, main, arguments)  # epoch 0 writes ckpt_0000.pt, then its best fails
    message = str(stopped.value.code)
    assert message.startswith("error: cannot write .ckpts/ckpt_best_0000.pt (No space left on device): it needs")
    assert "the newest intact checkpoint is ckpt_0000.pt" in message and "run the same command to resume" in message
    assert sorted(path.name for path in (tmp_path / ".ckpts").iterdir()) == ["ckpt_0000.pt", "config.json"]
    monkeypatch.undo()
    assert "continuing at epoch 1" in train_in_process(tmp_path, *arguments_of(arguments), capsys=capsys)


def arguments_of(namespace) -> list[str]:
    return ["--root_dir", str(namespace.root_dir), "--epochs", str(namespace.epochs), *FAST]


def test_a_filling_disk_is_warned_about_before_it_is_full(tmp_path, monkeypatch, capsys):
    saver = checkpoints.CheckpointSaver(tmp_path)
    monkeypatch.setattr("shutil.disk_usage", lambda folder: SimpleNamespace(free=2 * 2**20))
    saver.save_epoch(0, 1.0, {"weights": torch.zeros(2**18)})  # about 1 MiB
    assert "room for 1 more checkpoint(s) of 1.0 MiB" in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_every_process_without_a_hang(demo_root, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(ROOT / "myTrain.py"), "--root_dir", str(demo_root), "--epochs", "50", *FAST]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    wait_for_line(process, "Epoch 0 (1/50)")
    process.send_signal(signal.SIGTERM)  # torchrun passes it on to both processes
    _, stderr = process.communicate(timeout=120)  # a process left waiting in a collective would hang here
    assert process.returncode != 0
    assert stderr.count("The last finished epoch (") == 1, stderr  # written once, by the first process
    assert last_finished_epoch(stderr, tmp_path) >= 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # tensorboard's writer thread
def test_a_full_disk_under_the_tensorboard_folder_is_named(demo_root, tmp_path, monkeypatch):
    from tensorboard.summary.writer import record_writer

    def write_on_a_full_disk(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(record_writer.RecordWriter, "write", write_on_a_full_disk)
    arguments = get_args_parser().parse_args(["--root_dir", str(demo_root), "--epochs", "2", *FAST])
    with pytest.raises(SystemExit) as stopped:
        in_folder(tmp_path, cli.run, main, arguments)
    assert str(stopped.value.code).startswith("error: cannot write runs/soaf (No space left on device);")
    for thread in threading.enumerate():  # the writer's thread reports its failed write before the test ends
        if type(thread).__name__ == "_AsyncWriterThread":
            thread.join(timeout=30)
