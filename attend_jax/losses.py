"""Losses as pure functions of arrays.

The contrastive loss is written on **global** arrays: inside a jitted step whose batch is
sharded over a mesh, XLA gathers what the (N, N) similarity needs, so every example is
contrasted with the examples of every other device, not only its own shard.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


_NEG = -1e9  # Stands for -inf in masked log-sum-exps.


def _masked_mean(values: jax.Array, weights: jax.Array | None) -> jax.Array:
  if weights is None:
    return jnp.mean(values)
  weights = weights.astype(values.dtype)
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def bce_with_logits(logits: jax.Array, labels: jax.Array, pos_weight: float = 1.0,
                    weights: jax.Array | None = None) -> jax.Array:
  """torch's BCEWithLogitsLoss(pos_weight=...): positives' log-loss is scaled by pos_weight."""
  labels = labels.astype(jnp.float32)
  logits = logits.astype(jnp.float32)
  losses = -(pos_weight * labels * jax.nn.log_sigmoid(logits)
             + (1 - labels) * jax.nn.log_sigmoid(-logits))
  return _masked_mean(losses, weights)


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0,
                          weights: jax.Array | None = None) -> jax.Array:
  """Cross-entropy over (B, C) logits with integer labels and optional label smoothing."""
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes)
  targets = targets * (1 - label_smoothing) + label_smoothing / num_classes
  losses = -jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1)
  return _masked_mean(losses, weights)


def _normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def repulsive(roi_embeddings: jax.Array, exclude_anchor: bool = True, eps: float = 1e-8
              ) -> jax.Array:
  """The reference's repulsive term: mean over images of the mean squared off-diagonal cosine
  similarity between an image's RoI embeddings (the anchor, RoI 0, left out)."""
  emb = roi_embeddings[:, 1:] if exclude_anchor else roi_embeddings
  k = emb.shape[1]
  if k <= 1:
    return jnp.zeros((), jnp.float32)
  z = _normalize(emb.astype(jnp.float32))
  sim = jnp.einsum("bkd,bjd->bkj", z, z) * (1 - jnp.eye(k))
  return jnp.mean(jnp.sum(sim**2, axis=(1, 2)) / (k * (k - 1) + eps))


def negative_weights(similarity: jax.Array, negatives: jax.Array, beta: float = 0.0,
                     top_m: int = 0) -> jax.Array:
  """Importance of each negative per anchor, normalised to mean 1 over the anchor's negatives.

  ``beta`` > 0 is the reweighting of Robinson et al. 2021 ("Contrastive learning with hard
  negative samples"): q(n) ∝ exp(beta * s_in), so negatives that look like the anchor count
  more. ``top_m`` > 0 keeps only each anchor's m most similar negatives (hard mining).
  Zero outside ``negatives``.
  """
  neg = negatives.astype(jnp.float32)
  count = jnp.maximum(jnp.sum(neg, axis=1, keepdims=True), 1.0)
  if top_m > 0:
    masked = jnp.where(negatives, similarity, -jnp.inf)
    kth = -jnp.sort(-masked, axis=1)[:, min(top_m, similarity.shape[1]) - 1:][:, :1]
    keep = negatives & (similarity >= kth)
    keep_f = keep.astype(jnp.float32)
    return keep_f * count / jnp.maximum(jnp.sum(keep_f, axis=1, keepdims=True), 1.0)
  # Finite fillers keep rows without negatives free of NaN, in values and in gradients.
  logits = jnp.where(negatives, beta * similarity, _NEG)
  logits = logits - jax.lax.stop_gradient(jnp.max(logits, axis=1, keepdims=True))
  w = jnp.where(negatives, jnp.exp(logits), 0.0)
  return w * count / jnp.maximum(jnp.sum(w, axis=1, keepdims=True), 1e-30)


def hard_negative_supcon(embeddings: jax.Array, classes: jax.Array,
                         valid: jax.Array | None = None, temperature: float = 0.1,
                         beta: float = 1.0, top_m: int = 0) -> jax.Array:
  """Supervised contrastive loss with hard negatives, over all N items of the global batch.

  Args:
    embeddings: (N, D) projections; they are L2-normalised here.
    classes: (N,) int. Items of the same class are positives, others negatives. Pass image
      embeddings with their labels and, optionally, RoI embeddings: RoIs that hit a lesion of a
      malignant image take class 1, its other RoIs class 0, which makes them the hard negatives
      of their own image.
    valid: (N,) bool, False for padding items.
    temperature: tau.
    beta, top_m: negative weighting, see ``negative_weights``.

  For anchor i and positive p: ``-log(e^{s_ip/τ} / (e^{s_ip/τ} + Σ_n w_in e^{s_in/τ}))``,
  averaged over positives, then over anchors that have a positive and a negative.
  """
  n = embeddings.shape[0]
  valid = jnp.ones((n,), bool) if valid is None else valid
  z = _normalize(embeddings.astype(jnp.float32))
  sim = z @ z.T
  pair = valid[:, None] & valid[None, :] & ~jnp.eye(n, dtype=bool)
  same = classes[:, None] == classes[None, :]
  positives, negatives = pair & same, pair & ~same
  w = negative_weights(sim, negatives, beta, top_m)
  logits = sim / temperature
  # log Σ_n w_in e^{s_in/τ}, stably.
  neg_logits = jnp.where(w > 0, logits + jnp.log(jnp.where(w > 0, w, 1.0)), _NEG)
  neg_lse = jax.nn.logsumexp(neg_logits, axis=1, keepdims=True)
  per_pair = jnp.logaddexp(logits, neg_lse) - logits  # -log(e^pos / (e^pos + neg)).
  num_pos = jnp.sum(positives, axis=1)
  has_both = (num_pos > 0) & (jnp.sum(negatives, axis=1) > 0)
  per_anchor = jnp.sum(jnp.where(positives, per_pair, 0.0), axis=1) / jnp.maximum(num_pos, 1)
  return _masked_mean(per_anchor, has_both)
