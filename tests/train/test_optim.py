"""The optimizer: frozen blocks, layer-wise lr decay, schedules and gradient accumulation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from attend_jax.train import optim
from configs import common


def _params():
  leaf = lambda: jnp.ones((3,))
  return {"vision_model": {"patch_embed": {"proj": {"kernel": leaf()}},
                           "blocks": {0: {"w": leaf()}, 1: {"w": leaf()}, 2: {"w": leaf()}}},
          "fc1": {"kernel": leaf()}}


def _config(**optim_kw):
  c = common.base()
  c.model.freeze_blocks = 1
  c.optim.lr, c.optim.weight_decay = 0.1, 0.0
  c.train.steps = 10
  for k, v in optim_kw.items():
    c.optim[k] = v
  return c


def _one_update(cfg, params, steps=1):
  tx = optim.make(cfg, params, vit_depth=3)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  for _ in range(steps):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params


def test_frozen_patch_embedding_and_first_blocks_do_not_move():
  before = _params()
  after = _one_update(_config(), before)
  np.testing.assert_array_equal(after["vision_model"]["patch_embed"]["proj"]["kernel"], 1.0)
  np.testing.assert_array_equal(after["vision_model"]["blocks"][0]["w"], 1.0)
  assert (after["vision_model"]["blocks"][1]["w"] < 1.0).all()
  assert (after["fc1"]["kernel"] < 1.0).all()


def test_layer_decay_scales_the_step_by_depth():
  after = _one_update(_config(layer_decay=0.5), _params())
  step = lambda x: 1.0 - float(np.asarray(x)[0])
  b1, b2 = step(after["vision_model"]["blocks"][1]["w"]), step(after["vision_model"]["blocks"][2]["w"])
  head = step(after["fc1"]["kernel"])
  np.testing.assert_allclose(b1 / b2, 0.5, rtol=1e-4)   # 0.5**2 against 0.5**1.
  np.testing.assert_allclose(b2 / head, 0.5, rtol=1e-4)


def test_gradient_accumulation_updates_every_k_steps():
  cfg = _config(grad_accum=2)
  one = _one_update(cfg, _params(), steps=1)
  two = _one_update(cfg, _params(), steps=2)
  np.testing.assert_array_equal(one["fc1"]["kernel"], 1.0)
  assert (two["fc1"]["kernel"] < 1.0).all()


def test_schedules():
  c = _config(schedule="cosine", warmup_steps=4)
  sched = optim.schedule(c)
  assert float(sched(0)) == 0.0 and abs(float(sched(4)) - 0.1) < 1e-6
  assert float(sched(10)) < 0.01
  assert float(optim.schedule(_config())(7)) == 0.1
