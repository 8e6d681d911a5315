"""The RoI detector: points, target assignment and losses against hand-derived values and
plain-python references, then the tiny model's outputs, decoding and an overfit."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from attend_jax import box_ops
from attend_jax.models import detector, vit


def _cfg(input_size=112, **overrides):
  """A tiny detector: a 2-block, 32-wide ViT, a 16-channel pyramid and head."""
  tiny = vit.config_for("vits14", width=32, depth=2, num_heads=2, pretrained_grid=4)
  fields = {"vit": tiny, "fpn_dim": 16, "pre_nms": 40, "max_detections": 10, **overrides}
  return detector.DetectorConfig(input_size=input_size, **fields)


# ----------------------------------------------------------------------------------------------
# Points.
# ----------------------------------------------------------------------------------------------


def test_level_sizes_of_the_dinov2_grid():
  # 518 px = 37 patches. Stride 7 doubles the grid (2 x 2 transposed conv): 74; stride 14 is
  # the grid: 37; stride 28 max-pools by 2 with SAME padding: ceil(37 / 2) = 19; stride 56
  # pools by 4: ceil(37 / 4) = 10.
  cfg = _cfg(518)
  assert cfg.grid == 37
  assert cfg.level_sizes() == (74, 37, 19)
  assert _cfg(518, strides=(7, 14, 28, 56)).level_sizes() == (74, 37, 19, 10)
  # 56 px = 4 patches: 8, 4, 2.
  assert _cfg(56).level_sizes() == (8, 4, 2)
  assert _cfg(56).num_points == 64 + 16 + 4


def test_more_points_into_nms_than_the_detector_has_is_a_clear_error():
  with pytest.raises(ValueError, match=r"pre_nms \(300\) exceeds its 84 points at input_size 56"):
    _cfg(56, pre_nms=300)


@pytest.mark.parametrize("strides", [(7, 14, 28), (14, 28, 56), (28,)])
def test_points_are_cell_centres_level_after_level(strides):
  cfg = _cfg(112, strides=strides, pre_nms=10)
  xy, st = map(np.asarray, detector.points(cfg))
  sizes = cfg.level_sizes()
  assert xy.shape == (sum(n * n for n in sizes), 2) and st.shape == (xy.shape[0],)
  start = 0
  for stride, n in zip(strides, sizes):
    level_xy = xy[start:start + n * n].reshape(n, n, 2)  # Row-major: [row i, column j].
    np.testing.assert_array_equal(st[start:start + n * n], stride)
    c = (np.arange(n) + 0.5) * stride
    np.testing.assert_allclose(level_xy[..., 0], np.broadcast_to(c[None, :], (n, n)))  # x = j
    np.testing.assert_allclose(level_xy[..., 1], np.broadcast_to(c[:, None], (n, n)))  # y = i
    start += n * n


def test_points_hand_values():
  # 112 px, grid 8: levels of 16, 8 and 4 points a side, 256 + 64 + 16 = 336 points.
  xy, st = map(np.asarray, detector.points(_cfg(112)))
  assert xy.shape == (336, 2)
  np.testing.assert_allclose(xy[0], [3.5, 3.5])      # Stride 7, first cell: 0.5 * 7.
  np.testing.assert_allclose(xy[1], [10.5, 3.5])     # x runs fastest.
  np.testing.assert_allclose(xy[16], [3.5, 10.5])    # Second row.
  np.testing.assert_allclose(xy[256], [7.0, 7.0])    # Stride 14 starts after 16 * 16 points.
  np.testing.assert_allclose(xy[320], [14.0, 14.0])  # Stride 28 after 256 + 64.
  np.testing.assert_allclose(xy[-1], [98.0, 98.0])   # (3 + 0.5) * 28.
  assert (st[0], st[255], st[256], st[319], st[320], st[-1]) == (7, 7, 14, 14, 28, 28)


# ----------------------------------------------------------------------------------------------
# Target assignment.
# ----------------------------------------------------------------------------------------------


_assign = jax.jit(detector.assign_targets, static_argnames="cfg")


def _targets(cfg, lesions, mask=None, point_valid=None):
  """One image's positives (P,) and targets (P, 4), with the points (P, 2) and strides (P,)."""
  xy, st = detector.points(cfg)
  lesions = np.asarray(lesions, np.float32).reshape(1, -1, 4)
  mask = np.ones(lesions.shape[:2], bool) if mask is None else np.asarray(mask)[None]
  if point_valid is None:
    point_valid = np.ones(xy.shape[0], bool)
  pos, tgt = _assign(xy, st, jnp.asarray(point_valid)[None], jnp.asarray(lesions),
                     jnp.asarray(mask), cfg=cfg)
  return np.asarray(xy), np.asarray(st), np.asarray(pos[0]), np.asarray(tgt[0])


