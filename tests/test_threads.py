"""One detector, several threads: exact results, loud failures, no settings changed.

These tests never set the process's torch thread count; they read it.
"""

import copy
import threading

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

import skpadim._engine.parallel as parallel
from skpadim import PadimDetector

from conftest import SMALL, textured

P = {**SMALL, "batch_size": 2}  # many batches per call: many chances to interleave
TEST = textured(12, seed=60)


@pytest.fixture(scope="module")
def det():
    return PadimDetector(**P).fit(textured(30, seed=61))


def _in_threads(n, fn):
    """Run ``fn(i)`` in n threads started together; return results, re-raise errors."""
    barrier = threading.Barrier(n)
    results, errors = [None] * n, []

    def run(i):
        try:
            barrier.wait()
            results[i] = fn(i)
        except BaseException as exc:  # handed to the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def _fresh_thread_count():
    out = []
    t = threading.Thread(target=lambda: out.append(torch.get_num_threads()))
    t.start()
    t.join()
    return out[0]


def test_four_threads_give_the_serial_results(det):
    X = [TEST[i::4] for i in range(4)]  # different images in every thread
    serial = [(det.score_samples(x), det.anomaly_map(x, return_scores=True)) for x in X]

    def work(i):
        return [(det.score_samples(X[i]), det.anomaly_map(X[i], return_scores=True)) for _ in range(3)]

    for i, rounds in enumerate(_in_threads(4, work)):
        for scores, (maps, map_scores) in rounds:
            np.testing.assert_array_equal(scores, serial[i][0])
            np.testing.assert_array_equal(maps, serial[i][1][0])
            np.testing.assert_array_equal(map_scores, serial[i][1][1])


def _held_in(thread_of, embedder, release, entered):
    """Make the fit thread wait in the backbone until ``release`` is set."""
    forward = embedder.forward

    def held(x):
        if threading.current_thread() is thread_of():
            entered.set()
            release.wait(60)
        return forward(x)

    embedder.forward = held


def test_predictions_alongside_partial_fit_use_one_state_or_the_other(det):
    mine = copy.deepcopy(det)
    more = textured(40, seed=62)
    before = mine.score_samples(TEST)
    after = copy.deepcopy(mine).partial_fit(more).score_samples(TEST)
    entered, release = threading.Event(), threading.Event()
    fitter = threading.Thread(target=mine.partial_fit, args=(more,))
    embedder = mine._state.embedder  # shared by the new state
    _held_in(lambda: fitter, embedder, release, entered)
    fitter.start()
    try:
        assert entered.wait(60)
        during = mine.score_samples(TEST)  # while the fit is half-way
    finally:
        release.set()
        fitter.join()
        del embedder.forward
    np.testing.assert_array_equal(during, before)  # the state it started with
    np.testing.assert_allclose(mine.score_samples(TEST), after, rtol=1e-6)
    assert mine.n_samples_seen_ == det.n_samples_seen_ + len(more)


def test_two_fit_calls_at_once_fail_loudly(det):
    mine = copy.deepcopy(det)
    entered, release = threading.Event(), threading.Event()
    fitter = threading.Thread(target=mine.partial_fit, args=(TEST,))
    embedder = mine._state.embedder
    _held_in(lambda: fitter, embedder, release, entered)
    fitter.start()
    try:
        assert entered.wait(60)
        for call in (mine.partial_fit, mine.fit):
            with pytest.raises(RuntimeError, match="already running on this PadimDetector in another thread"):
                call(TEST)
    finally:
        release.set()
        fitter.join()
        del embedder.forward
    assert mine.n_samples_seen_ == det.n_samples_seen_ + len(TEST)  # the first call completed


def test_predictions_during_a_refit_fail_rather_than_mix(det, monkeypatch):
    import skpadim._engine.fitting as fitting

    mine = copy.deepcopy(det)
    entered, release = threading.Event(), threading.Event()
    start = fitting.start

    def held_start(params, images, *args):
        entered.set()
        release.wait(60)
        return start(params, images, *args)

    monkeypatch.setattr(fitting, "start", held_start)
    fitter = threading.Thread(target=mine.fit, args=(textured(6, seed=63),))
    fitter.start()
    try:
        assert entered.wait(60)
        with pytest.raises(NotFittedError):  # fit starts from scratch: no half-old, half-new model
            mine.score_samples(TEST)
    finally:
        release.set()
        fitter.join()
    assert mine.n_samples_seen_ == 6


def test_torch_thread_settings_are_left_alone(det, monkeypatch):
    """Neither the caller's count, nor a new thread's default, during or after calls."""
    monkeypatch.setattr(parallel, "_pool", None)  # workers start during the calls below
    mine, default = torch.get_num_threads(), _fresh_thread_count()
    copied = copy.deepcopy(det)
    during = []
    forward = copied._state.embedder.forward

    def watching_forward(x):
        during.append(_fresh_thread_count())
        return forward(x)

    copied._state.embedder.forward = watching_forward
    copied.score_samples(TEST)
    copied.partial_fit(textured(8, seed=64))
    copied.anomaly_map(TEST)
    assert torch.get_num_threads() == mine and _fresh_thread_count() == default
    assert len(during) > 8 and set(during) == {default}


def test_concurrent_callers_keep_their_own_thread_counts(det):
    counts = [1, 2, 1, 2]
    default = _fresh_thread_count()

    def work(i):
        torch.get_num_threads()  # torch initializes a thread's count on first use ...
        torch.set_num_threads(counts[i])  # ... then this is the thread's own setting
        for _ in range(2):
            det.score_samples(TEST[:4])
        return torch.get_num_threads()

    try:
        assert _in_threads(4, work) == counts
    finally:  # torch.set_num_threads also sets the default of new threads: put it back
        t = threading.Thread(target=torch.set_num_threads, args=(default,))
        t.start()
        t.join()


def test_one_worker_pool_for_every_call(det):
    def workers():
        return {t for t in threading.enumerate() if t.name.startswith("skpadim-worker")}

    det.score_samples(TEST)
    first = workers()
    for _ in range(3):
        det.score_samples(TEST)
        det.anomaly_map(TEST[:3])
    assert workers() == first  # the same threads, none started per batch or per call


def test_the_allocator_is_left_alone():
    """The estimator never imports the allocator tuning; a program may call it for itself."""
    import subprocess
    import sys

    code = (
        "import sys; sys.path.insert(0, 'tests')\n"
        "from conftest import SMALL, textured\n"
        "from skpadim import PadimDetector\n"
        "det = PadimDetector(**SMALL).fit(textured(4)); det.score_samples(textured(2))\n"
        "assert 'skpadim._engine.heap' not in sys.modules\n"
        "from skpadim._engine.heap import tune_process_allocator\n"
        "print(tune_process_allocator())\n"
    )
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import platform

    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert proc.stdout.strip() == str(glibc)
