r"""What a config's training step costs at production scale, from the compiler, before any
accelerator is paid for.

  python tools/scale_report.py --config=configs/vindr.py                # 8 devices, data-only
  python tools/scale_report.py --config=configs/vindr.py --config.mesh.fsdp=8
  python tools/scale_report.py --config=configs/vindr_reference.py --devices=1

On ``--devices`` simulated CPU devices it lowers and compiles the trainer's own train step
(``trainer.make_train_step``) and evaluation step (``train.prediction.predict_step``) for the
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

import copy
import dataclasses
import json
import pathlib
import re
import time

import jax
import numpy as np
from absl import flags
from flax import nnx
from jax.sharding import NamedSharding
from ml_collections import config_flags

from attend_jax import cli, export, tasks
from attend_jax.models import attention, build, vit
from attend_jax.train import memory as train_memory
from attend_jax.train import prediction, sharding, trainer
from bench_util import analytic_flops, forward_flops
from hlo_util import COLLECTIVES, collectives, hlo_dot_flops, op_classes

_CONFIG = config_flags.DEFINE_config_file("config", None, "A training config.", lock_config=False)
_DEVICES = flags.DEFINE_integer("devices", 8, "Simulated CPU devices (one per accelerator).")
_COMPARE_FSDP = flags.DEFINE_integer(
    "compare_fsdp", -1, "fsdp of the second mesh compared with the config's (-1: all devices;"
    " 0: none).")
_MFU = flags.DEFINE_float("mfu", 0.45, "Model FLOPs utilisation *assumed* for the projections (the"
                          " roofline beside it is computed).")
_JSON = flags.DEFINE_string("json", None, "JSON output (default: print only).")
flags.DEFINE_alias("out", "json")
_LOWER_FOR = flags.DEFINE_list("lower_for", [], "Also lower the train step with jax.export for"
                               " these platforms (tpu, cuda) and name the attention kernel in"
                               " each module.")
_REMAT = flags.DEFINE_bool("remat_sweep", True, "Estimate the per-device peak under each"
                           " model.remat policy (none, dots, full).")
_DETECTOR = config_flags.DEFINE_config_file(
    "detector_config", None, "For a two-stage config: the detector's (file[:arg]), to price its"
    " proposals on the fly (its forward before every train step) against computed once into the"
    " records (tools/export_proposals.py --records).", lock_config=False)
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
  hbm_bytes_per_s: float
  backend: str  # What attention.choose picks for it.


# NVIDIA H100 SXM5 datasheet: 80 GB HBM3; 989.4 TFLOP/s BF16 dense (1,979 with sparsity);
# TF32 494.7 dense, which XLA:GPU uses for float32 matmuls at JAX's default precision; FP32
# 66.9 (PyTorch's default, torch.backends.cuda.matmul.allow_tf32 = False); NVLink 4 at
# 900 GB/s bidirectional, so 450 GB/s each way.
# Cloud TPU v5e (cloud.google.com/tpu/docs/v5e): 16 GB HBM2e; 197 TFLOP/s BF16 (float32
# matmuls run as bf16 passes; counted at the same peak); ICI 1,600 Gbps = 200 GB/s per chip.
# HBM: H100 SXM 3.35 TB/s; v5e 819 GB/s.
CHIPS = (Chip("H100", 80 * GB, 989.4e12, 494.7e12, 450 * GB, 3.35e12, "gpu"),
         Chip("v5e", 16 * GB, 197e12, 197e12, 200 * GB, 819 * GB, "tpu"))
H100_FP32_FLOPS = 66.9e12  # The reference: PyTorch float32 matmuls without TF32.



# The model's layers, whose values a bfloat16 config keeps in 16 bits on an accelerator.
MODEL_SOURCES = ("/attend_jax/models/", "/flax/nnx/nn/")


# --- the trainer's step, compiled from abstract values -----------------------------------------

# The executables never run: LLVM's optimisations only cost compile time (a third of it), and
# the HLO, buffer assignment and cost analysis are the same without them.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def compile_steps(config, mesh, train_batch: int, eval_batch: int | None, backend: str = "gpu"):
  """``(train, eval, state)``: the trainer's steps compiled for its own state layout
  (``trainer.init_state``, abstract) and ``train_batch`` images (eval None without
  ``eval_batch``), attention traced as on ``backend``."""
  state = trainer.init_state(config, mesh, abstract=True)
  with attention.attention_as_on(backend), jax.set_mesh(mesh):
    step = trainer.train_step_for(config, state, mesh)
    train = step.lower(state.params, state.stats, state.opt_state, state.rngs,
                       jax.ShapeDtypeStruct((), np.int32),
                       train_memory.abstract_batch(config, mesh, train_batch)
                       ).compile(COMPILER_OPTIONS)
    evaluate = None
    if eval_batch:
      predict = prediction.predict_step(state.task, state.eval_def)
      evaluate = predict.lower((state.params, state.stats, state.rngs),
                               train_memory.abstract_batch(config, mesh, eval_batch)
                               ).compile(COMPILER_OPTIONS)
  return train, evaluate, state


def per_device_bytes(tree) -> int:
  """Bytes one device holds of ``tree`` (ShapeDtypeStructs with shardings)."""
  return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree) if hasattr(x, "sharding"))


# --- the compiled program: FLOPs, memory, collectives ------------------------------------------


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  return cost[0] if isinstance(cost, (list, tuple)) else cost  # Older jaxlibs: one per program.


def cost_flops(compiled) -> float:
  return float(_cost(compiled)["flops"])


def cost_bytes(compiled) -> float:
  return float(_cost(compiled).get("bytes accessed", 0.0))


def memory(compiled) -> dict:
  m = compiled.memory_analysis()
  out = {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
         "aliased": m.alias_size_in_bytes, "temporaries": m.temp_size_in_bytes}
  # Live at the worst moment: inputs, outputs not written into donated inputs, temporaries.
  out["peak"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"]
  return out


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
  train, evaluate, state = compile_steps(config, mesh, batch, eval_batch if with_eval else None)
  model_cfg = build.attend_config(config)
  hlo = train.as_text()
  per_device = batch // mesh.size
  report = {
      "mesh": dict(mesh.shape), "global_batch": batch, "per_device_batch": per_device,
      "params_per_device": per_device_bytes(state.params),
      "opt_state_per_device": per_device_bytes(state.opt_state),
      "train": {"flops_per_device": cost_flops(train), "dot_flops_per_device": hlo_dot_flops(hlo),
                "bytes_per_device": cost_bytes(train), "memory": memory(train),
                "collectives": collectives(hlo, mesh.size),
                "op_classes": op_classes(hlo, mesh.size, bf16_sources=(
                    MODEL_SOURCES if config.model.dtype == "bfloat16" else ()))},
      "analytic": {"train": analytic_flops(config, model_cfg, batch, True),
                   "eval": analytic_flops(config, model_cfg, eval_batch, False)},
  }
  if evaluate is not None:
    report["eval"] = {"batch": eval_batch, "flops_per_device": cost_flops(evaluate),
                      "dot_flops_per_device": hlo_dot_flops(evaluate.as_text()),
                      "memory": memory(evaluate),
                      "collectives": collectives(evaluate.as_text(), mesh.size)}
  if fit:
    twice, _, _ = compile_steps(config, mesh, 2 * batch, None)
    slope = (memory(twice)["peak"] - report["train"]["memory"]["peak"]) / per_device
    fixed = report["train"]["memory"]["peak"] - slope * per_device
    report["fit"] = {"bytes_per_example": slope, "fixed_bytes": fixed}
    report["max_per_device_batch"] = {
        c.name: int(max(0, (c.memory_bytes - fixed) // slope)) if slope > 0 else None
        for c in CHIPS}
  report["compile_seconds"] = time.perf_counter() - start
  return report, state


# --- memory under remat, as an accelerator would hold it ----------------------------------------


def saved_activations(config, per_device_batch: int, remat: str, backend: str) -> float:
  """Bytes the backward pass keeps for one device's ``per_device_batch`` images: the residuals of
  ``jax.vjp`` of the training loss with ``model.remat = remat``, traced as on ``backend`` (its
  attention kernel's residuals), from shapes only. Parameters the pullback refers to are not
  counted (they are the parameters); their 16-bit copies, which the layers make at use, are.

  XLA:CPU's own buffer figures cannot show remat (it drops the optimisation barriers that keep
  a recomputation apart), so this is how the report sees it."""
  c = copy.deepcopy(config)
  with c.unlocked():
    c.model.remat = remat
  task = tasks.get(c)
  one = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in
           train_memory.abstract_batch(c, one, per_device_batch).items()}
  with attention.attention_as_on(backend):
    model = nnx.eval_shape(lambda: task.build_model(c.seed))
    model.train()
    graph, params, rest = nnx.split(model, nnx.Param, ...)

    def pullback(params, rest, batch):
      # The RNG state is a traced input too: dropout updates it inside the trace.
      return jax.vjp(lambda p, r: task.loss_terms(nnx.merge(graph, p, r), batch, train=True,
                                                  step=0)["loss"], params, rest)[1]

    pullback = jax.eval_shape(pullback, params, rest, batch)
  own = {(tuple(p.shape), p.dtype) for p in jax.tree.leaves(params)}
  return float(sum(np.prod(r.shape) * np.dtype(r.dtype).itemsize
                   for r in jax.tree.leaves(pullback)
                   if (tuple(r.shape), r.dtype) not in own))


def remat_sweep(config, report: dict, backend: str) -> dict:
  """Per ``model.remat`` policy: the per-device peak estimated for ``backend``'s program and the
  FLOPs the recomputation adds.

  The peak is the state a device holds (parameters, optimiser state, a gradient of each
  parameter, the batch) plus the activations the backward pass keeps (``saved_activations``)
  plus one ViT block's activations while it is recomputed or differentiated. Recomputed FLOPs:
  ``dots`` runs attention's two batched matmuls per block again; ``full`` runs each block's
  forward again (``analytic_flops``'s per-block count)."""
  per_device = report["per_device_batch"]
  vit_cfg = build.vit_config(config)
  fixed = (2 * report["params_per_device"] + report["opt_state_per_device"]
           + per_device * _batch_bytes(config))
  saved = {p: saved_activations(config, per_device, p, backend) for p in vit.REMAT_POLICIES}
  block = saved["none"] / vit_cfg.depth
  tokens = (build.attend_config(config).roi_size // vit.PATCH_SIZE) ** 2 + 1 \
      + vit_cfg.num_registers
  sequences = per_device * config.proposals.topk
  attention_fwd = 4 * tokens * tokens * vit_cfg.width * sequences * vit_cfg.depth
  vit_fwd = forward_flops(vit_cfg, build.attend_config(config).roi_size, sequences)
  train_flops = report["analytic"]["train"]["total"] / (report["mesh"]["data"]
                                                         * report["mesh"]["fsdp"])
  extra = {"none": 0.0, "dots": attention_fwd, "full": vit_fwd}
  return {p: {"saved_bytes": saved[p], "peak_bytes": fixed + saved[p] + block,
              "extra_flops": extra[p], "flop_overhead": extra[p] / train_flops}
          for p in vit.REMAT_POLICIES}


def _batch_bytes(config) -> int:
  one = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
  return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
             for v in train_memory.abstract_batch(config, one, 1).values())


# --- the roofline -------------------------------------------------------------------------------


def fused_attention_bytes(config, per_device: int) -> float:
  """What a flash kernel (cuDNN's, splash) moves through HBM per train step and device: q, k, v
  and the output forward; those, the output's gradient and dq, dk, dv backward; per ViT block.
  The (T, T) scores stay on chip."""
  v = build.vit_config(config)
  tokens = (build.attend_config(config).roi_size // vit.PATCH_SIZE) ** 2 + 1 + v.num_registers
  element = np.dtype(config.model.dtype).itemsize
  return 12.0 * per_device * config.proposals.topk * tokens * v.width * element * v.depth


def roofline(config, report: dict) -> dict:
  """Per chip, a lower bound on the step time from the compiled step's own op classes: each of
  matmul, attention and elementwise at the slower of its FLOPs at the chip's peak and its bytes
  at its HBM bandwidth, plus the collectives at its link bandwidth, none overlapped; and the
  model FLOPs utilisation that bound allows. Attention is taken as the kernel the chip runs:
  the compiled XLA attention's FLOPs, and a flash kernel's bytes where ``attention.choose``
  picks one.

  Caveat: the classes are XLA:CPU's program, which fuses less than XLA:GPU and XLA:TPU do, so
  the memory-bound classes' times are upper bounds and the MFU a lower bound. XLA:CPU also
  widens bfloat16 to float32; for a bfloat16 config the model layers' float32 values are counted
  at 2 bytes (``op_classes``'s ``bf16_sources``)."""
  classes = report["train"]["op_classes"]
  devices = report["mesh"]["data"] * report["mesh"]["fsdp"]
  model_flops = report["analytic"]["train"]["total"] / devices
  bf16 = config.model.dtype == "bfloat16"
  out = {}
  for chip in CHIPS:
    peak = chip.bf16_flops if bf16 else chip.fp32_flops
    with attention.attention_as_on(chip.backend):
      kernel, _ = attention.choose(np.dtype(config.model.dtype), build.vit_config(config).head_dim,
                                   config.model.get("attention", "auto"))
    seconds = {}
    for name in ("matmul", "attention", "elementwise"):
      moved = classes[name]["bytes"]
      if name == "attention" and kernel in ("cudnn", "splash"):
        moved = fused_attention_bytes(config, report["per_device_batch"])
      seconds[name] = max(classes[name]["flops"] / peak, moved / chip.hbm_bytes_per_s)
    seconds["collective"] = classes["collective"]["wire_bytes"] / chip.link_bytes_per_s
    step = sum(seconds.values())
    out[chip.name.lower()] = {"attention_kernel": kernel, "seconds": seconds, "step_s": step,
                              "mfu": model_flops / (step * peak),
                              "images_per_s": report["global_batch"] / step}
  return out


# --- proposals: on the fly, or computed once ----------------------------------------------------


def proposal_cost(config, detector_config, report: dict, mesh) -> dict:
  """FLOPs of the detector's proposals for one train batch (``tasks.detect.propose_fn``,
  compiled for the config's batch on its mesh, the detector replicated): what every step pays
  with ``proposals.source="detector"``, against once per image with the boxes in the records."""
  from attend_jax.tasks import detect

  task = tasks.get(detector_config)
  with jax.set_mesh(mesh):
    graph, state = nnx.split(nnx.eval_shape(lambda: task.build_model(detector_config.seed)))
  replicated = NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = export.abstract(state, replicated)
  with attention.attention_as_on("gpu"), jax.set_mesh(mesh):
    compiled = jax.jit(detect.propose_fn(graph, config.proposals.topk)).lower(
        state, train_memory.abstract_batch(config, mesh, config.data.batch_size)
    ).compile(COMPILER_OPTIONS)
  per_device = cost_flops(compiled)
  devices = report["mesh"]["data"] * report["mesh"]["fsdp"]
  return {"on_the_fly_flops_per_step": per_device * devices,
          "of_the_train_step": per_device / report["train"]["flops_per_device"],
          "computed_once_flops_per_image": per_device * devices / report["global_batch"]}


# --- lowering for an accelerator ---------------------------------------------------------------

_PLATFORM_BACKEND = {"tpu": "tpu", "cuda": "gpu", "rocm": "gpu"}


def lowered_attention(config, mesh, platform: str) -> dict:
  """The train step lowered for ``platform`` with ``jax.export`` (no such device needed), and
  the attention kernel its module holds: ``splash`` (a Pallas TPU kernel), ``cudnn`` (cuDNN's
  fused attention), or ``xla``."""
  if platform not in _PLATFORM_BACKEND:
    raise ValueError(f"--lower_for takes {tuple(_PLATFORM_BACKEND)}, got {platform!r}.")
  state = trainer.init_state(config, mesh, abstract=True)
  start = time.perf_counter()
  with attention.attention_as_on(_PLATFORM_BACKEND[platform]), jax.set_mesh(mesh):
    step = trainer.train_step_for(config, state, mesh)
    exported = jax.export.export(step, platforms=[platform])(
        state.params, state.stats, state.opt_state, state.rngs,
        jax.ShapeDtypeStruct((), np.int32),
        train_memory.abstract_batch(config, mesh, config.data.batch_size))
  module = exported.mlir_module()
  kernels = sorted(set(re.findall(r'kernel_name = "(\w+)"', module)))
  if any(k.startswith("splash") for k in kernels):
    kernel = "splash"
  elif "cudnn" in module and "fmha" in module:
    kernel = "cudnn"
  elif "tpu_custom_call" in module:
    kernel = "pallas"
  else:
    kernel = "xla"
  return {"attention": kernel, "kernels": kernels, "module_bytes": len(module),
          "seconds": time.perf_counter() - start}


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
  if "remat" in reports[0]:
    for policy in vit.REMAT_POLICIES:
      rows.append((f"remat {policy}: peak (est.), +FLOPs", lambda r, p=policy: "{:.2f} GB +{:.0f}%"
                   .format(r["remat"][p]["peak_bytes"] / GB, 100 * r["remat"][p]["flop_overhead"])))
  rows.append(("sent per device per step", lambda r: gb(r["wire_bytes"])))
  for chip in CHIPS:
    rows.append((f"{chip.name}: at assumed MFU, images/s", lambda r, c=chip.name: "{:.0f} ms {:.0f}"
                 .format(1e3 * r["projection"][c]["step_s"], r["projection"][c]["images_per_s"])))
    rows.append((f"{chip.name}: collectives at link bw", lambda r, c=chip.name: "{:.1f} ms".format(
        1e3 * r["projection"][c]["collective_s"])))
  for chip in CHIPS:
    rows.append((f"{chip.name}: roofline step, MFU", lambda r, c=chip.name.lower(): "{:.0f} ms {:.0f}%"
                 .format(1e3 * r["roofline"][c]["step_s"], 100 * r["roofline"][c]["mfu"])))
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
  for platform in _LOWER_FOR.value:
    if platform not in _PLATFORM_BACKEND:
      raise ValueError(f"--lower_for takes {tuple(_PLATFORM_BACKEND)}, got {platform!r}.")
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
    r, _ = mesh_report(config, _DEVICES.value, fsdp, _FIT.value, _EVAL.value)
    r["devices"] = _DEVICES.value
    analytic = r["analytic"]["train"]["total"]
    r["flops_ratio"] = r["train"]["flops_per_device"] * r["devices"] / analytic
    r["dot_ratio"] = r["train"]["dot_flops_per_device"] * r["devices"] / analytic
    r["wire_bytes"] = sum(c["wire_bytes"] for c in r["train"]["collectives"].values())
    r["projection"] = projections(config, r, _MFU.value)
    r["roofline"] = roofline(config, r)
    if _REMAT.value:
      r["remat"] = remat_sweep(config, r, "tpu")
    reports.append(r)
  own = reports[0]
  summary = {"per_device_batch": own["per_device_batch"],
             "peak_gb_per_device_xla_cpu": own["train"]["memory"]["peak"] / GB,
             "roofline": own["roofline"]}
  if "remat" in own:
    policy = config.model.get("remat", "none")
    summary.update(remat=policy, peak_gb_per_device=own["remat"][policy]["peak_bytes"] / GB)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp,
                            devices=jax.devices()[:_DEVICES.value])
  if _LOWER_FOR.value:
    summary["lowered"] = {p: lowered_attention(config, mesh, p) for p in _LOWER_FOR.value}
  if _DETECTOR.value is not None:
    summary["proposals"] = proposal_cost(config, _DETECTOR.value, own, mesh)
  name = pathlib.Path(config_flags.get_config_filename(flags.FLAGS["config"])).name
  print_report(name, reports)
  print_summary(config, summary)
  print(f"(projections at an assumed {100 * _MFU.value:.0f} % MFU; rooflines from the compiled"
        f" step; model dtype {config.model.dtype}; compiled on {_DEVICES.value} CPU devices in"
        f" {sum(r['compile_seconds'] for r in reports):.0f} s)")
  if _JSON.value:
    path = pathlib.Path(_JSON.value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"config": name, "mfu_assumed": _MFU.value, **summary,
                                "reports": reports,
                                "chips": [dataclasses.asdict(c) for c in CHIPS]}, indent=2)
                    + "\n")
    print(f"Wrote {path}")