def _at(xy, st, stride, xs, ys):
  """Mask of the points of level ``stride`` with x in xs and y in ys."""
  return (st == stride) & np.isin(xy[:, 0], xs) & np.isin(xy[:, 1], ys)


# A 42 x 42 lesion centred at (60, 50), in 112 px detector input. Its size 42 equals
# object_scale * 14, so it goes to stride 14 (|log2(42/21)| = 1, |log2(42/42)| = 0,
# |log2(42/84)| = 1). Stride-14 points sit at 7, 21, 35, 49, 63, 77, 91, 105; within
# 1.5 * 14 = 21 (strictly) of x = 60: 49 (11), 63 (3), 77 (17), not 35 (25); of y = 50:
# 35 (15), 49 (1), 63 (13), not 21 (29) nor 77 (27). So 3 x 3 = 9 positives.
LESION_A = (39.0, 29.0, 81.0, 71.0)
A_XS, A_YS = (49.0, 63.0, 77.0), (35.0, 49.0, 63.0)


def test_lesion_positives_are_the_points_near_its_centre_on_its_level():
  xy, st, pos, tgt = _targets(_cfg(), [LESION_A])
  expected = _at(xy, st, 14, A_XS, A_YS)
  assert expected.sum() == 9
  np.testing.assert_array_equal(pos, expected)
  np.testing.assert_array_equal(tgt[pos], np.broadcast_to(LESION_A, (9, 4)))
  np.testing.assert_array_equal(tgt[~pos], 0.0)


@pytest.mark.parametrize("w, h, stride", [
    (10, 10, 7),    # |log2(10/21)| = 1.07 < |log2(10/42)| = 2.07.
    (30, 30, 14),   # |log2(30/21)| = 0.51 > |log2(30/42)| = 0.49.
    (20, 80, 14),   # Size sqrt(20 * 80) = 40, by area: the long side 80 alone would pick 28.
    (70, 70, 28),   # |log2(70/42)| = 0.74 > |log2(70/84)| = 0.26.
    (100, 100, 28),  # The coarsest level takes all larger lesions.
])
def test_lesion_goes_to_the_level_matching_its_size(w, h, stride):
  cx, cy = 56.0, 60.0
  lesion = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
  xy, st, pos, tgt = _targets(_cfg(), [lesion])
  # Plain-numpy statement of the centre rule on the expected level.
  near = (np.abs(xy[:, 0] - cx) < 1.5 * stride) & (np.abs(xy[:, 1] - cy) < 1.5 * stride)
  expected = near & (st == stride)
  assert expected.sum() >= 4
  np.testing.assert_array_equal(pos, expected)
  np.testing.assert_allclose(tgt[pos], np.broadcast_to(lesion, (pos.sum(), 4)))


def test_masked_lesions_make_no_positives():
  _, _, pos, tgt = _targets(_cfg(), [LESION_A], mask=[False])
  assert not pos.any() and not tgt.any()
  # Beside a real lesion, a masked one (here overlapping it, smaller) claims nothing.
  xy, st, pos, tgt = _targets(_cfg(), [LESION_A, (50, 40, 70, 60)], mask=[True, False])
  np.testing.assert_array_equal(pos, _at(xy, st, 14, A_XS, A_YS))
  np.testing.assert_array_equal(tgt[pos], np.broadcast_to(LESION_A, (9, 4)))


