"""Golden snapshot of the parameter layout on the 8-device mesh, as maxtext keeps one.

Every parameter of tiny models that hold every layer kind (the Attend classifier with register
tokens, a SwiGLU ViT, the contrastive head and the learned CLS pool token; the RoI detector)
is listed with its shape and the PartitionSpec it gets on a ``data 1 x fsdp 8`` mesh. A layer
whose sharding changes (an annotation added, dropped or moved, a dimension the axis no longer
divides) fails the test, naming the parameter. When the change is intended, regenerate the
file and commit it with the change:

  ATTEND_JAX_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/train/test_sharding_golden.py
"""

import json
import os
import pathlib

import jax
from flax import nnx

from attend_jax import tasks
from attend_jax.train import optim, sharding
from configs import common

GOLDEN = pathlib.Path(__file__).with_name("sharding_golden.json")
TINY_VIT = {"width": 32, "depth": 2, "num_heads": 2, "pretrained_grid": 4}


def _configs() -> dict:
  classify = common.base()
  classify.model.variant = "vits14"
  classify.model.registers = True
  classify.model.vit_overrides.update(TINY_VIT)
  classify.model.roi_size = 56
  classify.model.pool = "cls"
  classify.loss.contrastive_weight = 0.1
  swiglu = classify.copy_and_resolve_references()
  swiglu.model.variant = "vitg14"  # The SwiGLU MLP; registers off.
  swiglu.model.registers = False
  swiglu.model.vit_overrides.update({**TINY_VIT, "num_heads": 4})
  swiglu.model.pool = "anchor"
  detect = classify.copy_and_resolve_references()
  detect.task = "detect"
  detect.detector.input_size = 112
  detect.detector.fpn_dim = 32
  detect.detector.pre_nms = 100
  return {"classify": classify, "classify_swiglu": swiglu, "detect": detect}


def _path(path) -> str:
  keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
  return "/".join(keys[:-1] if keys[-1] == "value" else keys)


def layout(config, mesh) -> dict[str, str]:
  """``path -> "shape spec"`` of every parameter and BatchNorm statistic."""
  with jax.set_mesh(mesh):
    model = nnx.eval_shape(lambda: tasks.get(config).build_model(0))
  state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
  shardings = sharding.state_shardings(state, mesh)
  return {_path(p): f"{tuple(x.shape)} {s.spec}" for (p, x), s in
          zip(jax.tree_util.tree_flatten_with_path(state)[0], jax.tree.leaves(shardings))}


def current() -> dict:
  mesh = sharding.make_mesh(data=1, fsdp=8)
  return {name: layout(c, mesh) for name, c in _configs().items()}


def test_parameter_shardings_match_the_golden_file():
  got = current()
  if os.environ.get("ATTEND_JAX_UPDATE_GOLDEN"):
    GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
  want = json.loads(GOLDEN.read_text())
  assert sorted(got) == sorted(want)
  for model in want:
    missing = sorted(set(want[model]) - set(got[model]))
    added = sorted(set(got[model]) - set(want[model]))
    changed = [f"{p}: {want[model][p]} -> {got[model][p]}" for p in sorted(want[model])
               if p in got[model] and got[model][p] != want[model][p]]
    assert not (missing or added or changed), (
        f"{model}: the sharding layout changed (regenerate with ATTEND_JAX_UPDATE_GOLDEN=1 if"
        f" intended, see this file's docstring)\n  missing: {missing}\n  added: {added}\n"
        "  changed:\n    " + "\n    ".join(changed))


def test_the_golden_layout_shards_the_backbone():
  # Guards the golden file itself: a regenerated snapshot with nothing sharded would pass.
  want = json.loads(GOLDEN.read_text())["classify"]
  assert "(32, 96) P(None, 'fsdp')" == want["vision_model/blocks/0/attn/qkv/kernel"]
  assert sum("'fsdp'" in v for v in want.values()) == 2 * 4 + 1  # 4 matrices a block, patches.


def test_optimizer_moments_are_sharded_like_their_parameters():
  config = _configs()["classify"]
  config.model.freeze_blocks = -1  # Frozen parameters have no moments.
  mesh = sharding.make_mesh(data=1, fsdp=8)
  with jax.set_mesh(mesh):
    model = nnx.eval_shape(lambda: tasks.get(config).build_model(0))
  params = nnx.state(model, nnx.Param)
  params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        params, sharding.state_shardings(params, mesh))
  tx = optim.make(config, params, model.cfg.vit.depth)
  specs = {_path(p): x.sharding.spec for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  moments, sharded = 0, 0
  for path, s in jax.tree_util.tree_flatten_with_path(
      sharding.opt_state_shardings(tx.init, params, mesh))[0]:
    path = _path(path)
    for name in ("/mu/", "/nu/"):
      if name in path:
        assert s.spec == specs[path.split(name, 1)[1]], path
        moments += 1
        sharded += "fsdp" in str(s.spec)
  assert moments == 2 * len(specs)
  assert sharded == 2 * (2 * 4 + 1)
