"""Reliability: one module used from several threads, allocation failure, Ctrl-C during a long
call, construction memory, other float dtypes, messages that quote what the caller passed, and
the warning for cells that pile up pending steps.

Whatever could crash the process runs in a subprocess, so a crash fails one test instead of
ending the run."""
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
import warnings

import numpy as np
import pytest

import rnncore
from conftest import CELLS, UNDER_ASAN, make_cell, make_module






def run_python(code, timeout=120, **kwargs):
    """Runs code in a fresh interpreter; returns the CompletedProcess (stdout, stderr, returncode)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def assert_clean_exit(proc):
    assert proc.returncode == 0, (f"exit code {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
                                  f"stderr:\n{proc.stderr[-3000:]}")


# ---- 1. one module, several threads ----------------------------------------------------------

def test_one_module_used_from_several_threads_is_serialised_and_correct():
    """Threads run training forwards (different T) and backwards on the SAME module while another
    toggles eval()/train(): no crash; every output and every gradient that is returned equals the
    single-threaded result for that input; a backward whose forward was replaced by another
    thread's raises RuntimeError instead of computing through the wrong sequence."""
    proc = run_python("""
        import copy, threading, numpy as np, rnncore
        rng = np.random.default_rng(0)
        failures, refused, done = [], [0], [0]
        for cls in (rnncore.LSTM, rnncore.GRU, rnncore.RNN):
            m = cls(8, 32, num_layers=2, seed=0)
            xs = {T: rng.standard_normal((T, 4, 8)).astype(np.float32) for T in (3, 17, 40)}
            expect = {}
            for T, x in xs.items():
                ref = copy.deepcopy(m)
                y, _ = ref(x)
                dx, _ = ref.backward(np.ones_like(y))
                expect[T] = (y, dx)
            stop = threading.Event()

            def trainer(k):
                for i in range(60):
                    T = (3, 17, 40)[(i + k) % 3]
                    y, _ = m(xs[T])
                    if not np.allclose(y, expect[T][0], rtol=1e-5, atol=1e-6):
                        failures.append(("y", cls.__name__, T))
                    try:
                        dx, _ = m.backward(np.ones_like(y))
                    except RuntimeError:
                        refused[0] += 1
                        continue
                    except ValueError:  # dy's shape no longer matches the (newer) forward's
                        refused[0] += 1
                        continue
                    if not np.allclose(dx, expect[T][1], rtol=1e-4, atol=1e-6):
                        failures.append(("dx", cls.__name__, T))
                    done[0] += 1

            def toggler():
                while not stop.is_set():
                    m.eval()
                    m.train()

            threads = [threading.Thread(target=trainer, args=(k,)) for k in range(3)]
            tog = threading.Thread(target=toggler)
            tog.start()
            for t in threads: t.start()
            for t in threads: t.join()
            stop.set(); tog.join()
        print("failures", failures)
        print("refused", refused[0], "done", done[0])
        assert not failures
        assert done[0] > 0
    """)
    assert_clean_exit(proc)


def test_cells_with_pending_steps_from_several_threads():
    """Two threads step the same training-mode cell and back-propagate their steps; a third uses
    an eval-mode cell (one shared inference workspace) concurrently: no crash, eval results
    exact, refused backwards are RuntimeErrors."""
    proc = run_python("""
        import threading, numpy as np, rnncore
        rng = np.random.default_rng(0)
        cell = rnncore.LSTMCell(8, 16, seed=0)
        infer = rnncore.GRUCell(8, 16, seed=1).eval()
        x = rng.standard_normal((4, 8)).astype(np.float32)
        expected = infer(x)
        bad = []

        def stepper():
            for _ in range(100):
                h = c = None
                state = None
                try:
                    for t in range(3):
                        state = cell(x, state)
                    for t in range(3):
                        cell.backward((np.ones_like(state[0]), np.zeros_like(state[1])))
                except RuntimeError:
                    pass

        def inferrer():
            for _ in range(300):
                if not np.array_equal(infer(x), expected):
                    bad.append(1)

        ts = [threading.Thread(target=stepper) for _ in range(2)] + [threading.Thread(target=inferrer)]
        for t in ts: t.start()
        for t in ts: t.join()
        assert not bad, len(bad)
        print("ok")
    """)
    assert_clean_exit(proc)


