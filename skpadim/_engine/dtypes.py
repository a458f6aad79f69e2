"""The backbone's arithmetic: float32, or bfloat16 / float16 autocast, and what the hardware offers.

``backbone_dtype`` runs the backbone's forward pass under ``torch.autocast``
(convolutions and matrix products in the reduced precision, accumulation in
float32); its outputs are converted back to float32 before the PaDiM
arithmetic, which always runs in float32 and float64. What the hardware
offers is read at run time:

* CPUs: bfloat16 is native with AVX512-BF16 or AMX (recent Xeons, AMD Zen 4
  and later), float16 with AVX512-FP16 or AMX-FP16; elsewhere torch emulates
  them, several times *slower* than float32 (resnet18 at 224 px on an AVX2
  EPYC: about 5-15x, benchmarks/speed.py), and a warning says so;
* CUDA GPUs: float16 everywhere, bfloat16 where
  ``torch.cuda.is_bf16_supported()``.
"""

import warnings

import torch

BACKBONE_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _cpu_native(dtype):
    """Whether oneDNN has native kernels for ``dtype`` on this CPU."""
    probe = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}[dtype]
    try:
        return bool(getattr(torch.ops.mkldnn, probe)())
    except (AttributeError, RuntimeError):  # an older torch, or no oneDNN
        return False


def native(name, device):
    """Whether ``device`` runs ``backbone_dtype=name`` natively (float32: always)."""
    dtype = BACKBONE_DTYPES[name]
    device = torch.device(device)
    if dtype is None:
        return True
    if device.type == "cpu":  # float16 is refused on a CPU (check_backbone_dtype), whatever oneDNN has
        return dtype == torch.bfloat16 and _cpu_native(dtype)
    if device.type == "cuda":
        return dtype == torch.float16 or torch.cuda.is_bf16_supported()
    return dtype == torch.float16  # MPS


def check_backbone_dtype(name, device):
    """Refuse a ``backbone_dtype`` that ``device`` cannot run; warn where it would be slow.

    Called when fitting starts: float16 needs a GPU, bfloat16 on a CUDA GPU
    needs one that supports it. On a CPU without native support bfloat16 is
    allowed (it gives the same results as on a CPU that has it) with a
    warning.
    """
    device = torch.device(device)
    if BACKBONE_DTYPES[name] is None:
        return
    if name == "float16" and device.type == "cpu":
        raise ValueError(
            "The 'backbone_dtype' parameter of PadimDetector is 'float16', which runs on GPUs "
            f"(device='cuda' or 'mps'); the device is {str(device)!r}. On a CPU use 'bfloat16' "
            "(fast on CPUs with AVX512-BF16 or AMX) or 'float32'."
        )
    if name == "bfloat16" and device.type != "cpu" and not native(name, device):
        raise ValueError(
            f"The 'backbone_dtype' parameter of PadimDetector is 'bfloat16', which the device "
            f"{str(device)!r} does not support; use 'float16' or 'float32'."
        )


def warn_if_emulated(name, device):
    """A UserWarning when ``backbone_dtype=name`` is emulated (slow) on this CPU."""
    if native(name, device):
        return
    warnings.warn(
        f"backbone_dtype={name!r}: this CPU has no native {name} instructions (AVX512-BF16 or "
        "AMX for bfloat16), so torch emulates them and the backbone runs several times "
        "slower than in float32 (resnet18: about 5-15x on an AVX2 CPU). The results are "
        "those of a CPU that has them. Use backbone_dtype='float32' on this machine.",
        UserWarning,
        stacklevel=4,
    )


#: Modules whose weights autocast casts to the reduced dtype at every call (its
#: lower-precision ops: convolutions, transposed convolutions, matrix products).
_AUTOCAST_WEIGHTS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose1d,
                     torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d, torch.nn.Linear)


def precast(module, name):
    """Cast, in place, the weights that :func:`autocast` would cast at every call of
    ``module`` (a copy that only ever runs under it) to ``backbone_dtype=name``, once.

    Autocast rounds a float32 weight to the reduced dtype before each
    convolution or matrix product, and leaves one already in that dtype as it
    is: the results are the same, without one cast per layer and batch.
    Other parameters (normalizations left unfolded) stay float32, as autocast
    leaves them. float32: nothing changes.
    """
    dtype = BACKBONE_DTYPES[name]
    if dtype is None:
        return module
    for m in module.modules():
        if isinstance(m, _AUTOCAST_WEIGHTS):
            for p in (m.weight, m.bias):
                if p is not None and p.dtype == torch.float32:
                    p.data = p.data.to(dtype)
    return module


def autocast(name, device):
    """The context that runs the backbone in ``backbone_dtype=name`` on ``device``."""
    dtype = BACKBONE_DTYPES[name]
    if dtype is None:
        return torch.autocast(torch.device(device).type, enabled=False)
    return torch.autocast(torch.device(device).type, dtype=dtype)
