"""Data-parallel training on torch.distributed (gloo, CPU), two processes on 127.0.0.1 launched
by torchrun as docs/distributed.md describes: after N steps every rank's weights equal those of
one process training on the union of the ranks' batches, for DistributedDataParallel over a
model built from rnncore.torch layers and for rnncore's numpy layer with broadcast_parameters /
all_reduce_gradients. Skipped without torch.

Run as a script (python -m torch.distributed.run ... tests/test_distributed.py OUT), this file
is the worker; pytest runs the launcher and the single-process reference.
"""
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

import rnncore
from rnncore.losses import mse
from conftest import UNDER_ASAN  # tests/ is on the path, under pytest and as a torchrun script

torch = pytest.importorskip("torch", reason="PyTorch 2.13 is not installed: torch.distributed "
                                            "is the transport")

WORLD, LOCAL_B, STEPS = 2, 3, 4
T, I, H = 6, 3, 5
LAUNCH_TIMEOUT = 180  # seconds for torchrun, two interpreters importing torch, and the training



# ---- the two trainings, run by the workers (on their share) and the reference (on all) -----------
def batches(step):
    """The global batch of a step: (x (T, WORLD * LOCAL_B, I), target (T, WORLD * LOCAL_B, 1),
    lengths)."""
    g = np.random.default_rng(100 + step)
    B = WORLD * LOCAL_B
    lengths = g.integers(1, T + 1, B)
    return g.standard_normal((T, B, I)), g.standard_normal((T, B, 1)), lengths


class NumpyNet(rnncore.Model):
    def __init__(self, seed):
        super().__init__()
        self.rnn = rnncore.LSTM(I, H, num_layers=2, dtype=np.float64, seed=seed)
        self.head = rnncore.Linear(H, 1, dtype=np.float64, seed=seed)

    def forward(self, x, lengths):
        y, _ = self.rnn(x, lengths=lengths)
        return self.head(y)

    def backward(self, d):
        return self.rnn.backward(self.head.backward(d))


def train_numpy(model, rows, reduce=None):
    """STEPS of Adam on the mean squared error over the given batch rows."""
    opt = rnncore.optim.Adam(model, lr=0.05)
    for step in range(STEPS):
        x, target, lengths = batches(step)
        model.zero_grad()
        _, d = mse(model(x[:, rows], lengths[rows]), target[:, rows])
        model.backward(d)
        if reduce is not None:
            reduce(model)
        rnncore.optim.clip_grad_norm(model, 1.0)
        opt.step()
    return {k: v.copy() for k, v in model.params.items()}


class TorchNet(torch.nn.Module):
    """A bidirectional 2-layer rnncore.torch.GRU over packed sequences and a linear read-out of
    the last states."""

    def __init__(self, seed):
        import rnncore.torch as rt
        super().__init__()
        torch.manual_seed(seed)
        self.rnn = rt.GRU(I, H, num_layers=2, bidirectional=True, batch_first=True,
                          dtype=torch.float64)
        self.head = torch.nn.Linear(2 * H, 1, dtype=torch.float64)

    def forward(self, packed):
        _, h_n = self.rnn(packed)
        return self.head(torch.cat([h_n[-2], h_n[-1]], dim=1))


def train_torch(net, rows):
    """STEPS of torch's Adam on the mean squared error over the given batch rows; net may be
    the DistributedDataParallel wrapper."""
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for step in range(STEPS):
        x, target, lengths = batches(step)
        xb = torch.from_numpy(np.ascontiguousarray(x[:, rows].transpose(1, 0, 2)))
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            xb, torch.from_numpy(lengths[rows]), batch_first=True, enforce_sorted=False)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(net(packed), torch.from_numpy(target[-1, rows]))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
    module = getattr(net, "module", net)
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