def test_different_modules_still_run_concurrently():
    """The per-module lock is per module: while one thread runs a long forward of module A, a
    short forward of module B in another thread completes."""
    big = rnncore.LSTM(1, 1024, seed=0).eval()
    small = rnncore.GRU(4, 8, seed=0)
    x_big = np.ones((1500, 1, 1), np.float32)
    import threading
    finished = {}

    def long_call():
        big(x_big)
        finished["big"] = time.perf_counter()

    t = threading.Thread(target=long_call)
    t.start()
    time.sleep(0.05)
    small(np.ones((3, 2, 4), np.float32))
    finished["small"] = time.perf_counter()
    t.join()
    assert finished["small"] < finished["big"]


# ---- 3. allocation failure --------------------------------------------------------------------

@pytest.mark.skipif(UNDER_ASAN, reason="AddressSanitizer reserves terabytes of address space, so "
                    "an address-space limit cannot be set under it")
def test_memory_error_instead_of_abort_under_an_address_space_limit():
    """Under an address-space limit a forward that cannot allocate its per-thread packed weights
    (inside the parallel region) raises MemoryError; the module works again once memory is there."""
    proc = run_python("""
        import resource, numpy as np, rnncore
        rnncore.set_num_threads(2)
        m = rnncore.LSTM(2048, 2048, seed=0).eval()    # 2 x 128 MiB of parameters + gradients
        x = np.ones((2, 1, 2048), np.float32)
        y_ok, _ = m(x)
        vm = int([l for l in open("/proc/self/status") if l.startswith("VmSize")][0].split()[1]) * 1024
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        for mode in ("eval", "train"):
            m.train(mode == "train")
            resource.setrlimit(resource.RLIMIT_AS, (vm + 32 * 2**20, hard))
            try:
                m(x)
                print("no error", mode)
            except MemoryError as e:
                print("MemoryError", mode, e)
            finally:
                resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        m.eval()
        y, _ = m(x)
        assert np.array_equal(y, y_ok)
        m.train()
        y, _ = m(x); m.backward(np.ones_like(y))
        print("usable")
    """)
    assert_clean_exit(proc)
    assert "MemoryError eval" in proc.stdout and "MemoryError train" in proc.stdout, proc.stdout
    assert "usable" in proc.stdout


@pytest.mark.skipif(UNDER_ASAN, reason="AddressSanitizer reserves terabytes of address space, so "
                    "an address-space limit cannot be set under it")
def test_memory_error_names_what_did_not_fit():
    """A MemoryError from the C++ engine names the buffer, its size in bytes and values, and the
    call with its shape (issue 20 item 7), where it used to say only `std::bad_alloc`."""
    proc = run_python("""
        import resource, numpy as np, rnncore
        rnncore.set_num_threads(1)
        m = rnncore.GRU(64, 64, seed=0)                  # training forward: a T*B-row workspace
        x = np.ones((4096, 64, 64), np.float32)          # 64 MiB of input; the stash is 3x that
        vm = int([l for l in open("/proc/self/status") if l.startswith("VmSize")][0].split()[1]) * 1024
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (vm + 96 * 2**20, hard))
        try:
            m(x)
            print("no error")
        except MemoryError as e:
            print("MemoryError:", e)
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    """)
    assert_clean_exit(proc)
    line = [l for l in proc.stdout.splitlines() if l.startswith("MemoryError:")]
    assert line, proc.stdout
    text = line[0]
    assert "rnncore could not allocate" in text and "bytes" in text and "values" in text, text
    assert "the training workspace" in text, text
    assert "Stack.forward (training) of gru: T=4096, B=64, I=64, H=64, 1 layer" in text, text