def test_invalid_points_are_never_positive():
  cfg = _cfg()
  xy, _ = map(np.asarray, detector.points(cfg))
  valid = xy[:, 0] < 60  # A crop 60 px wide: of A's columns 49, 63, 77 only 49 remains.
  xy, st, pos, _ = _targets(cfg, [LESION_A], point_valid=valid)
  np.testing.assert_array_equal(pos, _at(xy, st, 14, [49.0], A_YS))
  assert not (pos & ~valid).any()


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_a_point_claimed_twice_goes_to_the_smaller_lesion(order):
  # B: 30 x 30 centred at (70, 50), also stride 14 (see the level test). Its columns: within
  # 21 of 70 are 63 (7) and 77 (7), not 49 (21, not strictly less) nor 91 (21); its rows are
  # A's, 35, 49, 63. So B takes A's columns 63 and 77 (area 900 < 1764) and A keeps column 49,
  # whatever the order of the lesions.
  lesion_b = (55.0, 35.0, 85.0, 65.0)
  lesions = [LESION_A, lesion_b]
  xy, st, pos, tgt = _targets(_cfg(), [lesions[i] for i in order])
  owned_a = _at(xy, st, 14, [49.0], A_YS)
  owned_b = _at(xy, st, 14, [63.0, 77.0], A_YS)
  np.testing.assert_array_equal(pos, owned_a | owned_b)
  np.testing.assert_array_equal(tgt[owned_a], np.broadcast_to(LESION_A, (3, 4)))
  np.testing.assert_array_equal(tgt[owned_b], np.broadcast_to(lesion_b, (6, 4)))


def test_a_lesion_smaller_than_the_stride_has_positives():
  # A 4 x 4 lesion centred at (30, 30) goes to stride 7. Stride-7 points: 3.5 + 7k; within
  # 1.5 * 7 = 10.5 of 30: 24.5 (5.5), 31.5 (1.5), 38.5 (8.5), not 17.5 (12.5). 3 x 3 = 9.
  xy, st, pos, tgt = _targets(_cfg(), [(28, 28, 32, 32)])
  np.testing.assert_array_equal(pos, _at(xy, st, 7, [24.5, 31.5, 38.5], [24.5, 31.5, 38.5]))
  np.testing.assert_array_equal(tgt[pos], np.broadcast_to((28, 28, 32, 32), (9, 4)))


def test_the_smallest_center_radius_still_gives_every_lesion_a_positive():
  # Points are one stride apart, so a lesion centre is at most half a stride from the nearest
  # point on either axis; the comparison is strict, so exactly 0.5 can leave a centre on a cell
  # border (here 28 = 4 * 7, 3.5 from 24.5 and from 31.5) with no positive at all.
  with pytest.raises(ValueError, match="center_radius"):
    _cfg(center_radius=0.5)
  cfg = _cfg(center_radius=0.51)
  xy, st, pos, _ = _targets(cfg, [(26, 26, 30, 30)])  # Centre (28, 28) on the border.
  np.testing.assert_array_equal(pos, _at(xy, st, 7, [24.5, 31.5], [24.5, 31.5]))
  centres = np.random.default_rng(0).uniform(2, 110, (20, 2))
  for cx, cy in centres:
    _, _, pos, _ = _targets(cfg, [(cx - 2, cy - 2, cx + 2, cy + 2)])
    assert pos.sum() >= 1, (cx, cy)


# ----------------------------------------------------------------------------------------------
# Losses.
# ----------------------------------------------------------------------------------------------


_losses = jax.jit(detector.losses, static_argnames=("scale", "cfg"))


def _random_boxes(rng, shape, extent=60.0, sizes=(5.0, 30.0)):
  xy = rng.uniform(0, extent, shape + (2,))
  wh = rng.uniform(*sizes, shape + (2,))
  return np.concatenate([xy, xy + wh], -1).astype(np.float32)


def _hand_outputs(seed=0):
  """Dense outputs of two 112 px images, made by hand: random logits and boxes, image 0's
  points valid left of x = 100, image 1's above y = 80."""
  cfg = _cfg(112)
  xy, st = map(np.asarray, detector.points(cfg))
  rng = np.random.default_rng(seed)
  p = xy.shape[0]
  point_valid = np.stack([xy[:, 0] < 100, xy[:, 1] < 80])
  out = {"logits": rng.normal(0, 2, (2, p)).astype(np.float32),
         "boxes": _random_boxes(rng, (2, p), extent=100),
         "point_valid": point_valid, "points": xy, "strides": st}
  return cfg, out


def _focal_reference(out, labels, cfg):
  per_point = optax.sigmoid_focal_loss(out["logits"], labels, alpha=cfg.focal_alpha,
                                       gamma=cfg.focal_gamma)
  return float(np.sum(np.where(out["point_valid"], per_point, 0.0)))