# ---- the worker --------------------------------------------------------------------------------
def worker(out_dir):
    import datetime

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from rnncore.distributed import all_reduce_gradients, broadcast_parameters

    rnncore.set_num_threads(1)  # two processes on two cores
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    assert dist.get_world_size() == WORLD
    rows = np.arange(rank * LOCAL_B, (rank + 1) * LOCAL_B)

    # rnncore's numpy layer: each rank draws its own weights; rank 0's are broadcast
    model = NumpyNet(seed=rank)
    broadcast_parameters(model)
    numpy_result = train_numpy(model, rows, reduce=all_reduce_gradients)

    # rnncore.torch layers under DistributedDataParallel (which broadcasts rank 0's weights)
    ddp = DistributedDataParallel(TorchNet(seed=rank))
    torch_result = train_torch(ddp, rows)

    np.savez(os.path.join(out_dir, f"numpy_rank{rank}.npz"), **numpy_result)
    np.savez(os.path.join(out_dir, f"torch_rank{rank}.npz"), **torch_result)
    # An orderly shutdown: the DDP reducer (which holds the process group) goes first, and no
    # rank tears down its connections while the other still talks (gloo aborted rank 0 with
    # "terminate called without an active exception" once, in CI's sanitizer run, without this).
    del ddp
    dist.barrier()
    dist.destroy_process_group()


# ---- the test ----------------------------------------------------------------------------------
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(UNDER_ASAN, reason=(
    "not under the sanitizer run: torch's gloo with the ASan runtime preloaded aborted rank 0 once "
    "('terminate called without an active exception', CI 2026-11-29, not reproduced in 12 local "
    "runs); rnncore's calls in it are covered by the other tests there, and this test runs in "
    "the normal pass"))
def test_two_processes_train_like_one_process_on_the_union(tmp_path):
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
           f"--nproc-per-node={WORLD}", "--master-addr=127.0.0.1", f"--master-port={free_port()}",
           __file__, str(tmp_path)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its two workers
        log, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in {LAUNCH_TIMEOUT} s:\n{log[-3000:]}")
    assert proc.returncode == 0, log[-8000:]

    everything = np.arange(WORLD * LOCAL_B)
    expected = {
        "numpy": train_numpy(NumpyNet(seed=0), everything),
        "torch": train_torch(TorchNet(seed=0), everything),
    }
    start = {"numpy": NumpyNet(seed=0).params, "torch": TorchNet(seed=0).state_dict()}
    for kind, reference in expected.items():
        for rank in range(WORLD):
            got = np.load(tmp_path / f"{kind}_rank{rank}.npz")
            assert sorted(got.files) == sorted(reference)
            for name, value in reference.items():
                np.testing.assert_allclose(got[name], value, rtol=1e-9, atol=1e-11,
                                           err_msg=f"{kind} rank {rank}: {name}")
                assert not np.allclose(value, np.asarray(start[kind][name])), \
                    f"{kind}: {name} did not move in {STEPS} steps"


def test_helpers_need_a_process_group():
    from rnncore.distributed import all_reduce_gradients, broadcast_parameters
    model = NumpyNet(seed=0)
    for f in (broadcast_parameters, all_reduce_gradients):
        with pytest.raises(RuntimeError, match="init_process_group"):
            f(model)


def test_helpers_on_a_one_process_group(tmp_path):
    """The checks and the packing into buffers, without a second process."""
    import torch.distributed as dist

    from rnncore.distributed import all_reduce_gradients, broadcast_parameters
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        model = NumpyNet(seed=0)
        before = {k: v.copy() for k, v in model.params.items()}
        broadcast_parameters(model)
        for k, v in model.params.items():
            np.testing.assert_array_equal(v, before[k])
        for g in model.grads.values():
            g[...] = np.arange(g.size).reshape(g.shape)
        all_reduce_gradients(model, bucket_bytes=64)  # several buckets, some of one array
        for g in model.grads.values():
            np.testing.assert_array_equal(g, np.arange(g.size).reshape(g.shape))
        with pytest.raises(TypeError, match="DistributedDataParallel"):
            all_reduce_gradients(TorchNet(0))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    worker(sys.argv[1])
