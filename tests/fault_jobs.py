"""Jobs that fail the ways real decoders do, for the worker-pool tests (imported by workers)."""

import os
import signal
import time


class RustPanic(BaseException):
  """Like pyo3's PanicException: not an Exception, and it cannot be pickled back."""

  def __reduce__(self):
    raise TypeError("cannot pickle a panic")


def job(kind: str) -> str:
  if kind == "raise":
    raise ValueError("corrupt segment\nat offset 64")
  if kind == "panic":
    raise RustPanic("index out of bounds: the len is 120000 but the index is 120001")
  if kind == "segfault":
    os.kill(os.getpid(), signal.SIGSEGV)
  if kind == "hang":
    time.sleep(3600)
  if kind == "exit":
    os._exit(3)
  return kind.upper()


def decode(path) -> tuple | str:
  """The real reader on one file: its shape, or the DicomError's reason."""
  from attend_jax.data import dicom

  try:
    return dicom.read_dicom(path).pixels.shape
  except dicom.DicomError as e:
    return e.reason


def decode_example(args) -> dict:
  """``prepare.decode``'s kind for a Beam DoFn: the job named by the example's image id, and a
  record of ids only for the ones that finish."""
  ex, _, _ = args
  kind = job(ex.image_id)
  return {"image_id": kind, "study_id": "s", "patient_id": "p", "laterality": "L", "view": "CC",
          "proposals_off_image": 0}
