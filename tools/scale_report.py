r"""What a config's training step costs at production scale, from the compiler, before any
accelerator is paid for.

  python tools/scale_report.py --config=configs/vindr.py                # 8 devices, data-only
  python tools/scale_report.py --config=configs/vindr.py --config.mesh.fsdp=8
  python tools/scale_report.py --config=configs/vindr_reference.py --devices=1

On ``--devices`` simulated CPU devices it lowers and compiles the trainer's own train step
(``trainer.make_train_step``) and evaluation step (``eval.loop.predict_step``) for the
config's real shapes, with the trainer's parameter, optimiser-state and batch shardings, from
abstract values only (``nnx.eval_shape``, ShapeDtypeStructs): no data, no weights. Attention is
traced as on an accelerator (``attention.attention_as_on``), not with the CPU's loop over heads.

It prints a table and writes JSON (``--out``) with:

- FLOPs per step from ``compiled.cost_analysis()`` (XLA counts every op; the partitioned
  module is one device's share) against an analytic count of the model's matmuls (ViT,
  on-device RoI crop, box embedding, aggregator, head, projections), and the matmul FLOPs
  read from the optimised HLO's ``dot`` ops;
- per-device memory from ``compiled.memory_analysis()`` (arguments, outputs, temporaries,
  peak) against an H100 (80 GB) and a v5e chip (16 GB), and the largest per-device batch that
  fits each: the step is compiled at two per-device batches and the peak extrapolated linearly
  (parameters and optimiser state are fixed, activations grow with the batch);
- the collectives of the optimised HLO (all-reduce, all-gather, reduce-scatter, ...) with
  their bytes per step, for the config's mesh and a ``data x fsdp`` mesh (``--compare_fsdp``);
- the step time and images/s projected at ``--mfu`` of each chip's peak, and the time the
  collectives need at the chip's published link bandwidth;
- for a float32 batch-4 config (configs/vindr_reference.py), the same projection for the
  reference's PyTorch step, which is float32 on one GPU.

Caveats, as the numbers are XLA:CPU's: its fusion and buffer assignment differ from XLA:GPU's
and XLA:TPU's, so memory is an estimate; attention uses XLA's own kernel (the full score
matrix, as on TPU), where cuDNN's fused attention on an H100 keeps only per-row statistics, so
the H100 temporaries are an upper bound; XLA:CPU does not turn all-reduces into
reduce-scatters as the GPU and TPU pipelines do, so fsdp gradients may show as all-reduces
(the bytes are the same or fewer on an accelerator).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time

import jax
import numpy as np
from absl import flags
from flax import nnx
from jax.sharding import NamedSharding
from ml_collections import config_flags

from attend_jax import cli, tasks
from attend_jax.data import pipeline
from attend_jax.eval import loop as eval_loop
from attend_jax.models import attend, attention, vit
from attend_jax.train import optim, sharding, trainer
from bench_util import forward_flops
from hlo_util import COLLECTIVES, collectives, hlo_dot_flops

_CONFIG = config_flags.DEFINE_config_file("config", None, "A training config.", lock_config=False)
_DEVICES = flags.DEFINE_integer("devices", 8, "Simulated CPU devices (one per accelerator).")
_COMPARE_FSDP = flags.DEFINE_integer(
    "compare_fsdp", -1, "fsdp of the second mesh compared with the config's (-1: all devices;"
    " 0: none).")
_MFU = flags.DEFINE_float("mfu", 0.45, "Model FLOPs utilisation assumed for the projections.")
_OUT = flags.DEFINE_string("out", None, "JSON output (default: print only).")
_FIT = flags.DEFINE_bool("fit", True, "Compile a second batch size for the largest batch.")
_EVAL = flags.DEFINE_bool("eval", True, "Compile the evaluation step too.")

GB = 1e9


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  memory_bytes: float
  bf16_flops: float  # Dense peak.
  fp32_flops: float  # What a float32 matmul runs at by default.
  link_bytes_per_s: float  # One direction, per chip, within the box or slice.


# NVIDIA H100 SXM5 datasheet: 80 GB HBM3; 989.4 TFLOP/s BF16 dense (1,979 with sparsity);
# TF32 494.7 dense, which XLA:GPU uses for float32 matmuls at JAX's default precision; FP32
# 66.9 (PyTorch's default, torch.backends.cuda.matmul.allow_tf32 = False); NVLink 4 at
# 900 GB/s bidirectional, so 450 GB/s each way.
# Cloud TPU v5e (cloud.google.com/tpu/docs/v5e): 16 GB HBM2e; 197 TFLOP/s BF16 (float32
# matmuls run as bf16 passes; counted at the same peak); ICI 1,600 Gbps = 200 GB/s per chip.
CHIPS = (Chip("H100", 80 * GB, 989.4e12, 494.7e12, 450 * GB),
         Chip("v5e", 16 * GB, 197e12, 197e12, 200 * GB))
H100_FP32_FLOPS = 66.9e12  # The reference: PyTorch float32 matmuls without TF32.



# --- abstract state, as the trainer lays it out ------------------------------------------------


def _sharded_structs(tree, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      tree, shardings)


def abstract_state(config, mesh):
  """The trainer's state as ShapeDtypeStructs in its layouts: ``(task, model, train_def,
  eval_def, params, stats, rngs, tx, opt_state)``; nothing is allocated."""
  task = tasks.get(config)
  with jax.set_mesh(mesh):
    model = nnx.eval_shape(lambda: task.build_model(config.seed))
  model.train()
  train_def, params, stats, rngs = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  model.eval()
  eval_def = nnx.split(model, nnx.Param, nnx.BatchStat, ...)[0]
  params, stats, rngs = (_sharded_structs(s, sharding.state_shardings(s, mesh))
                         for s in (params, stats, rngs))
  tx = optim.make(config, params, model.cfg.vit.depth)
  opt_state = _sharded_structs(jax.eval_shape(tx.init, params),
                               sharding.opt_state_shardings(tx.init, params, mesh))
  return task, model, train_def, eval_def, params, stats, rngs, tx, opt_state


def batch_structs(config, batch_size: int, mesh) -> dict:
  """The pipeline's batch (``pipeline.to_fixed_shapes`` of an empty record, ``batch_size``
  rows) as ShapeDtypeStructs split over the mesh like ``sharding.to_global``'s."""
  cfg = pipeline.for_split(config, "train", train=True)
  empty = {"image": np.zeros((1, 1), np.uint16), "lesion_boxes": np.zeros((0, 4), np.float32),
           "lesion_malignant": np.zeros((0,), bool), "proposals": np.zeros((0, 5), np.float32),
           "label": 0}
  example = pipeline.to_fixed_shapes(empty, 0, cfg)
  spec = NamedSharding(mesh, sharding.BATCH_SPEC)
  return {k: jax.ShapeDtypeStruct((batch_size, *np.shape(v)),
                                  jax.dtypes.canonicalize_dtype(np.asarray(v).dtype), sharding=spec)
          for k, v in example.items()}


