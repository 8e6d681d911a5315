"""Typed errors for what a user can fix: a bad input file, a weights file, a full disk.

Each names the file and a reason a person can act on; the CLIs print them as one line
(``cli.py``). They live at the bottom of the package, so that any layer may raise them.
"""

from __future__ import annotations

import errno
import os
import pathlib
import shutil


class DataError(ValueError):
  """A file or row that cannot be used: a dataset file, a CSV row, a weights file.

  ``prepare_data`` lists these and carries on; the CLIs print them as one line.
  """

  def __init__(self, path: str | os.PathLike, reason: str):
    self.path = str(path)
    self.reason = reason
    super().__init__(f"{self.path}: {reason}")


class DicomError(DataError):
  """An unreadable, truncated or unsupported DICOM file."""


class BreastNotFoundError(DataError):
  """An image with no breast region above the background threshold."""


class ProposalError(DataError):
  """A malformed detector proposal file."""


class LabelError(DataError):
  """A label CSV with a missing column or an unknown value."""


class NoUsableImagesError(DataError):
  """A dataset none of whose images could be used; bad_files.csv says why for each."""


class CorruptRecordsError(DataError):
  """A prepared ArrayRecord shard that cannot be read; the reason says how to prepare it
  again."""

  def __reduce__(self):  # Raised in grain's worker processes: travels back by its arguments.
    return CorruptRecordsError, (self.path, self.reason)


class RemoteRecordsError(DataError):
  """Prepared records on a bucket, which the ArrayRecord reader cannot open."""

  def __init__(self, data_dir, reason: str):
    super().__init__(
        data_dir, f"prepared records cannot be read from a bucket ({reason}); copy the prepared"
        f" folder to local disk (gcloud storage cp -r {data_dir} /mnt/disks/ssd/) and pass that"
        " folder as --config.data.dir")


class CheckpointError(DataError):
  """A weights file that cannot be used; names the file and the reason."""


class WeightsDownloadError(CheckpointError):
  """The official weights could not be fetched (offline, proxy, HTTP error)."""


class DiskFullError(OSError):
  """The disk filled up while writing ``path``: what was written before is intact."""

  def __init__(self, path: str | os.PathLike, needed_bytes: int):
    self.path, self.needed_bytes = str(path), int(needed_bytes)
    folder = pathlib.Path(path)
    while not folder.exists() and folder != folder.parent:
      folder = folder.parent
    free = shutil.disk_usage(folder).free
    super().__init__(errno.ENOSPC, f"no space left on the disk of {self.path}: it needs"
                     f" {_size(self.needed_bytes)} more and {_size(free)} are free there;"
                     " free some space (or choose another folder) and rerun the same command,"
                     " which resumes")

  def __reduce__(self):  # Raised in worker processes: travels back by its own arguments.
    return DiskFullError, (self.path, self.needed_bytes)

  def __str__(self) -> str:
    return self.strerror


def _size(n: int) -> str:
  for unit in ("B", "kB", "MB", "GB", "TB"):
    if n < 1000 or unit == "TB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1000
  return f"{n} B"


def short_reason(e: BaseException) -> str:
  """The exception's first line, short (TensorStore appends pages of details)."""
  text = str(e).strip().splitlines()[0] if str(e).strip() else ""
  text = text.split(" See full TensorStore details")[0][:200]
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


class MissingExtraError(ImportError):
  """A feature whose optional dependencies are not installed; the message names the extra."""

  def __init__(self, feature: str, extra: str):
    super().__init__(f"{feature} needs the optional dependencies of attend_jax[{extra}]; install"
                     f' them with: pip install -e ".[{extra}]"')
