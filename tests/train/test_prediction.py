"""The prediction loop over a prepared split: every record once, in order, padding dropped, the
same with worker processes, and nothing read back from the device until the pass ends."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attend_jax.data import pipeline
from attend_jax.train import prediction
from configs import demo

import helpers


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  root = helpers.tiny_prepared(tmp_path_factory.mktemp("loop_data"), seed=1)
  c = demo.get_config("smoke")
  c.data.dir, c.data.name, c.data.image_size = str(root), "synthetic_96", 96
  c.data.eval_batch_size = 8
  c.data.worker_count = 1
  return c


@jax.jit
def _step(batch):
  """A per-record figure computed on the device from the record's pixels alone."""
  return {"mean": jnp.mean(batch["image"].astype(jnp.float32), axis=(1, 2))}


def _by_hand(config, split):
  """Each record's mean pixel and label, read straight from the records."""
  source = pipeline._source(pipeline.for_split(config, split, train=False))
  out = []
  for i in range(len(source)):
    record = source[i]
    image = np.asarray(record["image"], np.float32)
    out.append((float(image.sum() / 96 ** 2), int(record["label"])))
  return out


def test_every_record_once_in_order_the_padding_dropped(config):
  cfg = pipeline.for_split(config, "train", train=False)
  pred = prediction.predict_split(_step, cfg, host_keys=("label", "index"))
  expected = _by_hand(config, "train")
  assert len(expected) % cfg.batch_size  # The last batch is a padded one.
  assert list(pred["index"]) == list(range(len(expected)))
  np.testing.assert_allclose(pred["mean"], [m for m, _ in expected], rtol=1e-6)
  assert list(pred["label"]) == [y for _, y in expected]
  assert len(pred["ids"]) == len(expected) and len(pred["breast"]) == len(expected)


def test_small_splits_decode_in_process_and_large_ones_in_workers(config, monkeypatch):
  assert pipeline.for_split(config, "train", train=False).worker_count == 0
  assert pipeline.for_split(config, "train", train=True).worker_count == 1
  monkeypatch.setattr(pipeline, "EVAL_WORKERS_FROM", 1)
  cfg = pipeline.for_split(config, "train", train=False)
  assert cfg.worker_count == 1
  with_workers = prediction.predict_split(_step, cfg)
  monkeypatch.setattr(pipeline, "EVAL_WORKERS_FROM", 10 ** 9)
  in_process = prediction.predict_split(_step, pipeline.for_split(config, "train", train=False))
  np.testing.assert_array_equal(with_workers["mean"], in_process["mean"])
  assert with_workers["ids"] == in_process["ids"]


def test_the_pass_reads_nothing_back_until_it_ends(config, monkeypatch):
  """Each batch's outputs stay on the device while the next ones run: every read of a device
  value (float(), np.asarray, jax.device_get all go through ``_value``) comes after the last
  batch was dispatched."""
  from jax._src import array

  reads, dispatched = [], []
  value = array.ArrayImpl._value
  monkeypatch.setattr(array.ArrayImpl, "_value",
                      property(lambda self: reads.append(len(dispatched)) or value.fget(self)))

  def step(batch):
    dispatched.append(1)
    return _step(batch)

  pred = prediction.predict_split(step, pipeline.for_split(config, "train", train=False))
  assert len(dispatched) > 1 and reads and set(reads) == {len(dispatched)}
  assert len(pred["mean"]) == len(_by_hand(config, "train"))


def test_a_model_on_a_mesh_of_every_device_predicts_as_on_one(config):
  """What evaluate and predict run: the batch split over the 8 (simulated) local devices, the
  model replicated over them, against the model on one device."""
  from attend_jax import tasks

  assert jax.local_device_count() == 8
  task = tasks.get(config)
  model = task.build_model(0)
  model.eval()
  cfg = pipeline.for_split(config, "train", train=False)
  mesh = prediction.batch_mesh(cfg.batch_size)
  assert mesh.size == 8
  one = prediction.predict_split(prediction.model_step(task, model), cfg, host_keys=task.host_keys)
  many = prediction.predict_split(prediction.model_step(task, model, mesh=mesh), cfg, mesh,
                            host_keys=task.host_keys)
  np.testing.assert_allclose(many["prob"], one["prob"], atol=1e-6)
  assert many["ids"] == one["ids"]
  assert prediction.batch_mesh(6).size == 6 and prediction.batch_mesh(5).size == 5


def test_ids_come_from_the_side_table_without_reading_a_record(config, monkeypatch):
  """prepare writes each split's ids and geometry beside its shards; a pass looks them up
  (the same as reading the records), and records prepared before the table still work."""
  from attend_jax.data import records

  cfg = pipeline.for_split(config, "train", train=False)
  keys = ("crop_box", "flipped", "scale")
  table = records.ids(cfg.data_dir, cfg.config, "train")
  source = pipeline._source(cfg)
  assert table is not None and len(table) == len(source)
  by_reading = [{k: record[k] for k in ("image_id", "study_id", "crop_box", "scale")}
                for record in source]
  for row, read in zip(table, by_reading):
    assert row["image_id"] == read["image_id"].decode() and row["study_id"] == read[
        "study_id"].decode()
    np.testing.assert_array_equal(row["crop_box"], read["crop_box"])
    assert row["scale"] == read["scale"]

  def no_reading(self, index):
    raise AssertionError("a record was read for its ids")

  monkeypatch.setattr(records.Records, "__getitem__", no_reading)
  ids = pipeline.record_ids(cfg, [2, 0], keys)
  assert [i["image_id"] for i in ids] == [table[2]["image_id"], table[0]["image_id"]]
  assert ids[0]["crop_box"].dtype == np.int32 and ids[0]["flipped"].dtype == np.bool_
  monkeypatch.undo()
  monkeypatch.setattr(records, "ids", lambda *a: None)  # Prepared before the side table.
  old = pipeline.record_ids(cfg, [2, 0], keys)
  assert [i["image_id"] for i in old] == [i["image_id"] for i in ids]
  np.testing.assert_array_equal(old[0]["crop_box"], ids[0]["crop_box"])
