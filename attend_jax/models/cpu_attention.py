"""Fused softmax attention for CPUs: cpu_attention.cc, compiled once per machine, run by XLA.

XLA:CPU runs attention as separate products and elementwise passes, with a score matrix per
(batch, head) pair; PyTorch's CPU attention is one fused (flash) kernel. cpu_attention.cc is
such a kernel for XLA: two FFI handlers (forward, and a backward that recomputes the
probabilities from the forward's log-sum-exp), called through ``jax.ffi``.

It is built the first time a CPU step needs it, with the system's C++ compiler (``$CXX``, else
``c++``) and ``-march=native``, into attend_jax's cache (``paths.cache_root()``: ``$ATTEND_JAX_CACHE``, else
``~/.cache/attend_jax``),
keyed by the source, jaxlib's version and the CPU's flags; later processes load the cached
library. Where there is no compiler or the build fails, ``unavailable()`` says why and
attention.py keeps XLA's loop. Only float32 with head_dim a multiple of 16 up to 128 runs here.

XLA cannot partition an FFI call: under a mesh, attention.py runs it per device on its share
of the batch (``jax.shard_map``), as it runs the TPU's Pallas kernel.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from attend_jax import paths
from attend_jax.progress import log

SOURCE = pathlib.Path(__file__).with_name("cpu_attention.cc")
FORWARD, BACKWARD = "attend_jax_attention_forward", "attend_jax_attention_backward"
MAX_HEAD_DIM = 128


def _cpu_flags() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next((line for line in f if line.startswith(("flags", "Features"))), "")
  except OSError:
    return platform.processor()


def library_path() -> pathlib.Path:
  """Where this machine's build of the kernel is (or goes)."""
  key = hashlib.sha256(b"\0".join([
      SOURCE.read_bytes(), jaxlib.__version__.encode(), platform.machine().encode(),
      _cpu_flags().encode()])).hexdigest()[:16]
  return paths.cache_root() / f"cpu_attention-{key}.so"


def build(path: pathlib.Path) -> None:
  """Compiles cpu_attention.cc into ``path`` (atomically: concurrent builds are safe).
  Raises RuntimeError with the compiler's message where it cannot."""
  compiler = shutil.which(os.environ.get("CXX", "c++"))
  if compiler is None:
    raise RuntimeError(f"no C++ compiler ({os.environ.get('CXX', 'c++')!r} is not on PATH)")
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
  os.close(fd)
  # -mtune=generic: GCC 12 tuned for AMD Zen 4 (-march=native's default there) made the
  # backward 20 % slower.
  command = [compiler, "-O3", "-march=native", "-mtune=generic", "-std=c++17", "-shared",
             "-fPIC", "-w", f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", tmp]
  try:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
      raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()[-2000:]}")
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


@functools.lru_cache(maxsize=None)
def _load() -> str | None:
  """Builds (if needed), loads and registers the kernel, once a process; None, or why not."""
  path = library_path()
  try:
    if not path.exists():
      log("Compiling the fused CPU attention kernel (once per machine) into %s", path)
      build(path)
    library = ctypes.CDLL(str(path))
  except (OSError, RuntimeError) as e:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else e}"
  for name, symbol in ((FORWARD, library.AttendJaxAttentionForward),
                       (BACKWARD, library.AttendJaxAttentionBackward)):
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol), platform="cpu")
  return None


def unavailable() -> str | None:
  """Why the kernel cannot run in this process (no compiler, a failed build, switched off
  with ATTEND_JAX_CPU_ATTENTION=0), or None where it can."""
  if os.environ.get("ATTEND_JAX_CPU_ATTENTION", "1") == "0":
    return "switched off by ATTEND_JAX_CPU_ATTENTION=0"
  return _load()


def supports(dtype, head_dim: int) -> bool:
  """Whether the kernel takes attention in ``dtype`` with heads of ``head_dim``."""
  return jnp.dtype(dtype) == jnp.float32 and head_dim % 16 == 0 and head_dim <= MAX_HEAD_DIM


def _scale(q) -> np.float32:
  return np.float32(1.0 / math.sqrt(q.shape[-1]))


def _forward(q, k, v):
  b, n, h, _ = q.shape
  out = (jax.ShapeDtypeStruct(q.shape, jnp.float32), jax.ShapeDtypeStruct((b, h, n), jnp.float32))
  return jax.ffi.ffi_call(FORWARD, out, vmap_method="sequential")(q, k, v, scale=_scale(q))


@jax.custom_vjp
def _attention(q, k, v):
  return _forward(q, k, v)[0]


def _attention_fwd(q, k, v):
  out, lse = _forward(q, k, v)
  return out, (q, k, v, out, lse)


def _attention_bwd(residuals, g):
  q = residuals[0]
  shape = jax.ShapeDtypeStruct(q.shape, jnp.float32)
  return tuple(jax.ffi.ffi_call(BACKWARD, (shape,) * 3, vmap_method="sequential")(
      *residuals, g, scale=_scale(q)))


_attention.defvjp(_attention_fwd, _attention_bwd)


def dot_product_attention(q, k, v):
  """Softmax attention over (B, N, H, D) float32, scaled by 1/sqrt(D), by the fused kernel.
  Raises RuntimeError where it cannot run (``unavailable()``); ``supports(q.dtype, D)`` is
  the caller's to check."""
  why_not = unavailable()
  if why_not:
    raise RuntimeError(f"The fused CPU attention kernel cannot run: {why_not}")
  return _attention(q, k, v)