def print_summary(config, summary: dict) -> None:
  """The roofline, remat and lowering figures of the config's own mesh."""
  for chip, r in summary["roofline"].items():
    parts = ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in r["seconds"].items())
    print(f"roofline {chip}: step >= {1e3 * r['step_s']:.1f} ms ({parts}; attention"
          f" {r['attention_kernel']}): MFU <= {100 * r['mfu']:.1f} %,"
          f" {r['images_per_s']:.0f} images/s")
  if "peak_gb_per_device" in summary:
    print(f"peak per device, model.remat={summary['remat']} (estimated for a TPU's program):"
          f" {summary['peak_gb_per_device']:.2f} GB; XLA:CPU's compiled peak (no remat, XLA"
          f" attention): {summary['peak_gb_per_device_xla_cpu']:.2f} GB")
  if "proposals" in summary:
    p = summary["proposals"]
    print(f"proposals on the fly: the detector adds {p['on_the_fly_flops_per_step'] / 1e12:.2f}"
          f" TFLOP to every train step ({100 * p['of_the_train_step']:.1f} % of it); computed"
          f" once into the records: {p['computed_once_flops_per_image'] / 1e9:.1f} GFLOP per"
          " image, once")
  for platform, r in summary.get("lowered", {}).items():
    print(f"lowered for {platform}: attention kernel {r['attention']}"
          f" {r['kernels'] or ''} ({r['module_bytes'] / 1e6:.1f} MB module,"
          f" {r['seconds']:.0f} s)")


if __name__ == "__main__":
  cli.run(main, errors=(ValueError,))
