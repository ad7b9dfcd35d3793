"""Ctrl-C and kill -9 against training and saving: real SIGINTs at random points leave the
state before an update or after it (resume is bitwise), a Ctrl-C during the final save lets it
finish, and the temporaries of killed saves are removed by the next save in their folder."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import rnncore
from rnncore import checkpoint
from rnncore._interop import deferred_interrupts
from rnncore.apps import common
from rnncore.apps.cli import main

PYTHON_DIR = str(Path(rnncore.__file__).resolve().parent.parent)

# One process: a whole run without signals, then the same run under a storm of real SIGINTs
# sent by a thread of the process at random moments, resumed from its checkpoint after each.
# A tiny language model with dropout (its generator's state matters), Adam and a cosine
# schedule (their state too); train_loop's finish() saves the checkpoint.
STORM = textwrap.dedent("""
    import os, signal, sys, threading, time
    import numpy as np
    from rnncore.apps.common import train_loop
    from rnncore.models.lm import LanguageModel
    from rnncore.train import checkpoint
    from rnncore.train.losses import cross_entropy
    from rnncore.train.optim import Adam, CosineWarmup, clip_grad_norm

    folder, steps, min_signals = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    data = np.random.default_rng(0).integers(0, 11, (16, 10, 4))

    def build():
        model = LanguageModel(11, embed=4, hidden=8, layers=1, cell="lstm", dropout=0.1, seed=0)
        opt = Adam(model, lr=1e-2)
        return model, opt, CosineWarmup(opt, warmup_steps=5, total_steps=steps, min_lr=1e-3)

    def attempt(path):
        model, opt, sched = build()
        start = checkpoint.restore(path, model, opt, sched).step if os.path.exists(path) else 0

        def update(step):
            tokens = data[step % len(data)]
            logits, _ = model.forward(tokens[:-1])
            loss, dlogits = cross_entropy(logits, tokens[1:])
            model.zero_grad()
            model.backward(dlogits)
            clip_grad_norm(model, 1.0)
            opt.step()
            sched.step()
            return loss

        def finish(end):
            checkpoint.save(path, model, opt, sched, step=end.step)

        return train_loop(update, steps, start=start, interruptible=True, finish=finish)

    whole = attempt(os.path.join(folder, "whole.safetensors"))
    per_update = whole.seconds / steps

    class Sender(threading.Thread):
        def __init__(self, rng):
            super().__init__(daemon=True)
            self.delays = rng.uniform(0, 4 * per_update, rng.integers(1, 4))
            self.stopped, self.sent = threading.Event(), 0

        def run(self):
            for delay in self.delays:
                if self.stopped.wait(delay):
                    return
                os.kill(os.getpid(), signal.SIGINT)
                self.sent += 1

    rng = np.random.default_rng(1)
    path = os.path.join(folder, "stormed.safetensors")
    sent = attempts = 0
    while True:
        try:
            if os.path.exists(path) and checkpoint.load(path).step == steps and sent >= min_signals:
                break
            if os.path.exists(path) and checkpoint.load(path).step == steps:
                os.unlink(path)   # again from the start until enough signals were sent
            sender = Sender(rng)
            attempts += 1
            try:
                sender.start()
                try:
                    attempt(path)
                finally:
                    sender.stopped.set()
                    sender.join()
                    sent += sender.sent
            except KeyboardInterrupt:
                pass
        except KeyboardInterrupt:
            pass
    print(f"signals {sent} attempts {attempts}")
