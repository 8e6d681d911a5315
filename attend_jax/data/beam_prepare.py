"""prepare's decode stage as an Apache Beam pipeline, written by the TFDS builder's Beam path.

Each split reads its listing (JSON lines, an image each, written by the driver next to the
output), decodes every DICOM in a DoFn and hands the records to TFDS's Beam writer. The DoFn
decodes in a child process with the local pool's containment (``pool.GuardedWorker``): a file
whose decoder raises, panics, crashes its process or hangs past the time limit is that file's
failure, never the DoFn's, so Beam has nothing to retry. Every image leaves one report row
(its failure's reason, or none; its proposals off the image; its header's marks) in a side output, written as
files beside the output; the driver makes ``bad_files.csv`` and the manifest from them. Files
go through etils.epath, as TFDS's own shards do, so a bucket needs no more than gcsfs.

Imported only for ``--beam``: apache-beam is an optional extra (``pip install -e ".[beam]"``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from collections.abc import Callable

import apache_beam as beam
from etils import epath

from attend_jax.data import pool as pool_lib
from attend_jax.data import records
from attend_jax.data.sources import Example

REPORT = "report"


def example_to_json(ex: Example) -> str:
  return json.dumps(dataclasses.asdict(ex))


def _tuples(value):
  return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def example_from_json(line: str) -> Example:
  return Example(**{k: _tuples(v) for k, v in json.loads(line).items()})


class DecodeFn(beam.DoFn):
  """Example -> (image_id, record) for TFDS, and a report row for every example. ``decode``
  (a module-level function, run in the child process) is ``prepare.decode``'s kind, ``opts``
  its ``prepare.PrepareOptions``. (This module takes both from ``prepare``, which runs it, and
  imports nothing of it.)"""

  def __init__(self, opts, max_pixels: int, time_limit: float, decode: Callable):
    self._opts, self._max_pixels, self._time_limit = opts, max_pixels, time_limit
    self._decode = decode
    self._worker = None

  def setup(self):
    self._worker = pool_lib.GuardedWorker(
        preload=[self._decode.__module__], time_limit=self._time_limit)

  def process(self, ex: Example):
    result = self._worker(self._decode, (ex, self._opts, self._max_pixels))
    if isinstance(result, pool_lib.Failure):
      result = (ex.path, result.reason)
    if isinstance(result, tuple):
      beam.metrics.Metrics.counter("prepare", "bad_files").inc()
      yield beam.pvalue.TaggedOutput(REPORT, json.dumps(
          {"image": ex.path, "file": result[0], "reason": result[1], "off_image": 0}))
      return
    beam.metrics.Metrics.counter("prepare", "images").inc()
    yield beam.pvalue.TaggedOutput(REPORT, json.dumps(
        {"image": ex.path, "file": "", "reason": "",
         "off_image": int(result["proposals_off_image"]),
         "marks": [str(m) for m in result.get("marks", ())]}))
    yield ex.image_id, records.example(result)

  def teardown(self):
    if self._worker is not None:
      self._worker.close()


class _WriteReports(beam.DoFn):
  """A bundle's report rows into one file of their own, through etils.epath (a bucket or a
  local folder, as TFDS writes the shards). A bundle that the runner retries writes its file
  again under another name; the rows are per image, so the driver keeps one of each."""

  def __init__(self, prefix: str):
    self._prefix = prefix

  def start_bundle(self):
    self._rows = []

  def process(self, row: str):
    self._rows.append(row)

  def finish_bundle(self):
    if self._rows:
      path = epath.Path(f"{self._prefix}-{uuid.uuid4().hex}.jsonl")
      path.write_text("".join(row + "\n" for row in self._rows))


def _read_lines(path: str):
  return epath.Path(path).read_text().splitlines()


@beam.ptransform_fn
def _decode_split(pbegin, listings: list[str], report_prefix: str, opts, max_pixels, time_limit,
                  decode):
  decoded = (pbegin
             | "Listings" >> beam.Create(listings)
             | "Lines" >> beam.FlatMap(_read_lines)
             | "Examples" >> beam.Map(example_from_json)
             # Spreads the images over the workers: a listing file is read by one.
             | "Spread" >> beam.Reshuffle()
             | "Decode" >> beam.ParDo(DecodeFn(opts, max_pixels, time_limit, decode))
             .with_outputs(REPORT, main="records"))
  _ = decoded[REPORT] | "Report" >> beam.ParDo(_WriteReports(report_prefix))
  return decoded.records


LISTING_LINES = 10_000  # Images per listing file.


def write_listings(work: epath.Path, examples: list[Example]) -> dict[str, list[str]]:
  """Each split's examples as JSON lines in ``work/listing-<split>-<k>.jsonl``; returns the
  files by split."""
  out: dict[str, list[str]] = {}
  for split in sorted({ex.split for ex in examples}):
    members = [ex for ex in examples if ex.split == split]
    for k in range(0, len(members), LISTING_LINES):
      path = work / f"listing-{split}-{k // LISTING_LINES:05d}.jsonl"
      path.write_text("".join(example_to_json(ex) + "\n"
                              for ex in members[k:k + LISTING_LINES]))
      out.setdefault(split, []).append(os.fspath(path))
  return out


def split_transforms(work: epath.Path, listings: dict[str, list[str]],
                     opts, max_pixels: int, time_limit: float, decode: Callable
                     ) -> dict[str, beam.PTransform]:
  """Each split's transform, reading its ``listings``, decoding each example with ``decode``
  and ``opts`` (``prepare.decode`` and its options) and reporting into
  ``work/report-<split>-*.jsonl``."""
  return {split: _decode_split(  # pylint: disable=no-value-for-parameter
      files, os.fspath(work / f"report-{split}"), opts, max_pixels, time_limit, decode)
      for split, files in listings.items()}


def read_reports(work: epath.Path) -> dict[str, dict]:
  """The pipeline's report rows, by image (a retried bundle's rows once)."""
  return {row["image"]: row for path in sorted(work.glob("report-*.jsonl"))
          for line in path.read_text().splitlines() if line for row in (json.loads(line),)}
