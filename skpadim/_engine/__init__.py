"""The estimator's engine, one module per step of the data flow.

images -> backbone -> taps -> embedding -> gaussian (fit) / distances
(predict) -> maps -> calibration. fitting and inference run those steps over
batches of images; state holds everything a fit produces (persist and
model_file turn it into arrays and files); params validates the parameters,
memory checks and explains memory use, parallel and progress say how the
work runs and shows.
:class:`skpadim.PadimDetector` is the only user; nothing here is public.
"""
