"""The estimator's engine, one module per step of the data flow.

images -> backbone -> taps -> embedding -> gaussian (fit) / distances
(predict) -> maps -> calibration, with persist and model_file for saving,
params for validation, and parallel / heap for how the work runs.
:class:`skpadim.PadimDetector` is the only user; nothing here is public.
"""
