"""Images -> patch embeddings: preprocessing, the backbone's forward pass, kept channels.

:class:`Embedder` runs the backbone the way that is fastest on its device and
gives the same features as the module itself up to float32 rounding: a copy
of the module with its batch normalizations folded into the convolutions
before them (:mod:`.fold`), in the channels_last memory format on CPUs and
CUDA GPUs (with its weights in the reduced ``backbone_dtype`` on the latter).
The module the detector exposes (``backbone_``) and saves is never changed.
Images come in through :class:`~.transfer.Staging`: on a GPU each batch's
copy runs while the previous batch is computed.
"""

import torch

from .._sizes import one_size_runs
from . import dtypes as _dtypes
from .fold import fold_batchnorm
from .images import float_batch
from .progress import progress_bar, stage
from .taps import LayerTaps
from .transfer import Staging, ahead

#: Device types whose backbone runs in the channels_last memory format (NHWC):
#: oneDNN's NHWC convolutions on CPUs, 1.4-1.6x the default NCHW layout for
#: resnet18 and wide_resnet50_2 (benchmarks/speed.py), with the same results
#: up to float32 rounding. CUDA GPUs too, in every backbone_dtype: cuDNN's
#: tensor-core convolutions work in NHWC (benchmarks/gpu_check.py times the
#: detector against the bare backbone in that layout, docs/performance.md).
CHANNELS_LAST = {"cpu", "cuda"}

#: Device types where a reduced backbone_dtype casts the weights of the forward pass's
#: copy once, when it is built: autocast would cast every convolution's weights again at
#: every batch (one more kernel each). The results are those of autocast (it rounds the
#: same float32 weights the same way). CPUs keep autocast's own casts.
PRECAST = {"cuda"}


#: Fold batch normalizations into the convolutions before them (:mod:`.fold`):
#: 1.16x the throughput of the unfolded channels_last resnet18 on a CPU
#: (benchmarks/speed.py), the same results up to float32 rounding.
FOLD_BATCHNORM = True


