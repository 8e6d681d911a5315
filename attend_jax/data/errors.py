"""Typed errors for bad input files. Each names the file and a reason a person can act on."""

from __future__ import annotations

import os


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
