"""Times our JAX DINOv2 ViT against transformers' PyTorch Dinov2Model, side by side.

Both run the same random weights (converted with attend_jax.convert.dinov2) on the same
input. For each image size it times the forward pass and a train step (forward, backward and
an AdamW update), plus a 4096x4096 matmul as the machine's fp32 GEMM yardstick. Torch and JAX
repetitions alternate, so background load on a shared machine hits both alike; the tables
report medians, the ratio torch/jax (> 1: JAX is faster) and effective FLOP rates from an
analytic count (matmuls + attention; a train step counts 3x the forward).

On a GPU backend it adds ViT-B/14 at 448 px in bfloat16 and reports TFLOP/s and MFU against
--peak_tflops (torch runs on cuda under bf16 autocast when it has CUDA, else is skipped).

  .venv/bin/python tools/bench_vit.py --sizes=224,448 --reps=10
  .venv/bin/python tools/bench_vit.py --dry_run         # the same code path, tiny, one call each

``--json=PATH`` also writes every row, as each completes (tools/bench_accelerator.sh collects
them); on an accelerator each row carries the device's peak memory so far.
``--attention=xla,auto`` runs each case once per attention kernel (attend_jax.models.attention:
an A/B of XLA's attention against the fused kernel the backend gets); ``--notorch`` leaves
PyTorch out (tools/bench_accelerator.sh runs it in a process of its own).
``--malloc=reuse`` (the default) runs the script with glibc tunables that keep freed memory
for reuse (bench_util.MALLOC_REUSE): XLA:CPU otherwise maps each step's temporaries afresh and
faults them in page by page, a cost that differs from machine to machine; ``--malloc=default``
keeps glibc's own behaviour.
``--profile=PATH`` then traces each part in both frameworks and writes per-op tables (markdown):
which XLA op (its HLO, its class) takes the time, beside PyTorch's aten ops (tools/op_profile.py).

  .venv/bin/python tools/bench_vit.py --sizes=224 --parts=train --profile=profile_vit.md
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time
from typing import Callable

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import transformers
from flax import nnx

from attend_jax.convert import dinov2 as conv
from attend_jax.models import attention, vit
from bench_util import (Rows, forward_flops, interleaved, peak_device_bytes,
                        reuse_freed_memory)
import op_profile

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["224", "448"], "Square image sizes, multiples of 14.")
flags.DEFINE_integer("batch", 5, "Images (RoIs) per step.")
flags.DEFINE_integer("reps", 10, "Timed repetitions of each framework, alternating.")
flags.DEFINE_integer("warmup", 3, "Untimed calls per framework after compiling.")
flags.DEFINE_enum("variant", "vits14", list(vit.VARIANTS), "Backbone.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype of both.")
flags.DEFINE_list("parts", ["gemm", "forward", "train"], "Any of gemm, forward, train.")
flags.DEFINE_enum("jit", "jax", ["jax", "nnx"],
                  "jax: jax.jit over nnx.split state; nnx: nnx.jit on the module.")
flags.DEFINE_integer("attention_chunk", None, "Overrides ViTConfig.attention_chunk.")
flags.DEFINE_list("attention", ["auto"], "Attention kernels to run each case with (model.attention"
                  " values: auto, xla, cudnn, splash, cpu).")
flags.DEFINE_bool("torch", True, "Also time transformers' PyTorch model, where it can run.")
flags.DEFINE_float("peak_tflops", 989.0, "Accelerator dense bf16 peak for MFU (H100/H200).")
flags.DEFINE_integer("gemm_n", 4096, "Side of the square GEMM yardstick.")
flags.DEFINE_bool("dry_run", False, "28 px, batch 1, one timed call each, no GEMM: a check.")
flags.DEFINE_enum("malloc", "reuse", ["reuse", "default"], "reuse: run with glibc tunables that"
                  " keep freed memory for reuse (bench_util.MALLOC_REUSE; both frameworks, one"
                  " process), so that no step pays page faults for its temporaries; default:"
                  " glibc's own.")
flags.DEFINE_string("json", None, "Also write the rows to this JSON file.")
flags.DEFINE_string("profile", None, "Also write per-op time tables of each part to this "
                    "markdown file (needs --jit=jax).")
flags.DEFINE_integer("profile_reps", 3, "Traced calls per part and framework for --profile.")

transformers.logging.set_verbosity_error()

_PROFILES: list[str] = []  # --profile's tables, one per case and part, written at the end.

_JNP_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Case:
  variant: str
  size: int
  dtype: str
  attention: str = "auto"


def _random_hf_model(cfg: vit.ViTConfig) -> transformers.Dinov2Model:
  """transformers' Dinov2Model with random non-trivial weights (as in tests/torch_refs.py)."""
  hf_cfg = transformers.Dinov2Config(
      hidden_size=cfg.width, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
      mlp_ratio=int(cfg.mlp_ratio), use_swiglu_ffn=cfg.mlp == "swiglu", image_size=518,
      patch_size=vit.PATCH_SIZE, layerscale_value=1.0, attn_implementation="sdpa")
  torch.manual_seed(0)
  model = transformers.Dinov2Model(hf_cfg)
  gen = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("mask_token"):
        p.zero_()
      else:
        p.add_(0.05 * torch.randn(p.shape, generator=gen))
  return model