# The executables never run: LLVM's optimisations only cost compile time (a third of it), and
# the HLO, buffer assignment and cost analysis are the same without them.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def compile_steps(config, mesh, train_batch: int, eval_batch: int | None, backend: str = "gpu"):
  """``(train, eval)`` compiled executables of the trainer's steps (eval None without
  ``eval_batch``), attention traced as on ``backend``."""
  task, _, train_def, eval_def, params, stats, rngs, tx, opt_state = abstract_state(config, mesh)
  step = trainer.make_train_step(task, train_def, tx, jax.random.key(config.seed + 1))
  with attention.attention_as_on(backend), jax.set_mesh(mesh):
    train = step.lower(params, stats, opt_state, rngs,
                       jax.ShapeDtypeStruct((), np.int32),
                       batch_structs(config, train_batch, mesh)).compile(COMPILER_OPTIONS)
    evaluate = None
    if eval_batch:
      predict = eval_loop.predict_step(task, eval_def)
      evaluate = predict.lower((params, stats, rngs),
                               batch_structs(config, eval_batch, mesh)).compile(COMPILER_OPTIONS)
  return train, evaluate


def per_device_bytes(tree) -> int:
  """Bytes one device holds of ``tree`` (ShapeDtypeStructs with shardings)."""
  return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree) if hasattr(x, "sharding"))


# --- the compiled program: FLOPs, memory, collectives ------------------------------------------