""")


def test_resume_is_bitwise_after_hundreds_of_real_sigints(tmp_path):
    """300+ SIGINTs at random moments (within ~4 updates of an attempt's start: in restore,
    updates, the progress, the final save); every attempt resumes from the checkpoint the last
    one left. The end state (model, optimiser, schedule, step) equals the run never interrupted.
    Without the loop's holding of SIGINT (the optimiser stepped, the counter not), resumes
    repeat an update and the models differ."""
    script = tmp_path / "storm.py"
    script.write_text(STORM)
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(script), str(tmp_path), "30", "300"], env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    sent = int(done.stdout.split()[1])
    assert sent >= 300, done.stdout
    whole = checkpoint.load(tmp_path / "whole.safetensors")
    stormed = checkpoint.load(tmp_path / "stormed.safetensors")
    assert whole.step == stormed.step == 30
    for k, v in whole.model.items():
        np.testing.assert_array_equal(stormed.model[k], v, err_msg=k)
    for name, buffers in whole.optimizer["state"].items():
        for b, a in buffers.items():
            np.testing.assert_array_equal(stormed.optimizer["state"][name][b], a)
    assert stormed.optimizer["step"] == whole.optimizer["step"]
    assert stormed.scheduler == whole.scheduler and stormed.module_rngs == whole.module_rngs


def _sigint_self():
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.01)  # the handler runs here, in the main thread


def test_deferred_interrupts_hold_sigint_until_the_block_ends():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            _sigint_self()
            done.append("after the signal")
            with deferred_interrupts():  # nested: the outer block delivers
                _sigint_self()
            done.append("nested block ended")
    assert done == ["after the signal", "nested block ended"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_train_loop_never_splits_an_update_and_finishes_the_save():
    """A SIGINT sent inside update(3) ends the loop after update 3 (interruptible); finish()
    still runs, and a SIGINT inside finish() lets it complete, then raises."""
    counters = []

    def update(step):
        if step == 3:
            _sigint_self()
        counters.append(step)
        return 0.0

    ended = []
    end = common.train_loop(update, 10, interruptible=True, finish=ended.append)
    assert counters == [1, 2, 3] and end.step == 3 and end.interrupted and ended == [end]

    def finish(end):
        _sigint_self()
        ended.append("saved")

    with pytest.raises(KeyboardInterrupt):
        common.train_loop(lambda step: 0.0, 2, finish=finish)
    assert ended[-1] == "saved"


def test_ctrl_c_during_the_final_save_of_train_lm_keeps_the_run(tmp_path, monkeypatch,
                                                                capsys):
    """The issue's lost run: SIGINT arriving inside checkpoint.save (here: as its temporary file
    is written). The save completes, the command says it was interrupted (status 130) and the
    checkpoint resumes."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("def f(x):\n    return x + 1\n" * 300)
    write = checkpoint._atomic_write

    def interrupted_write(path, blob):
        _sigint_self()
        return write(path, blob)

    monkeypatch.setattr(checkpoint, "_atomic_write", interrupted_write)
    flags = ["train", "lm", "--corpus", str(corpus), "--embed", "4", "--hidden", "8",
             "--layers", "1", "--batch", "4", "--bptt", "8", "--eval-every", "100",
             "--eval-chars", "64", "--threads", "1", "--no-progress", "--out", str(tmp_path)]
    assert main(flags + ["--steps", "5"]) == 130
    assert "interrupted" in capsys.readouterr().err
    ck = checkpoint.load(tmp_path / "lm.safetensors")
    assert ck.step == 5
    monkeypatch.setattr(checkpoint, "_atomic_write", write)
    assert main(flags + ["--steps", "7", "--out", str(tmp_path / "more"),
                         "--resume", str(tmp_path / "lm.safetensors")]) in (0, 1)
    assert checkpoint.load(tmp_path / "more" / "lm.safetensors").step == 7


KILLED_SAVE = textwrap.dedent("""
    import os, sys, time
    import rnncore
    from rnncore.train import checkpoint
    def hang(*args):   # the temporary file is written and fsync'ed; the rename never comes
        print("written", flush=True)
        time.sleep(600)
    os.replace = hang
    checkpoint.save(sys.argv[1], rnncore.LSTM(3, 4))
""")


def test_next_save_removes_the_temporaries_of_killed_saves_and_nothing_else(tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(KILLED_SAVE)
    folder = tmp_path / "run"
    folder.mkdir()
    target = folder / "model.safetensors"
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR)
    seen = []
    for _ in range(2):  # the second killed save removes the first one's temporary
        child = subprocess.Popen([sys.executable, str(script), str(target)], env=env,
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "written"
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        stale = [p.name for p in folder.iterdir()]
        assert len(stale) == 1 and stale[0].startswith(".model.safetensors."), stale
        seen += stale
    assert seen[0] != seen[1]
    # not ours to remove: other files, and a temporary of a writer that is still alive
    keep = [".model.safetensors.tmp", "notes.tmp", ".model.safetensors.abc.tmp",
            f".other.{os.getppid()}.0123456789ab.tmp", "model.safetensors.0123456789ab.tmp"]
    for name in keep:
        (folder / name).write_text("x")
    checkpoint.save(folder / "other.safetensors", rnncore.GRU(2, 3))
    assert sorted(p.name for p in folder.iterdir()) == sorted(keep + ["other.safetensors"])
    assert not target.exists()
