"""scikit-learn conventions: its API-level checks, called one by one, and the outlier contract.

``check_estimator`` skips this estimator (it does not take 2-D arrays): the
checks below are the ones that do not need to fit on tabular data.
"""

import io
import pickle

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils import estimator_checks as ec
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from skpadim import PadimDetector

from conftest import SMALL, textured


def _with_defects(n_normal=16, n_bad=8, seed=0):
    X = textured(n_normal + n_bad, seed=seed)
    X[n_normal:, 8:20, 10:14] = 255  # a bright bar
    y = np.r_[np.zeros(n_normal, int), np.ones(n_bad, int)]
    return X, y


def _auroc_scorer(est, X, y):
    return roc_auc_score(y, -est.score_samples(X))


API_CHECKS = [
    ec.check_estimator_cloneable,
    ec.check_estimator_repr,
    ec.check_no_attributes_set_in_init,
    ec.check_parameters_default_constructible,
    ec.check_get_params_invariance,
    ec.check_set_params,
    ec.check_do_not_raise_errors_in_init_or_set_params,
    ec.check_mixin_order,
    ec.check_estimator_tags_renamed,
    ec.check_valid_tag_types,
    ec.check_param_validation,  # parameters are checked before the data
    ec.check_estimators_unfitted,  # NotFittedError comes before the data check
]


@pytest.mark.parametrize("check", API_CHECKS, ids=lambda c: c.__name__)
def test_scikit_learn_api_check(check):
    check("PadimDetector", PadimDetector(**SMALL))


def test_init_stores_params_and_does_no_work():
    det = PadimDetector(backbone="not-a-model", n_features=-3, device="nonsense")
    assert det.get_params()["backbone"] == "not-a-model"
    assert det.get_params()["n_features"] == -3
    assert not [k for k in vars(det) if k.endswith("_")]


def test_clone_and_params_round_trip(fitted):
    params = fitted.get_params()
    cloned = clone(fitted)
    assert cloned.get_params() == params
    assert not hasattr(cloned, "precision_")
    cloned.set_params(epsilon=0.5, sigma=2.0)
    assert cloned.epsilon == 0.5 and cloned.sigma == 2.0
    assert fitted.epsilon == params["epsilon"]


@pytest.mark.parametrize("method", ["score_samples", "decision_function", "predict", "anomaly_map"])
def test_not_fitted_error(images, method):
    with pytest.raises(NotFittedError):
        getattr(PadimDetector(**SMALL), method)(images)


def test_outlier_identities(fitted, images):
    X = textured(6, seed=9)
    scores = fitted.score_samples(X)
    assert scores.dtype == np.float64 and scores.shape == (6,)
    np.testing.assert_allclose(fitted.decision_function(X), scores - fitted.offset_)
    pred = fitted.predict(X)
    assert pred.dtype.kind == "i" and set(pred.tolist()) <= {-1, 1}
    np.testing.assert_array_equal(pred, np.where(scores < fitted.offset_, -1, 1))
    maps = fitted.anomaly_map(X)
    np.testing.assert_allclose(scores, -maps.max(axis=(1, 2)), rtol=1e-6)
    assert fitted.fit_predict(images).shape == (len(images),)


def test_defects_rank_worst():
    X, y = _with_defects()
    det = PadimDetector(**SMALL).fit(X[y == 0])
    assert roc_auc_score(y, -det.score_samples(X)) > 0.9
    maps = det.anomaly_map(X[y == 1])
    peak = np.array([np.unravel_index(m.argmax(), m.shape) for m in maps])
    assert np.all((peak[:, 0] >= 4) & (peak[:, 0] < 24) & (peak[:, 1] >= 6) & (peak[:, 1] < 20))


@pytest.mark.parametrize("contamination", [0.125, 0.25, 0.5])
def test_contamination_is_a_quantile_of_the_held_out_scores(contamination):
    det = PadimDetector(**{**SMALL, "contamination": contamination}).fit(textured(40, seed=2))
    cal = det.calibration_scores_
    assert len(cal) == 8
    # Rank c * (k + 1) of the k held-out scores (interpolated between order statistics).
    assert det.offset_ == pytest.approx(np.percentile(cal, 100 * contamination, method="weibull"))
    rank = contamination * (len(cal) + 1)
    assert np.sum(cal < det.offset_) == int(np.ceil(rank)) - 1
    assert det.flagged_fraction() == pytest.approx(np.mean(cal < det.offset_))


def test_auto_contamination_is_a_far_out_fence():
    det = PadimDetector(**SMALL).fit(textured(40, seed=2))
    a = -det.calibration_scores_
    q1, q3 = np.percentile(a, [25, 75])
    assert det.offset_ == pytest.approx(-(q3 + 3 * (q3 - q1)))
    assert np.all(det.predict(textured(10, seed=40)) == 1)