# ---- 4. Ctrl-C --------------------------------------------------------------------------------

SIGINT_CHILD = """
import copy, sys, time, numpy as np, rnncore

def report(what, t0):
    print(what, round(time.perf_counter() - t0, 3), flush=True)

def interruptible(label, call):
    print("ready", label, flush=True)
    t0 = time.perf_counter()
    try:
        call()
        report("finished", t0)
    except KeyboardInterrupt:
        report("interrupted", t0)

one = rnncore.LSTM(1, 2048, seed=0)        # ~1 ms per step at B=1 (W_hh streamed from memory)
two = rnncore.LSTM(1, 1024, bidirectional=True, seed=0)
fresh = copy.deepcopy(one)
xs = lambda T: np.ones((T, 1, 1), np.float32)

one.eval(); interruptible("eval", lambda: one(xs(10000)))
two.eval(); interruptible("bidirectional", lambda: two(xs(40000)))
one.train(); interruptible("train", lambda: one(xs(5000)))
y, _ = one(xs(2000))
interruptible("backward", lambda: one.backward(np.ones_like(y)))

# Still usable, and computing what a module that was never interrupted computes.
one.zero_grad()
xs_small = np.random.default_rng(0).standard_normal((6, 2, 1)).astype(np.float32)
for m in (one, fresh):
    m.train()
    yy, _ = m(xs_small)
    m.backward(np.ones_like(yy))
assert np.array_equal(one(xs_small)[0], fresh(xs_small)[0])
assert all(np.array_equal(one.grads[k], fresh.grads[k]) for k in one.grads)
print("usable", flush=True)
"""


