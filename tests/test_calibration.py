"""The calibration sample and the meaning of contamination.

The held-out images must be a uniformly random subset of the images fitted,
whatever their order; ``contamination`` is the fraction of *new* normal
images that ``predict`` flags.
"""

import numpy as np
import pytest
from scipy import stats

from skpadim import PadimDetector
from skpadim._engine.calibration import CAPACITY, CalibrationSample, n_held_out, offset_for

from conftest import SMALL, textured


def _stream(n, seed, batch=32, order=None):
    """Held-out ids after streaming n images in batches, keys from one generator."""
    rng = np.random.default_rng(seed)
    order = np.arange(n) if order is None else order
    sample = CalibrationSample()
    for start in range(0, n, batch):
        ids = order[start:start + batch]
        sample.offer(rng.random(len(ids)), start, lambda j, ids=ids: int(ids[j]))
    return sample


@pytest.mark.parametrize("n", [30, 64, 200])
def test_held_out_images_are_uniform_over_seeds(n):
    """Every image is held out equally often, the 40th-63rd of 200 and the last of 30 too."""
    k, seeds = n_held_out(n), 3000
    counts = np.zeros(n)
    for seed in range(seeds):
        items, ids = _stream(n, seed).held_out(n)
        assert len(set(items)) == k == len(ids)
        counts[items] += 1
    expected = seeds * k / n
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert stats.chi2.sf(chi2, n - 1) > 1e-3, (counts.min(), counts.max(), expected)
    assert counts.min() > 0.7 * expected


def test_held_out_images_do_not_depend_on_input_order():
    """The same keys pick the same *positions*, so reversing the input changes the images."""
    n = 50
    forward = _stream(n, seed=1).held_out(n)[0]
    backward = _stream(n, seed=1, order=np.arange(n)[::-1]).held_out(n)[0]
    assert sorted(forward) != sorted(backward)
    assert sorted(n - 1 - np.array(forward)) == sorted(backward)


@pytest.mark.parametrize("batches", [[200], [1] * 200, [7, 64, 65, 64]])
def test_the_sample_does_not_depend_on_the_batches(batches):
    keys = np.random.default_rng(5).random(200)
    ref = CalibrationSample()
    ref.offer(keys, 0, lambda j: j)
    sample, start = CalibrationSample(), 0
    for b in batches:
        sample.offer(keys[start:start + b], start, lambda j, s=start: s + j)
        start += b
    np.testing.assert_array_equal(sample.keys, ref.keys)
    np.testing.assert_array_equal(sample.ids, ref.ids)
    assert sample.items == ref.ids.tolist()
    assert len(sample) == CAPACITY and np.all(np.diff(sample.keys) >= 0)
    np.testing.assert_array_equal(sample.keys, np.sort(keys)[:CAPACITY])


def test_merging_samples_equals_one_stream():
    keys = np.random.default_rng(6).random(150)
    one, a, b = CalibrationSample(), CalibrationSample(), CalibrationSample()
    one.offer(keys, 0, lambda j: j)
    a.offer(keys[:90], 0, lambda j: j)
    b.offer(keys[90:], 0, lambda j: 90 + j)
    merged = a.merged(b, id_offset=90)
    np.testing.assert_array_equal(merged.keys, one.keys)
    np.testing.assert_array_equal(merged.ids, one.ids)
    assert merged.items == one.items
    assert len(a) == CAPACITY  # the inputs are left as they were
    with pytest.raises(ValueError, match="sorted"):
        CalibrationSample(keys=[0.5, 0.1], ids=[0, 1], items=[0, 1])


# ----------------------------------------------------------- contamination


@pytest.mark.parametrize("c", [0.05, 0.1, 0.25, 0.5])
def test_contamination_is_the_fraction_of_new_normal_images_flagged(c):
    """With exchangeable scores, the offset flags a fraction c of new ones on average."""
    rng = np.random.default_rng(0)
    reps, k, m = 2000, 64, 200
    flagged = np.empty(reps)
    for r in range(reps):
        calibration, fresh = rng.standard_normal(k), rng.standard_normal(m)
        flagged[r] = np.mean(fresh < offset_for(calibration, c))
    # Mean of 2000 fractions: normal, its spread estimated from the repetitions.
    half = 3.3 * flagged.std(ddof=1) / np.sqrt(reps)
    assert abs(flagged.mean() - c) < half + 1e-3, (flagged.mean(), c, half)