def test_fit_with_labels_uses_normal_images_only():
    X, y = _with_defects()
    a = PadimDetector(**SMALL).fit(X, y)
    b = PadimDetector(**SMALL).fit(X[y == 0])
    sk = PadimDetector(**SMALL).fit(X, np.where(y == 1, -1, 1))
    assert a.n_samples_seen_ == 16
    np.testing.assert_array_equal(a.precision_, b.precision_)
    np.testing.assert_array_equal(sk.precision_, b.precision_)


def test_fit_predict_with_labels_fits_like_fit():
    X, y = _with_defects()
    labels = PadimDetector(**SMALL).fit_predict(X, y)
    det = PadimDetector(**SMALL).fit(X, y)
    assert det.n_samples_seen_ == 16  # the defective images were not fitted
    np.testing.assert_array_equal(labels, det.predict(X))
    assert labels.shape == (len(X),)
    assert (labels[y == 1] == -1).mean() > (labels[y == 0] == -1).mean()


def test_partial_fit_equals_fit():
    X = textured(23, seed=4)
    whole = PadimDetector(**SMALL).fit(X)
    parts = PadimDetector(**SMALL)
    for chunk in (X[:5], X[5:6], X[6:17], X[17:]):
        parts.partial_fit(chunk)
    assert parts.n_samples_seen_ == 23
    np.testing.assert_allclose(parts.mean_, whole.mean_, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(parts.precision_, whole.precision_, rtol=1e-4, atol=1e-4 * np.abs(whole.precision_).max())
    np.testing.assert_allclose(parts.score_samples(X[:4]), whole.score_samples(X[:4]), rtol=1e-4)


def test_partial_fit_refuses_changed_embedding_params(images):
    det = PadimDetector(**SMALL).partial_fit(images[:8])
    det.set_params(image_size=64)
    with pytest.raises(ValueError, match="'image_size' parameter changed"):
        det.partial_fit(images[8:])
    det.set_params(image_size=32, epsilon=0.1)  # epsilon may change
    det.partial_fit(images[8:])
    assert det.n_samples_seen_ == len(images)


def test_fit_resets_state(images):
    det = PadimDetector(**SMALL).fit(images)
    det.fit(images[:10])
    assert det.n_samples_seen_ == 10


def test_pipeline_last_step(images):
    pipe = make_pipeline(FunctionTransformer(lambda X: X[:, ::-1]), PadimDetector(**SMALL))
    pipe.fit(images)
    direct = PadimDetector(**SMALL).fit(images[:, ::-1])
    np.testing.assert_allclose(pipe.score_samples(images), direct.score_samples(images[:, ::-1]))
    assert set(pipe.predict(images).tolist()) <= {-1, 1}


def test_grid_search_picks_by_labelled_score():
    X, y = _with_defects(20, 10)
    grid = GridSearchCV(
        PadimDetector(**SMALL),
        {"sigma": [0.0, 4.0], "n_features": [10, 20]},
        scoring=_auroc_scorer,
        cv=StratifiedKFold(2, shuffle=True, random_state=0),
    )
    grid.fit(X, y)
    assert len(grid.cv_results_["mean_test_score"]) == 4
    assert np.all(np.isfinite(grid.cv_results_["mean_test_score"]))
    assert grid.best_score_ > 0.8
    assert grid.best_estimator_.n_samples_seen_ == 20  # refit on the normal images only


def test_pickle_and_joblib_give_identical_scores(fitted, tmp_path):
    X = textured(5, seed=8)
    expected = fitted.score_samples(X)
    loaded = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(loaded.score_samples(X), expected)
    np.testing.assert_array_equal(loaded.precision_, fitted.precision_)
    path = tmp_path / "det.joblib"
    joblib.dump(fitted, path)
    again = joblib.load(path)
    np.testing.assert_array_equal(again.anomaly_map(X), fitted.anomaly_map(X))
    assert again.offset_ == fitted.offset_
    # Unfitted estimators pickle too.
    assert pickle.loads(pickle.dumps(PadimDetector())).get_params() == PadimDetector().get_params()


def test_saved_file_is_small(fitted):
    buf = io.BytesIO()
    joblib.dump(fitted, buf)
    P, d = fitted.mean_.shape
    triangle = P * d * (d + 1) // 2 * 4
    # Two packed triangles per position (running sums, precision), the calibration
    # sample, and the backbone weights up to layer3 (float32), nothing after it.
    sample = fitted._state.to_arrays()[0]
    sample_bytes = sum(v.nbytes for k, v in sample.items() if k.startswith("sample."))
    backbone_bytes = sum(v.numel() * 4 for v in fitted.backbone_.state_dict().values() if v.is_floating_point())
    assert not [k for k in fitted.backbone_.state_dict() if k.startswith(("layer4", "fc"))]
    assert buf.tell() < 1.1 * (2 * triangle + sample_bytes + backbone_bytes) + 200_000