# Image 0 holds LESION_A in detector pixels; stored images are 224 px, so scale = 0.5 and the
# lesion is stored at twice its detector coordinates. Image 1's lesion slot is masked.
SCALE = 0.5
LESIONS = np.array([[[2 * v for v in LESION_A]], [[0, 0, 50, 50]]], np.float32)
LESION_MASK = np.array([[True], [False]])


def test_losses_vanish_on_exact_boxes_and_focal_matches_optax():
  cfg, out = _hand_outputs()
  positive = np.zeros(out["logits"].shape, bool)
  positive[0] = _at(out["points"], out["strides"], 14, A_XS, A_YS)
  out["boxes"][positive] = LESION_A
  terms = _losses({k: jnp.asarray(v) for k, v in out.items()}, LESIONS, LESION_MASK,
                  scale=SCALE, cfg=cfg)
  assert float(terms["positives"]) == 9
  focal = _focal_reference(out, positive.astype(np.float32), cfg) / 9
  np.testing.assert_allclose(terms["focal"], focal, rtol=1e-5)
  np.testing.assert_allclose(terms["giou"], 0.0, atol=1e-6)
  np.testing.assert_allclose(terms["l1"], 0.0, atol=1e-6)
  np.testing.assert_allclose(terms["loss"], focal, rtol=1e-5)


def test_losses_of_shifted_boxes_hand_values():
  cfg, out = _hand_outputs(seed=1)
  positive = np.zeros(out["logits"].shape, bool)
  positive[0] = _at(out["points"], out["strides"], 14, A_XS, A_YS)
  # Every positive predicts A moved 7 px right. L1 in strides: mean(7, 0, 7, 0) / 14 = 0.25.
  # GIoU: overlap 35 x 42 = 1470, union 2 * 1764 - 1470 = 2058, hull 49 x 42 = 2058 = union,
  # so GIoU = IoU = 1470 / 2058 = 5/7, and 1 - GIoU = 2/7.
  out["boxes"][positive] = np.add(LESION_A, [7, 0, 7, 0])
  terms = _losses({k: jnp.asarray(v) for k, v in out.items()}, LESIONS, LESION_MASK,
                  scale=SCALE, cfg=cfg)
  focal = _focal_reference(out, positive.astype(np.float32), cfg) / 9
  np.testing.assert_allclose(terms["giou"], 2 / 7, rtol=1e-5)
  np.testing.assert_allclose(terms["l1"], 0.25, rtol=1e-5)
  np.testing.assert_allclose(terms["loss"], focal + 2.0 * 2 / 7 + 1.0 * 0.25, rtol=1e-5)


def test_losses_without_lesions_are_finite():
  cfg, out = _hand_outputs(seed=2)
  out = {k: jnp.asarray(v) for k, v in out.items()}
  mask = np.zeros((2, 1), bool)
  terms = _losses(out, LESIONS, mask, scale=SCALE, cfg=cfg)
  assert float(terms["positives"]) == 0
  # No positives: the focal sum over valid points is divided by 1, not 0.
  focal = _focal_reference(out, np.zeros(out["logits"].shape, np.float32), cfg)
  np.testing.assert_allclose(terms["focal"], focal, rtol=1e-5)
  assert float(terms["giou"]) == 0 and float(terms["l1"]) == 0
  assert np.isfinite(float(terms["loss"]))


@pytest.mark.parametrize("with_lesions", [True, False])
def test_loss_gradients_are_finite_and_masked(with_lesions):
  cfg, out = _hand_outputs(seed=3)
  out = {k: jnp.asarray(v) for k, v in out.items()}
  mask = LESION_MASK & with_lesions

  def loss(logits, boxes):
    return detector.losses({**out, "logits": logits, "boxes": boxes}, LESIONS, mask, SCALE,
                           cfg)["loss"]

  g_logits, g_boxes = map(np.asarray, jax.jit(jax.grad(loss, (0, 1)))(out["logits"],
                                                                       out["boxes"]))
  assert np.isfinite(g_logits).all() and np.isfinite(g_boxes).all()
  valid = np.asarray(out["point_valid"])
  assert (g_logits[~valid] == 0).all() and (g_logits[valid] != 0).all()
  positive = np.zeros(valid.shape, bool)
  if with_lesions:
    positive[0] = _at(np.asarray(out["points"]), np.asarray(out["strides"]), 14, A_XS, A_YS)
  # Box gradients only at positives: 9 of them, or none.
  np.testing.assert_array_equal(np.any(g_boxes != 0, axis=-1), positive)