def _jax_model(hf: transformers.Dinov2Model, case: Case) -> vit.DinoV2:
  sd = {k: v.detach().float().numpy() for k, v in hf.state_dict().items()}
  meta, fmt = conv.to_meta_names(sd)
  overrides = dict(pos_embed_interp=conv.DEFAULT_INTERP[(fmt, False)],
                   dtype=_JNP_DTYPES[case.dtype], attention=case.attention)
  if FLAGS.attention_chunk is not None:
    overrides["attention_chunk"] = FLAGS.attention_chunk
  cfg = vit.config_for(case.variant, **overrides)
  return conv.model_from_params(cfg, conv.meta_to_params(meta, cfg))


def _loss(cls):
  return jnp.mean(jnp.square(cls.astype(jnp.float32)))


def _jax_fns(model: vit.DinoV2, x: jax.Array) -> dict[str, Callable[[], None]]:
  """Zero-argument closures that run one forward / one train step and wait for the result."""
  tx = optax.adamw(1e-4)
  if FLAGS.jit == "nnx":
    fwd = nnx.jit(lambda m, x: m(x)[0])
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit(donate_argnums=(0, 1))
    def step(m, opt, x):
      loss, grads = nnx.value_and_grad(lambda m: _loss(m(x)[0]))(m)
      opt.update(m, grads)
      return loss

    return {
        "forward": lambda: fwd(model, x).block_until_ready(),
        "train": lambda: step(model, opt, x).block_until_ready(),
    }

  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  @jax.jit
  def fwd(params, x):
    return nnx.merge(graphdef, params, rest)(x)[0]

  def loss_fn(params, x):
    return _loss(nnx.merge(graphdef, params, rest)(x)[0])

  @jax.jit
  def init_state(params):
    # A copy, so that donating the train state leaves ``params`` alive for the forward.
    params = jax.tree.map(jnp.copy, params)
    return params, tx.init(params)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, x):
    loss, grads = jax.value_and_grad(loss_fn)(params, x)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  state = list(init_state(params))

  def train():
    state[0], state[1], loss = step(state[0], state[1], x)
    loss.block_until_ready()

  # The optimised HLO of each, for --profile to name what each traced op computes.
  hlo = {"forward": lambda: fwd.lower(params, x).compile().as_text(),
         "train": lambda: step.lower(state[0], state[1], x).compile().as_text()}
  return {"forward": lambda: fwd(params, x).block_until_ready(), "train": train, "hlo": hlo}


