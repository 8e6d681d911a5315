"""Losses: reference semantics, hard-negative weighting, and global-batch sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from jax.sharding import NamedSharding, PartitionSpec as P

from attend_jax import losses
from attend_jax.train import sharding


def test_bce_matches_torch_pos_weight():
  rng = np.random.default_rng(0)
  logits, labels = rng.normal(size=16).astype(np.float32), rng.integers(0, 2, 16)
  expected = F.binary_cross_entropy_with_logits(torch.tensor(logits), torch.tensor(labels).float(),
                                                pos_weight=torch.tensor(10.0))
  np.testing.assert_allclose(losses.bce_with_logits(logits, labels, 10.0), expected.item(),
                             rtol=1e-6)


def test_softmax_ce_with_label_smoothing_matches_torch():
  rng = np.random.default_rng(1)
  logits, labels = rng.normal(size=(8, 2)).astype(np.float32), rng.integers(0, 2, 8)
  expected = F.cross_entropy(torch.tensor(logits), torch.tensor(labels), label_smoothing=0.1)
  np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels, 0.1), expected.item(),
                             rtol=1e-6)


def _reference_repulsive(emb, eps=1e-8):
  emb = F.normalize(torch.tensor(emb)[:, 1:], dim=-1)
  k = emb.shape[1]
  sim = torch.einsum("bkd,bjd->bkj", emb, emb).masked_fill(torch.eye(k, dtype=torch.bool), 0)
  return ((sim * sim).sum(dim=(1, 2)) / (k * (k - 1) + eps)).mean().item()


def test_repulsive_matches_reference():
  emb = np.random.default_rng(2).normal(size=(3, 5, 16)).astype(np.float32)
  np.testing.assert_allclose(losses.repulsive(emb), _reference_repulsive(emb), rtol=1e-5)


def _plain_supcon(z, classes, tau):
  """The beta=0 loss written out with loops, as a check of the vectorised one."""
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  s = z @ z.T / tau
  per_anchor = []
  for i in range(len(z)):
    pos = [j for j in range(len(z)) if j != i and classes[j] == classes[i]]
    neg = [j for j in range(len(z)) if classes[j] != classes[i]]
    if not pos or not neg:
      continue
    neg_sum = sum(np.exp(s[i, n]) for n in neg)
    per_anchor.append(np.mean([-np.log(np.exp(s[i, p]) / (np.exp(s[i, p]) + neg_sum)) for p in pos]))
  return np.mean(per_anchor)


def test_supcon_without_reweighting_matches_the_formula():
  rng = np.random.default_rng(3)
  z, classes = rng.normal(size=(10, 8)), np.array([0, 1, 0, 0, 1, 1, 0, 2, 1, 0])
  got = losses.hard_negative_supcon(jnp.asarray(z, jnp.float32), classes, temperature=0.5, beta=0)
  np.testing.assert_allclose(got, _plain_supcon(z, classes, 0.5), rtol=1e-5)


# Jitted: op by op, these small calls compiled each primitive alone (15-19 s a test).
_supcon = jax.jit(losses.hard_negative_supcon, static_argnames=("temperature", "beta", "top_m"))


def test_hard_negatives_get_more_weight_and_more_gradient():
  anchor = np.array([1.0, 0.0, 0.0])
  positive = np.array([0.9, 0.3, 0.0])
  hard = np.array([0.95, 0.0, 0.3])   # Other class, close to the anchor.
  easy = np.array([-1.0, 0.2, 0.0])   # Other class, far away.
  z = jnp.asarray(np.stack([anchor, positive, hard, easy]), jnp.float32)
  classes = jnp.array([1, 1, 0, 0])
  sim = z @ z.T / jnp.linalg.norm(z, axis=1)[:, None] / jnp.linalg.norm(z, axis=1)[None]
  negatives = classes[:, None] != classes[None, :]
  w = losses.negative_weights(sim, negatives, beta=2.0)
  assert w[0, 2] > 1.0 > w[0, 3] > 0.0
  np.testing.assert_allclose(w[0, 2] + w[0, 3], 2.0, rtol=1e-6)  # Mean 1 over negatives.
  w_top = losses.negative_weights(sim, negatives, top_m=1)
  assert w_top[0, 3] == 0.0 and w_top[0, 2] > 0.0

  def grads(beta):
    g = jax.jit(jax.grad(lambda e: _supcon(e, classes, temperature=0.5, beta=beta)))(z)
    return np.linalg.norm(np.asarray(g), axis=1)

  flat, hard_weighted = grads(0.0), grads(4.0)
  # Reweighting moves gradient from the easy negative to the hard one.
  assert hard_weighted[2] / hard_weighted[3] > flat[2] / flat[3]
  assert _supcon(z, classes, temperature=0.5, beta=4.0) > \
      _supcon(z, classes, temperature=0.5, beta=0.0)


def test_padding_and_single_class_batches_are_safe():
  z = jnp.asarray(np.random.default_rng(4).normal(size=(6, 4)), jnp.float32)
  one_class = _supcon(z, jnp.zeros(6, int))
  assert float(one_class) == 0.0
  g = jax.jit(jax.grad(lambda e: _supcon(e, jnp.zeros(6, int))))(z)
  assert np.isfinite(np.asarray(g)).all()
  valid = jnp.array([True, True, True, True, False, False])
  classes = jnp.array([0, 1, 0, 1, 1, 0])
  masked = _supcon(z, classes, valid)
  dropped = _supcon(z[:4], classes[:4])
  np.testing.assert_allclose(masked, dropped, rtol=1e-6)


@pytest.mark.parametrize("beta,top_m", [(1.0, 0), (0.0, 3)])
def test_global_batch_on_8_devices_equals_one_device(beta, top_m):
  rng = np.random.default_rng(5)
  z = rng.normal(size=(32, 16)).astype(np.float32)
  classes = rng.integers(0, 2, 32)
  fn = lambda e, c: losses.hard_negative_supcon(e, c, temperature=0.2, beta=beta, top_m=top_m)
  ref_loss, ref_grad = jax.value_and_grad(fn)(z, classes)

  mesh = sharding.make_mesh(data=8, fsdp=1)
  spec = NamedSharding(mesh, P("data"))
  z_sharded, c_sharded = jax.device_put(z, spec), jax.device_put(classes, spec)
  assert len(z_sharded.addressable_shards) == 8
  loss, grad = jax.jit(jax.value_and_grad(fn))(z_sharded, c_sharded)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-7)
  # A per-device loss would see only 4 items per shard: the global one differs from it.
  local = np.mean([fn(z[i:i + 4], classes[i:i + 4]) for i in range(0, 32, 4)])
  assert abs(local - float(ref_loss)) > 1e-3


def test_the_contrastive_weight_warms_up_linearly_then_holds():
  from attend_jax.tasks import classify
  from configs import demo

  config = demo.get_config("smoke")
  config.loss.contrastive_weight, config.loss.contrastive_warmup = 0.5, 100
  weights = [float(classify.contrastive_weight(config, jnp.asarray(s))) for s in (0, 25, 100, 400)]
  np.testing.assert_allclose(weights, [0.0, 0.125, 0.5, 0.5])
  config.loss.contrastive_warmup = 0  # Off: the full weight from the first update.
  assert classify.contrastive_weight(config, jnp.asarray(0)) == 0.5