# ----------------------------------------------------------------------------------------------
# The model.
# ----------------------------------------------------------------------------------------------


# Compiling, not running, is what takes time with these tiny models on CPU: without XLA's
# backend optimisations they compile several times faster and still run in milliseconds.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _jit(fn):
  """``jax.jit`` of ``fn(model, *args)`` with ``_FAST_COMPILE``."""

  @functools.partial(jax.jit, static_argnums=0, compiler_options=_FAST_COMPILE)
  def run(graphdef, state, *args):
    return fn(nnx.merge(graphdef, state), *args)

  return lambda model, *args: run(*nnx.split(model), *args)


_forward = _jit(lambda model, images, hw: model(images, hw))
_detect = _jit(lambda model, images, hw: model.detect(images, hw))

# Stored images are 100 px squares, the detector's input 56 px: scale 0.56.
STORED = 100
HW = np.array([[100, 100], [50, 80]])  # Image 1: a 50 px high, 80 px wide crop, then padding.


@pytest.fixture(scope="module")
def model():
  """The tiny detector on a 56 px input, initialised under ``jit``."""
  cfg = _cfg(56)
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: detector.Detector(cfg, rngs=nnx.Rngs(0))))
  state = jax.jit(lambda: nnx.state(detector.Detector(cfg, rngs=nnx.Rngs(0))),
                  compiler_options=_FAST_COMPILE)()
  return nnx.merge(graphdef, state)


@pytest.fixture(scope="module")
def images():
  images = np.random.default_rng(0).random((2, STORED, STORED)).astype(np.float32)
  images[1, 50:] = images[1, :, 80:] = 0.0  # Zero padding beyond the crop.
  return jnp.asarray(images)


def test_forward_shapes_and_initial_boxes(model, images):
  out = _forward(model, images, jnp.asarray(HW))
  p = 8 * 8 + 4 * 4 + 2 * 2
  assert out["logits"].shape == (2, p) and out["boxes"].shape == (2, p, 4)
  assert out["point_valid"].shape == (2, p)
  assert out["points"].shape == (p, 2) and out["strides"].shape == (p,)
  np.testing.assert_array_equal(out["points"], detector.points(model.cfg)[0])
  # At initialisation every point predicts the prior probability and a box centred on itself,
  # object_scale = 3 strides wide (the head's bias; its kernels are small).
  prior = math.log(0.01 / 0.99)
  np.testing.assert_allclose(out["logits"], prior, atol=0.5)
  boxes, xy, s = map(np.asarray, (out["boxes"], out["points"], out["strides"]))
  centre, size = (boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]
  assert (np.abs(centre - xy) < 0.5 * s[:, None]).all()
  ratio = size / (3 * s[:, None])
  assert (ratio > math.exp(-0.5)).all() and (ratio < math.exp(0.5)).all()


def test_points_over_the_padding_are_invalid(model, images):
  valid = np.asarray(_forward(model, images, jnp.asarray(HW))["point_valid"])
  # Image 0 fills the input: every point is valid, even the last stride-28 centre (42 < 56).
  assert valid[0].all()
  # Image 1's crop is 80 x 50 stored pixels, 44.8 x 28 in the 56 px input. Stride 7 (centres
  # 3.5 + 7k): x < 44.8 for k <= 5 (38.5), y < 28 for k <= 3 (24.5): 6 x 4 = 24. Stride 14
  # (7, 21, 35, 49): 3 x 2 = 6. Stride 28 (14, 42): 2 x 1 = 2. In all 32.
  assert valid[1].sum() == 32
  xy = np.asarray(detector.points(model.cfg)[0])
  np.testing.assert_array_equal(valid[1], (xy[:, 0] < 80 * 0.56) & (xy[:, 1] < 50 * 0.56))