def _torch_fns(hf: transformers.Dinov2Model, x: torch.Tensor, dtype: str,
               device: str) -> dict[str, Callable[[], None]]:
  hf = hf.to(device)
  opt = torch.optim.AdamW(hf.parameters(), lr=1e-4)
  autocast = torch.autocast(device, torch.bfloat16, enabled=dtype == "bfloat16")
  sync = torch.cuda.synchronize if device == "cuda" else lambda: None

  def forward():
    hf.eval()
    with torch.inference_mode(), autocast:
      hf(pixel_values=x).pooler_output.float().sum().item()
    sync()

  def train():
    hf.train()
    with autocast:
      cls = hf(pixel_values=x).pooler_output
    loss = cls.float().square().mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    loss.item()
    sync()

  return {"forward": forward, "train": train}


def _gemm_rates(n: int, reps: int, device: str) -> dict[str, float]:
  a = np.random.default_rng(0).normal(size=(n, n)).astype(np.float32)
  ja = jax.device_put(a)
  jmm = jax.jit(lambda a: a @ a)
  ta = torch.from_numpy(a).to(device)
  sync = torch.cuda.synchronize if device == "cuda" else lambda: None

  def tmm():
    torch.mm(ta, ta)
    sync()

  fns = {"torch": tmm, "jax": lambda: jmm(ja).block_until_ready()}
  return {k: 2 * n**3 / t for k, t in interleaved(fns, reps, 1).items()}


def run_case(case: Case, device: str | None, parts: list[str]):
  """Yields (case, part, medians, FLOPs, jax compile seconds) per part."""
  hf = _random_hf_model(vit.config_for(case.variant))
  model = _jax_model(hf, case)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(FLAGS.batch, case.size, case.size, 3)).astype(np.float32)
  x_jax = jax.device_put(images)
  jfns = _jax_fns(model, x_jax)
  tfns = None
  if device:
    x_torch = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
    tfns = _torch_fns(hf, x_torch, case.dtype, device)
  flops = forward_flops(model.cfg, case.size, FLAGS.batch)
  for part in parts:
    # Compile (and for torch, allocate) outside the timed region.
    start = time.perf_counter()
    jfns[part]()
    compile_s = time.perf_counter() - start
    fns = {"torch": tfns[part]} if tfns else {}
    fns["jax"] = jfns[part]
    faults = {}
    med = interleaved(fns, *((1, 0) if FLAGS.dry_run else (FLAGS.reps, FLAGS.warmup)), faults)
    work = flops * (3 if part == "train" else 1)
    if FLAGS.profile:
      reps = 1 if FLAGS.dry_run else FLAGS.profile_reps
      jtab = op_profile.jax_ops(jfns[part], jfns["hlo"][part](), reps)
      ttab = op_profile.torch_ops(tfns[part], reps) if tfns else None
      _PROFILES.append(op_profile.markdown(
          f"{case.variant} {case.size} px, batch {FLAGS.batch}, {case.dtype}, {part}: "
          f"ms per call", jtab, ttab))
    yield case, part, med, work, compile_s, faults


def print_header(gpu: bool) -> None:
  rates = ("   torch TF/s  MFU     jax TF/s  MFU" if gpu
           else "   torch GF/s %gemm    jax GF/s %gemm")
  print(f"\n{'model':<8}{'size':>5} {'dtype':<9}{'attn':<6}{'part':<8}{'torch ms':>10}{'jax ms':>10}"
        f"{'torch/jax':>10}{rates}  jax compile s  faults torch      jax", flush=True)


def row_figures(row, gpu: bool) -> dict:
  case, part, med, work, compile_s, faults = row
  cfg = vit.config_for(case.variant)
  kernel, _ = attention.choose(_JNP_DTYPES[case.dtype], cfg.head_dim, case.attention)
  out = {"variant": case.variant, "size": case.size, "dtype": case.dtype, "part": part,
         "attention": case.attention, "kernel": kernel, "batch": FLAGS.batch,
         "compile_s": compile_s, "peak_bytes": peak_device_bytes()}
  for name, sec in med.items():
    out[f"{name}_ms"] = 1e3 * sec
    out[f"{name}_page_faults"] = faults[name]  # Minor faults per timed call, median.
    out[f"{name}_tflops"] = work / sec / 1e12
    if gpu:
      out[f"{name}_mfu"] = work / sec / 1e12 / FLAGS.peak_tflops
  if "torch" in med:
    out["torch_over_jax"] = med["torch"] / med["jax"]
  return out