def test_ctrl_c_interrupts_long_calls_promptly_and_leaves_the_module_usable():
    """SIGINT 0.3 s into each long call (eval, bidirectional eval, training forward, backward;
    each would take seconds) raises KeyboardInterrupt within a second of the signal (the calls
    poll about every 20 ms), and the module then computes exactly what a never-interrupted copy
    computes."""
    results, tail = {}, ""
    with subprocess.Popen([sys.executable, "-c", SIGINT_CHILD], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as p:
        try:
            for label in ("eval", "bidirectional", "train", "backward"):
                line = p.stdout.readline()
                assert line.startswith("ready " + label), (line, p.stderr.read() if p.poll() else "")
                time.sleep(0.3)
                p.send_signal(signal.SIGINT)
                outcome, seconds = p.stdout.readline().split()
                results[label] = (outcome, float(seconds))
            tail = p.stdout.read()
            p.wait(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
        stderr = p.stderr.read()
    assert p.returncode == 0, stderr
    assert "usable" in tail
    for label, (outcome, seconds) in results.items():
        assert outcome == "interrupted", (label, outcome, seconds)
        assert seconds < 0.3 + 1.0, (label, seconds)
    print(results)


# ---- 5. construction memory -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_construction_peaks_at_parameters_plus_gradients(dtype):
    """Parameters are drawn in the module's dtype, one array at a time: the peak traced memory of
    construction is the parameters and their gradients (plus a little), not 2-3 times that."""
    tracemalloc.start()
    try:
        m = rnncore.LSTM(64, 512, num_layers=2, dtype=dtype, seed=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    param_bytes = sum(p.nbytes for p in m.params.values())
    assert peak <= 2 * param_bytes + (1 << 20), (peak, param_bytes)


def test_float64_init_is_the_uniform_draw_it_always_was():
    m = rnncore.GRU(3, 5, dtype=np.float64, seed=7)
    rng = np.random.default_rng(7)
    k = 1 / np.sqrt(5)
    np.testing.assert_array_equal(m.params["weight_ih_l0"], rng.uniform(-k, k, (15, 3)))


@pytest.mark.parametrize("make", [lambda: rnncore.RNN(1, 2**31),
                                  lambda: rnncore.LSTM(2**20, 2**20, num_layers=4),
                                  lambda: rnncore.GRUCell(10, 2**30)])
def test_absurd_sizes_raise_memory_error_before_allocating(make):
    with pytest.raises(MemoryError, match=r"parameters: with their gradients that is .* GiB"):
        make()


# ---- 6. other float dtypes --------------------------------------------------------------------

def test_bfloat16_and_float16_tensors_are_converted():
    torch = pytest.importorskip("torch")
    m = rnncore.LSTM(4, 6, seed=0)
    x = torch.randn(5, 2, 4)
    h0 = torch.randn(1, 2, 6)
    for dt in (torch.bfloat16, torch.float16):
        xb, hb = x.to(dt), h0.to(dt)
        y, (h, c) = m(xb, (hb, hb))
        y32, _ = m(xb.float().numpy(), (hb.float().numpy(), hb.float().numpy()))
        np.testing.assert_array_equal(y, y32)
        assert y.dtype == np.float32
        dx, _ = m.backward(torch.ones(5, 2, 6, dtype=dt))
        assert dx.dtype == np.float32
        lengths = torch.tensor([5.0, 3.0], dtype=dt)
        m(xb, lengths=lengths)
        m.backward(np.zeros((5, 2, 6), np.float32))
    sd = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in m.state_dict().items()}
    m64 = rnncore.LSTM(4, 6, dtype=np.float64).load_state_dict(sd)
    for k, v in sd.items():
        np.testing.assert_array_equal(m64.params[k], v.float().numpy().astype(np.float64))
    cell = rnncore.GRUCell(4, 6, seed=0)
    cell(x[0].to(torch.bfloat16), h0[0].to(torch.bfloat16))


# ---- 7. messages ------------------------------------------------------------------------------

@pytest.mark.parametrize("lengths, shown", [
    (np.array([2**64 - 1, 1], np.uint64), "18446744073709551615"),
    (np.array([1e20, 1.0]), "1e+20"),
    (np.array([-3, 1], np.int8), "-3"),
    (np.array([7, 1], np.uint16), "7"),
])
def test_out_of_range_lengths_are_reported_as_passed(lengths, shown):
    m = rnncore.GRU(2, 3)
    with pytest.raises(ValueError, match=r"lengths\[0\] = " + re.escape(shown) + "$"):
        m(np.zeros((5, 2, 2), np.float32), lengths=lengths)


@pytest.mark.parametrize("value", [np.nan, np.inf, 2.5])
def test_non_whole_lengths_are_a_type_error_without_warnings(value):
    m = rnncore.GRU(2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TypeError, match=r"lengths must be whole numbers .* lengths\[1\] = "):
            m(np.zeros((5, 2, 2), np.float32), lengths=np.array([1.0, value]))


def test_load_state_dict_of_a_list_is_a_type_error():
    m = rnncore.GRU(2, 3)
    with pytest.raises(TypeError, match="state_dict must be a mapping .* got list"):
        m.load_state_dict(list(m.state_dict().items()))
    with pytest.raises(TypeError, match="weight_ih_l0 must be numeric"):
        m.load_state_dict({**m.state_dict(), "weight_ih_l0": np.full((9, 2), "a")})


# ---- 8. cells that pile up pending steps --------------------------------------------------------

@pytest.mark.parametrize("cell", CELLS)
def test_pending_steps_warn_once_past_the_limit(cell):
    c = make_cell(cell, 4, 8, seed=0)
    c.pending_warn_bytes = 1_000
    x = np.ones((2, 4), np.float32)
    state = None
    with pytest.warns(rnncore.PendingStepsWarning, match="training-mode forward steps"):
        for _ in range(40):
            state = c(x, state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c(x, state)  # once only
    assert c.pending_steps == 41
    c.clear_pending()
    assert c.pending_steps == 0
    with pytest.raises(RuntimeError, match="needs a preceding training-mode forward"):
        c.backward(np.ones((2, 8), np.float32) if state is None or not isinstance(state, tuple)
                   else (np.ones((2, 8), np.float32),) * 2)