def test_too_small_a_contamination_warns_and_uses_the_lowest_score():
    scores = np.arange(8.0)
    with pytest.warns(UserWarning, match=r"contamination=0.05 asks to flag fewer .* 8 held-out .*1 in 9"):
        assert offset_for(scores, 0.05) == 0.0
    assert offset_for(scores, 1 / 9) == 0.0  # exactly rank 1: no warning needed
    assert offset_for(scores, 0.5) == pytest.approx(3.5)


@pytest.fixture(scope="module")
def big():
    """k = 64 held-out images (320 fitted) and 400 fresh normal ones."""
    det = PadimDetector(**{**SMALL, "batch_size": 32}).fit(textured(320, seed=3))
    return det, det.score_samples(textured(400, seed=4))


@pytest.mark.parametrize("c", [0.1, 0.2, 0.3])
def test_fresh_normal_images_are_flagged_at_the_contamination_rate(big, c):
    """The flagged fraction of fresh normal images lies in the interval the rule implies.

    Given the k calibration scores, the count flagged among m fresh images is
    binomial; over the draw of the calibration images, its rate follows
    Beta(c (k + 1), (1 - c) (k + 1)): the count is beta-binomial.
    """
    det, fresh = big
    k, m = len(det.calibration_scores_), len(fresh)
    assert k == CAPACITY
    flagged = int(np.sum(fresh < det.offset_for(c)))
    law = stats.betabinom(m, c * (k + 1), (1 - c) * (k + 1))
    lo, hi = law.ppf(0.0005), law.ppf(0.9995)
    assert lo <= flagged <= hi, (flagged / m, lo / m, hi / m)
    assert det.flagged_fraction(det.offset_for(c)) == pytest.approx(np.ceil(c * (k + 1) - 1) / k, abs=1 / k)


def test_recalibrate_equals_a_fit_with_that_contamination(big):
    det, fresh = big
    auto = det.offset_
    refit = PadimDetector(**{**SMALL, "batch_size": 32, "contamination": 0.2}).fit(textured(320, seed=3))
    assert det.offset_for(0.2) == refit.offset_
    assert det.offset_ == auto  # offset_for changes nothing
    det.recalibrate(0.2)
    try:
        assert det.offset_ == refit.offset_ and det.contamination == 0.2
        np.testing.assert_array_equal(det.predict(textured(20, seed=9)), refit.predict(textured(20, seed=9)))
    finally:
        det.recalibrate("auto")
    assert det.offset_ == auto


def test_threshold_api_validates_its_arguments(big):
    det, _ = big
    with pytest.raises(ValueError, match=r"The 'contamination' parameter of PadimDetector.offset_for must be "
                                         r"a str among \{'auto'\} or a float in the range \(0.0, 0.5\]. Got 0.7"):
        det.offset_for(0.7)
    with pytest.raises(ValueError, match=r"PadimDetector.recalibrate.*Got 'high'"):
        det.recalibrate("high")
    before = det.offset_
    with pytest.raises(ValueError, match=r"offset_ must be a finite float, got nan"):
        det.offset_ = float("nan")
    assert det.offset_ == before


# ------------------------------------------------------------ the detector


def test_the_detector_holds_out_a_random_subset():
    X = textured(40, seed=8)
    held = []
    for seed in range(4):
        det = PadimDetector(**{**SMALL, "random_state": seed}).fit(X)
        held.append(sorted(det._state.sample.held_out(40)[1].tolist()))
    assert all(len(h) == 8 for h in held)
    assert len({tuple(h) for h in held}) == 4  # a different subset for every seed
    assert held[0] != list(range(8))
    parts = PadimDetector(**SMALL)
    for chunk in (X[:5], X[5:23], X[23:]):
        parts.partial_fit(chunk)
    assert sorted(parts._state.sample.held_out(40)[1].tolist()) == held[0]  # as one fit
