"""The estimator's engine, one module per step of the data flow.

images -> backbone -> taps -> embedding (placed as the layout says) ->
gaussian (fit) / distances (predict) -> maps -> calibration. fitting runs a
fit call over batches of images (:func:`fitting.fit` is the one entry of
every fit: ``PadimDetector.fit``, ``partial_fit`` and the cluster's, through
a :class:`fitting.Runner`), finish is the one end of every fit, and
inference runs the predictions. state holds everything a fit produces
(persist and model_file turn it into arrays and files); params validates the
parameters, memory checks and explains memory use, parallel and progress say
how the work runs and shows.

:class:`skpadim.PadimDetector` reads and writes the fitted state; the rest
of skpadim reads a fitted detector through its public attributes
(``fitted_params_``). :mod:`skpadim.distributed` runs the fit's steps on a
cluster (fitting, finish, layout) and :mod:`skpadim.export` traces the
prediction's modules into a graph; nothing here is public.
"""