class Embedder:
    """Images -> (P, d, B) patch embeddings: preprocessing, backbone taps, kept channels
    (placed on the patch grid and cut into tiles as ``layout``, a :class:`~.layout.Layout`, says).

    The forward pass runs a copy of ``model`` with its batch normalizations
    folded (while :data:`FOLD_BATCHNORM`), its weights and inputs in the
    channels_last memory format on the devices of :data:`CHANNELS_LAST`
    (weights cast once to ``backbone_dtype`` on those of :data:`PRECAST`; the
    normalization writes its output in that layout, so the conversion costs no
    extra pass). When that copy gains nothing (no normalization to fold, no
    layout to change) ``model`` itself runs. If the copy's forward pass fails
    (a custom module that calls ``view`` on its input, say), ``model`` runs
    from then on, in the default layout: the switch is one assignment, so
    predictions running in other threads are not disturbed.
    """

    def __init__(self, model, spec, layout, device, taps=None):
        self.model = model.eval().requires_grad_(False).to(device)
        self.device = device
        self.taps = taps if taps is not None else LayerTaps(self.model, spec["layers"])
        self.layout = layout
        norm = spec["normalize"]
        self._norm = None if norm is None else tuple(
            torch.tensor(v, dtype=torch.float32, device=device).view(1, 3, 1, 1) for v in norm
        )
        self.dtype = spec["params"].get("backbone_dtype", "float32")
        _dtypes.warn_if_emulated(self.dtype, device)
        self.folded = 0
        self._runner = self._fast_runner(spec["layers"])

    def _fast_runner(self, layers):
        """``(taps, memory format)`` of the fastest way to run the backbone here."""
        plain = (self.taps, torch.contiguous_format)
        channels_last = torch.device(self.device).type in CHANNELS_LAST
        if not (FOLD_BATCHNORM or channels_last):
            return plain
        module, self.folded = fold_batchnorm(self.model, keep=layers, enabled=FOLD_BATCHNORM)
        if not (self.folded or channels_last):
            return plain
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        module = module.to(memory_format=fmt)
        if torch.device(self.device).type in PRECAST:
            _dtypes.precast(module, self.dtype)
        return LayerTaps(module, layers), fmt

    @property
    def channels_last(self):
        """Whether the backbone runs in the channels_last memory format."""
        return self._runner[1] is torch.channels_last

    @property
    def runs_copy(self):
        """Whether the forward pass runs a folded or re-laid-out copy of ``model``."""
        return self._runner[0] is not self.taps

    def _input(self, x, memory_format):
        """The normalized input, in ``memory_format`` (one pass over the batch)."""
        if self._norm is None:
            return x.contiguous(memory_format=memory_format)
        out = torch.empty_like(x, memory_format=memory_format)
        return torch.sub(x, self._norm[0], out=out).div_(self._norm[1])

    def _run(self, runner, x):
        taps, fmt = runner
        with _dtypes.autocast(self.dtype, self.device):
            feats = taps(self._input(x, fmt))
        return [f.float() for f in feats]

    def forward(self, x):
        """The tapped layers' float32 outputs for the (B, 3, h, w) images ``x`` in [0, 1]."""
        runner = self._runner
        if runner[0] is self.taps:
            return self._run(runner, x)
        try:
            return self._run(runner, x)
        except RuntimeError:  # ``model`` as it is from now on (one assignment), and run it
            self._runner = (self.taps, torch.contiguous_format)
        return self._run(self._runner, x)

    def batches(self, images, batch_size, *, desc, verbose=False, fitting=False):
        """Yield ``(emb, sizes, feats)``: the (P, d, B) embeddings (a buffer reused by the
        calling thread), the images' own sizes and the tapped layers' outputs.

        With tiles, ``batch_size`` counts tiles: each batch holds ``batch_size //
        n_tiles`` images (at least one) and all their tiles go through the backbone at once.
        A model that takes images of any size (native, shared tiles) cuts each image
        into its own tiles when predicting: a batch then holds images of one size.
        Images a model cannot take raise a ValueError naming them (``fitting``: every
        image must have the training images' size).
        """
        layout = self.layout
        bar = progress_bar(len(images), desc) if verbose else None
        runs = self._runs(images, batch_size, fitting)
        try:
            while True:
                with stage("decode"):
                    batch = next(runs, None)
                if batch is None:
                    break
                x, sizes, tiling = batch
                with stage("backbone"):
                    if tiling is not None:
                        x = tiling.split(x)  # normalization is per pixel: split first
                    feats = self.forward(x)
                with stage("embedding"):
                    emb = layout.patches(feats)
                    if tiling is not None:
                        emb = tiling.stats_layout(emb)
                yield emb, sizes, feats
                if bar is not None:
                    bar.update(len(sizes))
        finally:
            if bar is not None:
                bar.close()

    def _runs(self, images, batch_size, fitting):
        """``(x, sizes, tiling)``: batches as tensors at the model's size, or, for a model
        that takes any size, runs of images of one size at that size, with their tiles."""
        layout = self.layout
        flexible = layout.any_size and not fitting
        first = 0
        staging = Staging(self.device)  # each batch's copy starts before the previous one runs
        host = images.host_batches(max(1, batch_size // layout.n_tiles))
        for (_, sizes), ticket in ahead(host, lambda batch: staging.send(batch[0])):
            if layout.native:
                layout.check_sizes(sizes, first, fitting=fitting)
            first += len(sizes)
            imgs = staging.receive(ticket)
            if not flexible:
                yield float_batch(imgs, layout.image_size), sizes, layout.tiling
                continue
            for start, stop in one_size_runs(sizes, lambda size: batch_size // layout.tiling_for(size).n_tiles):
                yield float_batch(imgs[start:stop], None), sizes[start:stop], layout.tiling_for(sizes[start])