def print_row(row, gemm: dict | None, gpu: bool) -> None:
  case, part, med, work, compile_s, faults = row
  best = max(gemm.values()) if gemm else None
  cells = []
  for name in ("torch", "jax"):
    if name not in med:
      cells.append(f"{'-':>13}{'-':>6}")
      continue
    rate = work / med[name]
    if gpu:
      cells.append(f"{rate / 1e12:13.1f}{100 * rate / (FLAGS.peak_tflops * 1e12):5.1f}%")
    else:
      frac = f"{100 * rate / best:5.1f}%" if best else f"{'-':>6}"
      cells.append(f"{rate / 1e9:13.1f}{frac}")
  t_ms = f"{1e3 * med['torch']:10.1f}" if "torch" in med else f"{'-':>10}"
  ratio = f"{med['torch'] / med['jax']:10.2f}" if "torch" in med else f"{'-':>10}"
  print(f"{case.variant:<8}{case.size:>5} {case.dtype:<9}{case.attention:<6}{part:<8}{t_ms}"
        f"{1e3 * med['jax']:10.1f}{ratio}{''.join(cells)}{compile_s:12.1f}"
        f"{faults.get('torch', '-'):>15} {faults['jax']:>8}", flush=True)


def main(argv):
  del argv
  tunables = reuse_freed_memory(FLAGS.malloc)
  if FLAGS.dry_run:  # Before the header, which prints the batch.
    FLAGS.sizes, FLAGS.batch = ["28"], 1
  gpu = jax.default_backend() == "gpu"
  if not FLAGS.torch:
    device = None
  elif gpu:
    device = "cuda" if torch.cuda.is_available() else None
  else:
    device = "cpu"
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.default_backend()}); "
        f"torch {torch.__version__} on {device}, {torch.get_num_threads()} threads; "
        f"batch {FLAGS.batch}, {FLAGS.reps} reps, jit={FLAGS.jit}; glibc malloc:"
        f" {tunables or 'defaults'}")
  gemm = None
  if FLAGS.profile and FLAGS.jit != "jax":
    raise app.UsageError("--profile needs --jit=jax (it reads the jitted step's HLO)")
  rows = Rows(FLAGS.json, bench="vit", dry_run=FLAGS.dry_run,
              device=jax.devices()[0].device_kind, peak_tflops=FLAGS.peak_tflops,
              glibc_tunables=tunables)
  if "gemm" in FLAGS.parts and device and not FLAGS.dry_run:
    gemm = _gemm_rates(FLAGS.gemm_n, max(3, FLAGS.reps // 2), device)
    print(f"fp32 GEMM {FLAGS.gemm_n}^3: torch {gemm['torch'] / 1e9:.1f} GFLOP/s, "
          f"jax {gemm['jax'] / 1e9:.1f} GFLOP/s", flush=True)
    rows.write(gemm_flops=gemm)
  parts = [p for p in FLAGS.parts if p in ("forward", "train")]
  cases = [Case(FLAGS.variant, int(s), FLAGS.dtype, a) for s in FLAGS.sizes
           for a in FLAGS.attention]
  paper = Case("vitb14", 448, "bfloat16")
  if gpu and not FLAGS.dry_run and not any(dataclasses.replace(c, attention="auto") == paper
                                           for c in cases):
    cases.append(paper)
  print_header(gpu)
  for case in cases:
    for row in run_case(case, device, parts):
      print_row(row, gemm, gpu)
      rows.add(row_figures(row, gpu))
  if FLAGS.profile:
    pathlib.Path(FLAGS.profile).write_text(
        f"# Per-op profile (tools/bench_vit.py; {jax.devices()[0].device_kind}, torch "
        f"{torch.get_num_threads()} threads)\n\n" + "\n".join(_PROFILES))
    print(f"Per-op tables: {FLAGS.profile}")


if __name__ == "__main__":
  app.run(main)