def cost_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jaxlibs: one dict per program.
    cost = cost[0]
  return float(cost["flops"])


def memory(compiled) -> dict:
  m = compiled.memory_analysis()
  out = {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
         "aliased": m.alias_size_in_bytes, "temporaries": m.temp_size_in_bytes}
  # Live at the worst moment: inputs, outputs not written into donated inputs, temporaries.
  out["peak"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"]
  return out


# --- the analytic count ------------------------------------------------------------------------


def analytic_flops(config, model_cfg: attend.AttendConfig, batch: int, train: bool) -> dict:
  """Matmul FLOPs (2 x multiply-adds) of one step on ``batch`` images, by part.

  A train step is 3x the forward for every layer whose input needs a gradient, 2x for those
  whose input is data: the patch embedding (its input is the image) and the box embedding
  (sine features of the boxes). Frozen blocks (``model.freeze_blocks``) are 2x: their weight
  gradients are never read, so XLA drops them, but the input gradients still flow through them
  to the position embeddings and CLS token, which train (as in the reference); a frozen patch
  embedding is forward only. The RoI crop has no gradient. The contrastive projections only
  run in training (evaluation does not use them). Norms, activations, softmax, the losses'
  similarity matrices and the position-embedding resize are left out: they are the cost
  analysis's remainder.
  """
  v = model_cfg.vit
  k, s = config.proposals.topk, model_cfg.roi_size
  size = config.data.image_size
  grid = s // vit.PATCH_SIZE
  patch = 2 * grid * grid * vit.PATCH_SIZE**2 * 3 * v.width  # Per RoI.
  backbone = forward_flops(v, s, 1)  # Per RoI, the patch embedding included.
  e = model_cfg.width
  tokens = k + (model_cfg.pool == "cls")
  pos = 4 * attend.POSITION_DIMS
  aggregator = model_cfg.num_blocks * (10 * tokens * e * e + 4 * tokens * tokens * e)
  head = 2 * e * model_cfg.head_hidden + 2 * model_cfg.head_hidden * model_cfg.num_classes
  projection = 0
  if model_cfg.contrastive_dim and train:
    projection = (1 + k) * (2 * e * e + 2 * e * model_cfg.contrastive_dim)
  position = 2 * k * pos * pos
  crop = 2 * k * s * size * size + 2 * k * s * size * s  # Rows then columns, per image.
  block = (backbone - patch) / v.depth
  freeze = config.model.freeze_blocks
  frozen = min(freeze, v.depth) if freeze >= 0 else 0
  if train:  # Trained blocks 3x, frozen ones 2x; the patch embedding 2x, or 1x when frozen.
    vit_flops = 3 * (v.depth - frozen) * block + 2 * frozen * block
    vit_flops += patch if freeze >= 0 else 2 * patch
  else:
    vit_flops = backbone
  g = 3 if train else 1
  parts = {"vit": batch * k * vit_flops,
           "crop": batch * crop,
           "aggregator_head": batch * (g * (aggregator + head + projection)
                                       + (2 if train else 1) * position)}
  parts["total"] = sum(parts.values())
  return parts


# --- the report --------------------------------------------------------------------------------


def mesh_report(config, devices, fsdp: int, fit: bool, with_eval: bool = True) -> dict:
  mesh = sharding.make_mesh(-1 if fsdp else config.mesh.data, fsdp or config.mesh.fsdp,
                            devices=jax.devices()[:devices])
  batch, eval_batch = config.data.batch_size, config.data.eval_batch_size
  for name, b in (("data.batch_size", batch), ("data.eval_batch_size", eval_batch)):
    if b % mesh.size:
      raise ValueError(f"{name} ({b}) is not a multiple of the {mesh.size} devices; set"
                       f" --config.{name}= or --devices=.")
  start = time.perf_counter()
  train, evaluate = compile_steps(config, mesh, batch, eval_batch if with_eval else None)
  _, model, *_, params, _, _, _, opt_state = abstract_state(config, mesh)
  hlo = train.as_text()
  per_device = batch // mesh.size
  report = {
      "mesh": dict(mesh.shape), "global_batch": batch, "per_device_batch": per_device,
      "params_per_device": per_device_bytes(params),
      "opt_state_per_device": per_device_bytes(opt_state),
      "train": {"flops_per_device": cost_flops(train), "dot_flops_per_device": hlo_dot_flops(hlo),
                "memory": memory(train), "collectives": collectives(hlo, mesh.size)},
      "analytic": {"train": analytic_flops(config, model.cfg, batch, True),
                   "eval": analytic_flops(config, model.cfg, eval_batch, False)},
  }
  if evaluate is not None:
    report["eval"] = {"batch": eval_batch, "flops_per_device": cost_flops(evaluate),
                      "dot_flops_per_device": hlo_dot_flops(evaluate.as_text()),
                      "memory": memory(evaluate),
                      "collectives": collectives(evaluate.as_text(), mesh.size)}
  if fit:
    twice, _ = compile_steps(config, mesh, 2 * batch, None)
    slope = (memory(twice)["peak"] - report["train"]["memory"]["peak"]) / per_device
    fixed = report["train"]["memory"]["peak"] - slope * per_device
    report["fit"] = {"bytes_per_example": slope, "fixed_bytes": fixed}
    report["max_per_device_batch"] = {
        c.name: int(max(0, (c.memory_bytes - fixed) // slope)) if slope > 0 else None
        for c in CHIPS}
  report["compile_seconds"] = time.perf_counter() - start
  return report


def projections(config, report: dict, mfu: float) -> dict:
  """Step time and images/s at ``mfu`` of each chip's peak, and the collectives' link time."""
  flops = report["train"]["flops_per_device"]
  wire = sum(c["wire_bytes"] for c in report["train"]["collectives"].values())
  bf16 = config.model.dtype == "bfloat16"
  out = {}
  for chip in CHIPS:
    step = flops / (mfu * (chip.bf16_flops if bf16 else chip.fp32_flops))
    link = wire / chip.link_bytes_per_s
    out[chip.name] = {"step_s": step, "images_per_s": report["global_batch"] / step,
                      "collective_s": link,
                      "images_per_s_no_overlap": report["global_batch"] / (step + link),
                      "fits": report["train"]["memory"]["peak"] <= chip.memory_bytes}
  if not bf16 and report["mesh"]["data"] * report["mesh"]["fsdp"] == 1:
    # The reference: the same model's matmuls (crops are cut on the host) in float32 on one
    # GPU, at the same MFU of the FP32 peak.
    ref = report["analytic"]["train"]["total"] - report["analytic"]["train"]["crop"]
    step = ref / (mfu * H100_FP32_FLOPS)
    out["reference_fp32_H100"] = {"step_s": step, "images_per_s": report["global_batch"] / step,
                                  "speedup_ours": step / out["H100"]["step_s"]}
  return out


def _row(label: str, *cells) -> str:
  return f"  {label:<34}" + "".join(f"{c:>16}" for c in cells)


def print_report(name: str, reports: list[dict]) -> None:
  meshes = [f"data {r['mesh']['data']} x fsdp {r['mesh']['fsdp']}" for r in reports]
  print(f"{name}: global batch {reports[0]['global_batch']}, "
        f"{reports[0]['per_device_batch']} per device")
  print(_row("", *meshes))
  gb = lambda x: f"{x / GB:.3f} GB"  # noqa: E731
  tf = lambda x: f"{x / 1e12:.3f} TFLOP" if x >= 1e11 else f"{x / 1e9:.3f} GFLOP"  # noqa: E731
  rows = [
      ("train FLOPs/step (cost analysis)", lambda r: tf(r["train"]["flops_per_device"]
                                                        * r["devices"])),
      ("  matmuls in the HLO", lambda r: tf(r["train"]["dot_flops_per_device"] * r["devices"])),
      ("  analytic (matmuls)", lambda r: tf(r["analytic"]["train"]["total"])),
      ("  cost analysis / analytic", lambda r: f"{r['flops_ratio']:.3f}"),
      ("  HLO matmuls / analytic", lambda r: f"{r['dot_ratio']:.4f}"),
  ]
  if "eval" in reports[0]:
    rows += [("eval FLOPs/step (cost analysis)", lambda r: tf(r["eval"]["flops_per_device"]
                                                              * r["devices"])),
             ("  matmuls in the HLO", lambda r: tf(r["eval"]["dot_flops_per_device"]
                                                   * r["devices"])),
             ("  analytic (matmuls)", lambda r: tf(r["analytic"]["eval"]["total"]))]
  rows += [("params per device", lambda r: gb(r["params_per_device"])),
           ("optimiser state per device", lambda r: gb(r["opt_state_per_device"]))]
  for part in ("arguments", "outputs", "temporaries", "peak"):
    rows.append((f"train {part} per device", lambda r, p=part: gb(r["train"]["memory"][p])))
  if "eval" in reports[0]:
    rows.append(("eval peak per device", lambda r: gb(r["eval"]["memory"]["peak"])))
  if "fit" in reports[0]:
    rows.append(("  per extra example", lambda r: gb(r["fit"]["bytes_per_example"])))
    for chip in CHIPS:
      rows.append((f"largest per-device batch, {chip.name}",
                   lambda r, c=chip.name: str(r["max_per_device_batch"][c])))
  for kind in COLLECTIVES:
    if any(r["train"]["collectives"][kind]["count"] for r in reports):
      rows.append((f"{kind} (count, MB)", lambda r, k=kind: "{} {:.1f}".format(
          r["train"]["collectives"][k]["count"], r["train"]["collectives"][k]["bytes"] / 1e6)))
  rows.append(("sent per device per step", lambda r: gb(r["wire_bytes"])))
  for chip in CHIPS:
    rows.append((f"{chip.name}: step at MFU, images/s", lambda r, c=chip.name: "{:.0f} ms {:.0f}"
                 .format(1e3 * r["projection"][c]["step_s"], r["projection"][c]["images_per_s"])))
    rows.append((f"{chip.name}: collectives at link bw", lambda r, c=chip.name: "{:.1f} ms".format(
        1e3 * r["projection"][c]["collective_s"])))
  if "reference_fp32_H100" in reports[0]["projection"]:
    rows.append(("reference fp32 1 GPU: step, images/s", lambda r: "{:.0f} ms {:.1f}".format(
        1e3 * r["projection"]["reference_fp32_H100"]["step_s"],
        r["projection"]["reference_fp32_H100"]["images_per_s"])))
  for label, cell in rows:
    print(_row(label, *(cell(r) for r in reports)))


def main(argv):
  del argv
  config = _CONFIG.value
  if config is None:
    raise ValueError("--config is required, e.g. --config=configs/vindr.py")
  if _DEVICES.value < 1:
    raise ValueError(f"--devices must be at least 1, got {_DEVICES.value}.")
  # Before any backend starts: CPU devices, however many accelerators this machine has.
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", _DEVICES.value)
  if jax.device_count() < _DEVICES.value:
    raise ValueError(f"Only {jax.device_count()} CPU devices exist; XLA_FLAGS may already set"
                     " --xla_force_host_platform_device_count.")
  compare = _COMPARE_FSDP.value if _COMPARE_FSDP.value >= 0 else _DEVICES.value
  fsdps = [0] + ([compare] if compare and compare != config.mesh.fsdp else [])
  reports = []
  for fsdp in fsdps:
    r = mesh_report(config, _DEVICES.value, fsdp, _FIT.value, _EVAL.value)
    r["devices"] = _DEVICES.value
    analytic = r["analytic"]["train"]["total"]
    r["flops_ratio"] = r["train"]["flops_per_device"] * r["devices"] / analytic
    r["dot_ratio"] = r["train"]["dot_flops_per_device"] * r["devices"] / analytic
    r["wire_bytes"] = sum(c["wire_bytes"] for c in r["train"]["collectives"].values())
    r["projection"] = projections(config, r, _MFU.value)
    reports.append(r)
  name = pathlib.Path(config_flags.get_config_filename(flags.FLAGS["config"])).name
  print_report(name, reports)
  print(f"(projections at {100 * _MFU.value:.0f} % MFU, model dtype {config.model.dtype};"
        f" compiled on {_DEVICES.value} CPU devices in"
        f" {sum(r['compile_seconds'] for r in reports):.0f} s)")
  if _OUT.value:
    path = pathlib.Path(_OUT.value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"config": name, "mfu": _MFU.value, "reports": reports,
                                "chips": [dataclasses.asdict(c) for c in CHIPS]}, indent=2)
                    + "\n")
    print(f"Wrote {path}")


if __name__ == "__main__":
  cli.run(main, errors=(ValueError,))
