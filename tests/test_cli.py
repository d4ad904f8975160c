"""cli.py: argument types refuse what is not positive or a probability by name; a failed write names the
file and the space left; `run` turns a UserError into a message and exit code 1, Ctrl-C into 130."""
import argparse
import errno

import pytest

from autofocuskit.cli import UserError, message_of, positive, probability, run, writing


@pytest.mark.parametrize("kind, text, message", [
    (int, "2.5", "not a whole number"), (float, "abc", "not a number"), (float, "0", "above 0"),
    (float, "nan", "above 0"), (float, "inf", "above 0"), (int, "-1", "above 0")])
def test_positive_refuses_by_name(kind, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        positive(kind)(text)


def test_positive_and_probability_take_what_they_promise():
    assert positive(int)("3") == 3 and positive(float, allow_zero=True)("0") == 0.0
    assert probability("0.8") == 0.8
    with pytest.raises(argparse.ArgumentTypeError, match="below 1"):
        probability("1")


def test_a_failed_write_names_the_file_and_the_space_left(tmp_path):
    target = tmp_path / "ckpt.pt"
    with pytest.raises(UserError, match=r"cannot write .*ckpt.pt \(No space left on device\); [\d.]+ MiB are free"):
        with writing(target):
            raise OSError(errno.ENOSPC, "No space left on device")


def test_run_turns_a_user_error_into_a_message_and_ctrl_c_into_130(capsys):
    def fails(args):
        raise UserError("file x.csv line 3: bad value")

    with pytest.raises(SystemExit, match="error: file x.csv line 3: bad value"):
        run(fails, None)

    def interrupted(args):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stopped:
        run(interrupted, None, "Stopped.")
    assert stopped.value.code == 130 and "Stopped." in capsys.readouterr().err


def test_a_loader_workers_traceback_keeps_its_last_line():
    error = RuntimeError("Caught UserError in DataLoader worker process 0.\nTraceback ...\n"
                         "autofocuskit.cli.UserError: cannot read image a.png")
    assert message_of(error) == "cannot read image a.png"
