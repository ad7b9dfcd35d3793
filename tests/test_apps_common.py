"""What the training programs share (rnncore.apps.common): the common flags with each app's
defaults, and the one training loop (evaluation schedule, start/stop, Ctrl-C)."""
import argparse

import pytest

from rnncore.apps import common


def test_common_flags_take_the_apps_defaults_and_help():
    ap = argparse.ArgumentParser()
    common.add_common_arguments(ap, dict(steps=7, lr=0.5, out="here", no_progress=True),
                                helps={"lr": "the rate"})
    args = ap.parse_args([])
    assert (args.steps, args.lr, args.out, args.no_progress) == (7, 0.5, "here", False)
    assert not hasattr(args, "batch")  # only the flags named
    helps = {a.dest: a.help for a in ap._actions}
    assert helps["steps"] == "updates (default 7)" and helps["lr"] == "the rate"
    assert helps["out"] == "folder for the checkpoint (default ./here)"
    with pytest.raises(ValueError, match="not common flags"):
        common.add_common_arguments(argparse.ArgumentParser(), {"stepz": 1})


@pytest.mark.parametrize("eval_every, eval_last, start, expected", [
    (3, True, 0, [3, 6, 8]),
    (3, False, 0, [3, 6]),
    (4, False, 0, [4]),       # the last update (8) is a multiple, and still left out
    (0, True, 0, [8]),
    (3, True, 5, [6, 8]),     # resumed at update 5
])
def test_train_loop_evaluates_on_schedule(eval_every, eval_last, start, expected, capsys):
    updates, evaluated = [], []

    def evaluate(step, loss, seconds):
        evaluated.append(step)
        return f"line {step} {loss}"

    end = common.train_loop(lambda step: updates.append(step) or 10.0 * step, 8, start=start,
                            evaluate=evaluate, eval_every=eval_every, eval_last=eval_last)
    assert updates == list(range(start + 1, 9)) and evaluated == expected
    assert end.step == 8 and not end.interrupted
    assert capsys.readouterr().out.split("\n")[:-1] == [f"line {s} {10.0 * s}" for s in expected]


def test_train_loop_stops_cleanly_on_ctrl_c_only_when_interruptible():
    def update(step):
        if step == 4:
            raise KeyboardInterrupt
        return 0.0

    end = common.train_loop(update, 10, interruptible=True)
    assert end.interrupted and end.step == 3  # the last whole update
    with pytest.raises(KeyboardInterrupt):
        common.train_loop(update, 10)


def test_target_reports_the_first_update_that_reached_it():
    target = common.Target(0.9, ".0%")
    assert target.after(10, 2.0) == "after 10 updates (2 s)"
    for step, score in ((1, 0.5), (2, 0.95), (3, 0.99)):
        target.check(score, step, step * 0.5)
    assert target.after(10, 2.0) == "after 10 updates (2 s); 90% first reached at update 2 (1.0 s)"
    assert target.verdict(0.95) == "target 90% reached" and target.exit_code(0.95) == 0
    assert target.verdict(0.5) == "target 90% NOT reached" and target.exit_code(0.5) == 1
