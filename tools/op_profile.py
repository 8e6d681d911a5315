"""Per-op time tables of one jitted JAX call and one PyTorch call, to say which op is the wall.

JAX: ``jax.profiler.trace`` (its Perfetto JSON) records every XLA:CPU thunk as an event named
after its HLO instruction; each is matched to the compiled HLO to say what it computes (a matmul
and its shape, an elementwise or reduction fusion, a copy). PyTorch: ``torch.profiler``'s self
CPU time per aten op. Both tables give each op's share of the framework's own traced time, and
``summary`` groups them into the same few classes, so the two frameworks compare class by class.
"""

from __future__ import annotations

import collections
import gzip
import json
import pathlib
import re
import tempfile
from typing import Callable

# The shape: an array's, or a tuple's in parentheses (a while's state), which holds spaces.
_INSTR = re.compile(
    r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\(.*?\)(?=\s+[\w\-]+\()|\S+)\s+([\w\-]+)\((.*)$")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_TARGET = re.compile(r'custom_call_target="([^"]*)"')
_COMP = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")

# Thunk events that wrap others or are the runtime's own bookkeeping, not an HLO op's work.
_WRAPPERS = ("PjitFunction", "CommonPjRt", "ThunkExecutor", "Thread", "Slinky", "$", "end: ",
             "Handle ", "Wait for", "ParseArguments", "Allocate", "PythonRefManager")


def _computations(hlo: str) -> dict[str, list[tuple[str, str, str, str]]]:
  """computation name -> [(instruction, shape, opcode, rest of line)]."""
  comps, current = {}, None
  for line in hlo.splitlines():
    head = _COMP.match(line)
    if head and "=" not in line.split("{")[0]:
      current = comps.setdefault(head.group(1), [])
      continue
    m = _INSTR.match(line)
    if m and current is not None:
      current.append(m.groups())
  return comps


def classify_hlo(hlo: str) -> dict[str, dict]:
  """Every instruction of a compiled module -> {kind, shape, what}; fusions by what they hold.

  kind is ``matmul`` (holds a dot or convolution), ``reduce`` (a reduction: softmax and norm
  statistics, bias gradients), ``copy`` (transposes, copies, concatenations alone), ``loop``
  (a while or call: e.g. lax.map), ``attention`` (a custom call of an attention kernel: the
  fused CPU kernel), or ``elementwise``.
  """
  comps = _computations(hlo)

  def opcodes(comp: str, depth: int = 0) -> list[tuple[str, str, str, str]]:
    out = []
    for name, shape, op, rest in comps.get(comp, []):
      out.append((name, shape, op, rest))
      if depth < 3:
        for callee in _CALLS.findall(rest):
          out.extend(opcodes(callee, depth + 1))
    return out

  shapes = {name: shape for instrs in comps.values() for name, shape, _, _ in instrs}

  def operands(rest: str) -> str:
    args = rest.split(")", 1)[0]
    return " x ".join(shapes.get(a.strip().lstrip("%"), "?").split("{")[0]
                      for a in args.split(",") if a.strip())

  table = {}
  for instrs in comps.values():
    for name, shape, op, rest in instrs:
      callee = _CALLS.search(rest)
      inner = opcodes(callee.group(1)) if callee else []
      ops = {o for _, _, o, _ in inner} | {op}
      dots = [(s, r) for _, s, o, r in inner + [(name, shape, op, rest)]
              if o in ("dot", "convolution")]
      if dots:
        shape_, rest_ = dots[0]
        kind = "matmul"
        meta = _OP_NAME.search(rest_)
        backward = "backward " if meta and "transpose" in meta.group(1) else ""
        what = f"{shape_.split('{')[0]} = {backward}dot of {operands(rest_)}"
      elif op == "custom-call":  # A kernel of our own (or XLA's), by its target's name.
        target = _TARGET.search(rest)
        target = target.group(1) if target else "?"
        kind = "attention" if "attention" in target else "other"
        what = f"{re.sub(r'[{][^}]*[}]', '', shape)} = {target}"  # Layouts dropped.
      elif op in ("while", "call", "conditional"):
        kind, what = "loop", op
      elif ops & {"reduce", "reduce-window"}:
        kind, what = "reduce", shape
      elif ops <= {"copy", "transpose", "bitcast", "concatenate", "slice", "dynamic-slice",
                   "dynamic-update-slice", "parameter", "pad", "reshape", "broadcast",
                   "fusion", "tuple", "get-tuple-element", "constant"}:
        kind, what = "copy", f"{shape} {'/'.join(sorted(ops - {'parameter', 'fusion'}))}"
      else:
        kind, what = "elementwise", shape
      if kind not in ("matmul", "attention"):
        # What the user's program called, from the traced primitives' names (exp, mul, ...).
        prims = sorted({m.group(1).rsplit("/", 1)[-1].split("[")[0]
                        for _, _, _, r in inner + [(name, shape, op, rest)]
                        for m in [_OP_NAME.search(r)] if m})
        what = f"{what.split('{')[0]} {'+'.join(prims)[:60]}".strip()
      table[name] = {"kind": kind, "what": what}
  return table


def jax_ops(fn: Callable[[], None], hlo: str, reps: int) -> dict:
  """Traces ``reps`` calls of ``fn``: per-op {ms per call, share, kind, what}, summed over
  threads (XLA:CPU runs independent thunks at once)."""
  fn()
  with tempfile.TemporaryDirectory() as tmp:
    import jax
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      for _ in range(reps):
        fn()
    (trace,) = pathlib.Path(tmp).rglob("perfetto_trace.json.gz")
    events = json.loads(gzip.decompress(trace.read_bytes()))
  events = events["traceEvents"] if isinstance(events, dict) else events
  kinds = classify_hlo(hlo)
  per_op = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and not e["name"].startswith(_WRAPPERS):
      per_op[e.get("args", {}).get("hlo_op", e["name"])] += e["dur"]
  # A while thunk (lax.map) spans the thunks of its body, which are counted themselves.
  for name in [n for n in per_op if kinds.get(n, {}).get("kind") == "loop"]:
    del per_op[name]
  total = sum(per_op.values())
  rows = {name: {"ms": us / 1e3 / reps, "share": us / total,
                 **kinds.get(name, {"kind": "other", "what": "?"})}
          for name, us in per_op.most_common()}
  return {"traced_ms": total / 1e3 / reps, "ops": rows}


# aten ops -> the classes of classify_hlo, for the side-by-side summary.
_TORCH_KINDS = (
    ("matmul", ("mm", "addmm", "bmm", "matmul", "linear", "conv", "baddbmm", "_convolution")),
    ("attention", ("scaled_dot_product", "flash_attention")),
    ("reduce", ("sum", "mean", "native_layer_norm", "layer_norm", "softmax", "norm")),
    ("copy", ("copy_", "contiguous", "clone", "cat", "transpose", "permute", "t", "to", "_to_copy",
              "empty", "zero_", "fill_", "view", "reshape", "as_strided")),
)


def _torch_kind(name: str) -> str:
  base = name.removeprefix("aten::")
  for kind, names in _TORCH_KINDS:
    if any(base == n or base.startswith(n + "_") or (n in base and len(n) > 6) for n in names):
      return kind
  return "elementwise"


def torch_ops(fn: Callable[[], None], reps: int) -> dict:
  """``reps`` calls of ``fn`` under torch.profiler: self CPU ms per call for each aten op."""
  import torch
  fn()
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(reps):
      fn()
  per_op = {e.key: e.self_cpu_time_total for e in prof.key_averages()
            if e.self_cpu_time_total > 0}
  total = sum(per_op.values())
  rows = {name: {"ms": us / 1e3 / reps, "share": us / total, "kind": _torch_kind(name),
                 "what": name}
          for name, us in sorted(per_op.items(), key=lambda kv: -kv[1])}
  return {"traced_ms": total / 1e3 / reps, "ops": rows}


def summary(table: dict) -> dict[str, float]:
  """ms per call by kind."""
  out = collections.Counter()
  for row in table["ops"].values():
    out[row["kind"]] += row["ms"]
  return dict(out.most_common())


def markdown(title: str, jax_table: dict, torch_table: dict | None, top: int = 15) -> str:
  lines = [f"### {title}", ""]
  kinds = summary(jax_table)
  tk = summary(torch_table) if torch_table else {}
  lines += ["| class | jax ms | torch ms |", "| --- | ---: | ---: |"]
  for kind in dict.fromkeys([*kinds, *tk]):
    lines.append(f"| {kind} | {kinds.get(kind, 0):.1f} | {tk.get(kind, 0):.1f} |")
  lines.append(f"| all traced | {jax_table['traced_ms']:.1f} | "
               f"{torch_table['traced_ms'] if torch_table else 0:.1f} |")
  groups = collections.defaultdict(lambda: [0.0, 0])
  for row in jax_table["ops"].values():
    groups[(row["kind"], row["what"])][0] += row["ms"]
    groups[(row["kind"], row["what"])][1] += 1
  lines += ["", f"jax, the top {top} by what they compute (ops with the same shape and primitives"
            " summed):", "", "| class | what | ops | ms | share |",
            "| --- | --- | ---: | ---: | ---: |"]
  for (kind, what), (ms, count) in sorted(groups.items(), key=lambda kv: -kv[1][0])[:top]:
    lines.append(f"| {kind} | {what} | {count} | {ms:.1f} | "
                 f"{100 * ms / jax_table['traced_ms']:.1f} % |")
  for name, table in (("jax", jax_table), ("torch", torch_table)):
    if not table:
      continue
    lines += ["", f"{name}, top {top} ops:", "", "| op | ms | share | class | what |",
              "| --- | ---: | ---: | --- | --- |"]
    for op, row in list(table["ops"].items())[:top]:
      lines.append(f"| {op} | {row['ms']:.2f} | {100 * row['share']:.1f} % | {row['kind']} |"
                   f" {row['what']} |")
  return "\n".join(lines) + "\n"