def test_detect_boxes_scores_and_proposals(model, images):
  cfg = model.cfg
  hw = jnp.asarray(HW)
  det = {k: np.asarray(v) for k, v in _detect(model, images, hw).items()}
  out = {k: np.asarray(v) for k, v in _forward(model, images, hw).items()}
  n = cfg.max_detections
  assert det["boxes"].shape == (2, n, 4) and det["scores"].shape == det["valid"].shape == (2, n)
  for b, (h, w) in enumerate(HW):
    boxes, scores, valid = det["boxes"][b], det["scores"][b], det["valid"][b]
    assert valid.any()
    assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= w).all() and (boxes[:, [1, 3]] <= h).all()
    assert (np.diff(scores[valid]) <= 0).all()  # Best first.
    assert valid[:valid.sum()].all() and (scores[~valid] == 0).all()  # Padding at the end.
    # Every score is the probability of a point on the crop, the first one the best of them.
    probs = 1 / (1 + np.exp(-out["logits"][b][out["point_valid"][b]]))
    assert all(np.isclose(probs, sc, rtol=1e-6, atol=0).any() for sc in scores[valid])
    assert scores[0] == pytest.approx(probs.max(), rel=1e-6)
    # Its box: the best valid point's, back in stored pixels (/ 0.56), clipped to the crop.
    best = np.flatnonzero(out["point_valid"][b])[np.argmax(probs)]
    expected = np.clip(out["boxes"][b, best] / 0.56, 0, [w, h, w, h])
    np.testing.assert_allclose(boxes[0], expected, rtol=1e-5, atol=1e-4)
    # Kept boxes overlap each other by no more than the NMS threshold.
    iou = np.asarray(box_ops.pairwise_iou(boxes[valid], boxes[valid]))
    assert (iou[np.triu_indices(valid.sum(), 1)] <= cfg.nms_iou + 1e-6).all()
  props, mask = map(np.asarray, detector.as_proposals(det))
  assert props.shape == (2, n, 5)
  np.testing.assert_array_equal(mask, det["valid"])
  x0, y0, x1, y1 = np.moveaxis(det["boxes"], -1, 0)
  np.testing.assert_allclose(props[..., 0], (x0 + x1) / 2, rtol=1e-6)
  np.testing.assert_allclose(props[..., 1], (y0 + y1) / 2, rtol=1e-6)
  np.testing.assert_allclose(props[..., 2], x1 - x0, rtol=1e-6)
  np.testing.assert_allclose(props[..., 3], y1 - y0, rtol=1e-6)
  np.testing.assert_array_equal(props[..., 4], det["scores"])


@pytest.mark.slow
def test_tiny_detector_overfits_two_squares(model):
  """Two bright squares on black, one per image: the loss falls by an order of magnitude and
  each square gets a box with IoU > 0.5 among the top three detections."""
  # 28 and 36 stored px squares are 15.7 and 20.2 px in the 56 px input: stride 7 lesions.
  squares = np.array([[[10, 14, 38, 42]], [[50, 40, 86, 76]]], np.float32)
  pixels = np.zeros((2, STORED, STORED), np.float32)
  for pixel, (x0, y0, x1, y1) in zip(pixels, squares[:, 0].astype(int)):
    pixel[y0:y1, x0:x1] = 1.0
  pixels, hw = jnp.asarray(pixels), jnp.asarray([[STORED, STORED]] * 2)
  mask = jnp.ones((2, 1), bool)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)  # The fixture stays untrained.
  tx = optax.adam(2e-3)

  @functools.partial(jax.jit, compiler_options=_FAST_COMPILE)
  def step(params, opt_state):
    def loss_fn(params):
      net = nnx.merge(graphdef, params, rest)
      return detector.losses(net(pixels, hw), squares, mask, net.scale(STORED), net.cfg)["loss"]

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state, history = tx.init(params), []
  for _ in range(120):
    params, opt_state, loss = step(params, opt_state)
    history.append(float(loss))
  assert np.isfinite(history).all()
  assert np.mean(history[-10:]) < history[0] / 10, history[::10]
  net = nnx.merge(graphdef, params, rest)
  det = _detect(net, pixels, hw)
  iou = np.asarray(box_ops.pairwise_iou(det["boxes"][:, :3], jnp.asarray(squares)))[..., 0]
  assert np.asarray(det["valid"])[:, 0].all()
  assert (iou.max(axis=1) > 0.5).all(), iou
