"""A converted backbone into a config's model: loaded under the run's mesh, checked against the
config, its position resize recorded (attend_jax/models/build.py)."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from attend_jax import errors, export, tasks
from attend_jax.models import build, pretrained, vit
from attend_jax.train import sharding
from configs import cbis


def _config(pretrained=""):
  c = cbis.get_config("tiny")
  c.model.pretrained = str(pretrained)
  return c


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  """What tools/convert_dinov2.py writes for the :tiny size, with an HF v1 file's resize."""
  c = _config()
  cfg = dataclasses.replace(build.vit_config(c), pos_embed_interp="hf_v1")
  folder = tmp_path_factory.mktemp("weights") / "dinov2"
  model = vit.create(cfg, seed=3)
  pretrained.save(model, folder)
  return folder, nnx.state(model, nnx.Param)


def test_the_backbone_loads_under_the_run_s_mesh_into_its_sharded_layout(weights):
  """The trainer builds and loads the model inside ``jax.set_mesh`` (8 devices, fsdp 2 here);
  loading there raised ``_device_assignment is not implemented for AbstractMesh``."""
  folder, saved = weights
  config = _config(folder)
  build.adopt_pretrained(config)
  mesh = sharding.make_mesh(data=4, fsdp=2)
  with jax.set_mesh(mesh):
    model = sharding.create_sharded(lambda: tasks.get(config).build_model(seed=0), mesh)
    before = {k: v.sharding for k, v in nnx.to_flat_state(nnx.state(model.vision_model,
                                                                    nnx.Param))}
    build.load_pretrained_backbone(model, str(folder))
  loaded = nnx.to_flat_state(nnx.state(model.vision_model, nnx.Param))
  want = dict(nnx.to_flat_state(saved))
  assert len(loaded) == len(want) > 0
  fsdp_split = 0
  for key, value in loaded:
    np.testing.assert_array_equal(np.asarray(value[...]), np.asarray(want[key][...]))
    assert value[...].sharding == before[key]  # Read straight into the live layout.
    fsdp_split += "fsdp" in str(value[...].sharding.spec)
  assert fsdp_split > 0  # Some weights really are split over the fsdp axis.


def test_the_weights_resize_is_recorded_in_the_config(weights):
  folder, _ = weights
  config = _config(folder)
  assert build.vit_config(config).pos_embed_interp == "meta_v1"
  build.adopt_pretrained(config)
  assert config.model.vit_overrides.pos_embed_interp == "hf_v1"
  assert build.vit_config(config).pos_embed_interp == "hf_v1"


def test_a_backbone_of_another_size_names_each_config_key(weights):
  folder, _ = weights
  config = _config(folder)
  config.model.vit_overrides.depth = 6
  config.model.registers = True
  with pytest.raises(errors.CheckpointError) as e:
    build.pretrained_vit(config)
  assert "model.vit_overrides.depth: the weights have 4, the config 6" in str(e.value)
  assert "model.registers: the weights have 0, the config 4" in str(e.value)


def test_a_missing_folder_gives_the_command_that_writes_it(tmp_path):
  with pytest.raises(errors.CheckpointError,
                     match=r"no such folder; convert .* python tools/convert_dinov2.py"
                           r" --variant vitb14 --out .*nothing"):
    build.pretrained_vit(_config(tmp_path / "nothing"))


@pytest.mark.parametrize("content", ["{not json", '{"backbone": {"width": "wide"}}', "[]"])
def test_a_corrupt_config_json_is_one_reason(weights, tmp_path, content):
  folder, _ = weights
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / export.CONFIG).write_text(content)
  with pytest.raises(errors.CheckpointError, match="unreadable .*convert the weights again"):
    pretrained.read_config(broken)


def test_the_converter_s_folder_is_the_weights_folder_every_export_is(weights):
  """config.json + weights/, read by the same export.restore as a run's export."""
  folder, saved = weights
  assert sorted(p.name for p in folder.iterdir()) == [export.CONFIG, export.WEIGHTS]
  step, state = export.restore(folder / export.WEIGHTS, {"params": saved})
  assert step == 0
  for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(state["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _save_old_format(model, folder):
  """What tools/convert_dinov2.py wrote before the one weights-folder format."""
  import json

  import orbax.checkpoint as ocp

  folder.mkdir(parents=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(folder / "state", nnx.state(model, nnx.Param))
  (folder / "vit_config.json").write_text(json.dumps(
      {"config": pretrained.config_to_json(model.cfg), "converted_from": {"format": "meta"}}))


def test_an_old_format_folder_still_loads_and_says_so_in_one_line(weights, tmp_path, capsys):
  folder, saved = weights
  old = tmp_path / "old"
  _save_old_format(pretrained.load(folder), old)
  assert pretrained.read_config(old) == pretrained.read_config(folder)
  model = pretrained.load(old)
  for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(nnx.state(model, nnx.Param))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  said = [line for line in capsys.readouterr().err.splitlines() if "old" in line]
  assert len(said) == 1 and "vit_config.json + state/" in said[0]


def test_a_run_s_export_is_not_taken_for_a_backbone_nor_a_backbone_for_a_model(weights,
                                                                               tmp_path):
  from attend_jax import run
  from configs import demo

  config = demo.get_config("smoke,detector")
  run.save_export(tmp_path / "detector", tasks.get(config).build_model(), config)
  with pytest.raises(errors.CheckpointError, match="a run's export.*tools/convert_dinov2.py"):
    pretrained.read_config(tmp_path / "detector")
  folder, _ = weights
  with pytest.raises(run.ModelNotFoundError, match="a converted backbone .*model.pretrained="):
    run.load(folder)


def _probe_sharding_while_tracing():
  import jax.numpy as jnp

  def f(x):
    y = jnp.sin(x) + 1
    assert getattr(y, "sharding", None) is None  # flax's probe in Variable.set_value.
    return y

  jax.make_jaxpr(f)(jnp.ones(3))


def test_fast_tracing_skips_the_tracer_origin_walk_and_is_undone_after_the_block(monkeypatch):
  """JAX builds the "became a tracer at ..." lines (a walk over every traced equation) for
  each probe, then drops them; inside fast_tracing it does not, and after it does again."""
  from jax._src.interpreters import partial_eval

  calls = []
  original = partial_eval.DynamicJaxprTracer._origin_msg
  monkeypatch.setattr(partial_eval.DynamicJaxprTracer, "_origin_msg",
                      lambda self: calls.append(1) or original(self))
  _probe_sharding_while_tracing()
  assert len(calls) == 1
  with build.fast_tracing():
    _probe_sharding_while_tracing()
  assert len(calls) == 1
  _probe_sharding_while_tracing()
  assert len(calls) == 2
