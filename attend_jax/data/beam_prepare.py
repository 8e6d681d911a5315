"""prepare's decode stage as an Apache Beam pipeline, written by the TFDS builder's Beam path.

Each split reads its listing (one JSON line per image, written by the driver next to the
output), decodes every DICOM in a DoFn and hands the records to TFDS's Beam writer. The DoFn
decodes in a child process with the local pool's containment (``pool.GuardedWorker``): a file
whose decoder raises, panics, crashes its process or hangs past the time limit is that file's
failure, never the DoFn's, so Beam has nothing to retry. Every image leaves one report row
(its failure's reason, or none; its proposals off the image) in a side output written as text
files beside the output; the driver makes ``bad_files.csv`` and the manifest from them.

Imported only for ``--beam``: apache-beam is an optional extra (``pip install -e ".[beam]"``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

import apache_beam as beam
from etils import epath

from attend_jax.data import pool as pool_lib
from attend_jax.data import prepare, records
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
  (a module-level function, run in the child process) is ``prepare.decode``'s kind."""

  def __init__(self, opts: prepare.PrepareOptions, max_pixels: int, time_limit: float,
               decode: Callable = prepare.decode):
    self._opts, self._max_pixels, self._time_limit = opts, max_pixels, time_limit
    self._decode = decode
    self._worker = None

  def setup(self):
    self._worker = pool_lib.GuardedWorker(
        preload=[prepare.__name__, self._decode.__module__], time_limit=self._time_limit)

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
         "off_image": int(result["proposals_off_image"])}))
    yield ex.image_id, records.example(result)

  def teardown(self):
    if self._worker is not None:
      self._worker.close()


@beam.ptransform_fn
def _decode_split(pbegin, listing: str, report_prefix: str, opts, max_pixels, time_limit):
  decoded = (pbegin
             | "Listing" >> beam.io.ReadFromText(listing)
             | "Examples" >> beam.Map(example_from_json)
             # Spreads the images over the workers: a listing file is read by one.
             | "Spread" >> beam.Reshuffle()
             | "Decode" >> beam.ParDo(DecodeFn(opts, max_pixels, time_limit)).with_outputs(
                 REPORT, main="records"))
  _ = decoded[REPORT] | "Report" >> beam.io.WriteToText(report_prefix, file_name_suffix=".jsonl")
  return decoded.records


def split_transforms(work: epath.Path, splits: list[str], opts: prepare.PrepareOptions,
                     max_pixels: int, time_limit: float) -> dict[str, beam.PTransform]:
  """Each split's transform, reading ``work/listing-<split>.jsonl`` and reporting to
  ``work/report-<split>-*.jsonl``."""
  return {split: _decode_split(  # pylint: disable=no-value-for-parameter
      os.fspath(work / f"listing-{split}.jsonl"), os.fspath(work / f"report-{split}"),
      opts, max_pixels, time_limit) for split in splits}


def read_reports(work: epath.Path) -> list[dict]:
  """Every report row the pipeline wrote."""
  return [json.loads(line) for path in sorted(work.glob("report-*.jsonl"))
          for line in path.read_text().splitlines() if line]
