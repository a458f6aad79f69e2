"""Cholesky factorizations, inverses and triangular solves through scipy's OpenBLAS.

At the end of a fit every patch position gets a Cholesky factorization and an
inverse of its covariance (float64, d x d). torch calls MKL's LAPACK for
them, which on CPUs other than Intel's runs these routines at about half the
speed of the OpenBLAS inside scipy's wheels (d = 550 on an AMD EPYC: 5.6 +
9.7 ms against 2.5 + 4.3 ms per position, the precision_kernels record of docs/benchmarks.md).

This module calls that OpenBLAS's ``dpotrf``, ``dpotri`` and ``dtrtrs``
through the function pointers that ``scipy.linalg.cython_lapack`` exports,
with :mod:`ctypes`, which releases the GIL: the worker threads of
:mod:`.parallel` run in parallel. It is used (:func:`enabled`) only when

* the CPU is not an Intel one (there MKL is the faster of the two),
* scipy's LAPACK is OpenBLAS, and
* that OpenBLAS runs one thread. Its thread count is a process-wide
  setting, which the library never changes: a program that owns its process
  sets it (the ``skpadim`` command does, :func:`single_threaded_process`),
  or the process is started with ``OPENBLAS_NUM_THREADS=1``. With more
  threads, several workers calling it at once would compete for the cores.

Otherwise torch's LAPACK is used. Both give the same results up to float64
rounding. The matrices are C-ordered torch tensors: LAPACK, which reads
columns, sees their transposes, so the upper triangle of a C-ordered matrix
is LAPACK's lower one.
"""

import ctypes
import functools
import platform

#: Set to False to always use torch's LAPACK (tests, benchmarks).
ALLOWED = True

_INT = ctypes.POINTER(ctypes.c_int)
_PTR = ctypes.c_void_p


@functools.lru_cache(maxsize=1)
def _intel_cpu():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return "GenuineIntel" in line
    except OSError:
        pass
    return "Intel" in platform.processor()


@functools.lru_cache(maxsize=1)
def _routines():
    """``(dpotrf, dpotri, dtrtrs, OpenBLAS controller)``, or None without an OpenBLAS."""
    try:
        import threadpoolctl
        from scipy.linalg import cython_lapack
    except ImportError:
        return None
    controllers = [c for c in threadpoolctl.ThreadpoolController().lib_controllers
                   if c.internal_api == "openblas" and "scipy" in c.filepath and "numpy" not in c.filepath]
    if len(controllers) != 1:
        return None
    name = ctypes.pythonapi.PyCapsule_GetName
    name.restype, name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    pointer = ctypes.pythonapi.PyCapsule_GetPointer
    pointer.restype, pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]

    def routine(fn, *argtypes):
        capsule = cython_lapack.__pyx_capi__[fn]
        return ctypes.CFUNCTYPE(None, *argtypes)(pointer(capsule, name(capsule)))

    uplo = ctypes.c_char_p
    potr = (uplo, _INT, _PTR, _INT, _INT)
    trtrs = (uplo, uplo, uplo, _INT, _INT, _PTR, _INT, _PTR, _INT, _INT)
    return routine("dpotrf", *potr), routine("dpotri", *potr), routine("dtrtrs", *trtrs), controllers[0]


def enabled(device):
    """Whether the end of fit on ``device`` goes through scipy's OpenBLAS (module docstring)."""
    import torch  # here: the command line sets the thread count without torch installed

    if not ALLOWED or torch.device(device).type != "cpu" or _intel_cpu():
        return False
    found = _routines()
    return found is not None and found[3].get_num_threads() == 1


def single_threaded_process():
    """Run scipy's OpenBLAS on one thread in this whole process, for a program that owns
    its process (the ``skpadim`` command); returns whether there is one to set."""
    found = _routines()
    if found is None:
        return False
    found[3].set_num_threads(1)
    return True


def _check(info, what):
    if info.value < 0:
        raise RuntimeError(f"LAPACK {what}: argument {-info.value} is invalid.")
    return info.value


def cholesky_upper_(cov):
    """Factor each (d, d) float64 matrix of the C-ordered ``cov`` (upper triangles read) in
    place into ``U`` (``cov = U^T U``, upper triangle; the lower one is left as it was).
    Returns the number of matrices that are not positive definite (their factor is void)."""
    dpotrf = _routines()[0]
    n = ctypes.c_int(cov.shape[-1])
    info, bad = ctypes.c_int(0), 0
    for m in cov:
        dpotrf(b"L", ctypes.byref(n), m.data_ptr(), ctypes.byref(n), ctypes.byref(info))
        bad += _check(info, "dpotrf") > 0
    return bad


def cholesky_inverse_(U, work):
    """Overwrite each factor of :func:`cholesky_upper_` with the full, symmetric inverse
    ``(U^T U)^-1`` of its matrix (``work``: a tensor like ``U``, overwritten, to mirror
    the triangle through)."""
    dpotri = _routines()[1]
    n = ctypes.c_int(U.shape[-1])
    info = ctypes.c_int(0)
    for m in U:
        dpotri(b"L", ctypes.byref(n), m.data_ptr(), ctypes.byref(n), ctypes.byref(info))
        if _check(info, "dpotri"):
            raise ValueError("singular Cholesky factor")
    lower = work.copy_(U.mT).tril_(-1)
    return U.triu_().add_(lower)


def solve_upper_transposed(U, Y):
    """``U^-T Y`` for the (P, d, d) factors ``U`` of :func:`cholesky_upper_` and (P, d, B)
    right-hand sides ``Y`` (float64): a new (P, d, B) tensor."""
    dtrtrs = _routines()[2]
    P, d, B = Y.shape
    Z = Y.mT.contiguous()  # C-ordered (B, d) per position: LAPACK's column-major (d, B)
    n, nrhs = ctypes.c_int(d), ctypes.c_int(B)
    info = ctypes.c_int(0)
    for u, z in zip(U, Z):
        # U^T z = y is, for LAPACK (which sees U's transpose, a lower factor L), L z = y.
        dtrtrs(b"L", b"N", b"N", ctypes.byref(n), ctypes.byref(nrhs), u.data_ptr(), ctypes.byref(n),
               z.data_ptr(), ctypes.byref(n), ctypes.byref(info))
        if _check(info, "dtrtrs"):
            raise ValueError("singular Cholesky factor")
    return Z.mT
