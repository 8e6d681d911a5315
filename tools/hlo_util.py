"""Reading an optimised HLO module's text (``compiled.as_text()``): its collectives and their
bytes, and the FLOPs of its matmuls. tools/scale_report.py reports them."""

from __future__ import annotations

import re

import numpy as np

# Bytes per element of HLO types.
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


_SHAPE = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([0-9,]*)\]")
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<shape>.*?)\s(?P<op>[a-z\-]+)\((?P<args>.*)$")


def _shape_bytes(text: str) -> int:
  return sum(_DTYPE_BYTES[t] * int(np.prod([int(d) for d in dims.split(",") if d]))
             for t, dims in _SHAPE.findall(text))


def _group_size(line: str, devices: int) -> int:
  iota = re.search(r"replica_groups=\[(\d+),(\d+)\]", line)
  if iota:
    return int(iota.group(2))
  groups = re.search(r"replica_groups=\{\{([0-9,]*)\}", line)
  if groups and groups.group(1):
    return len(groups.group(1).split(","))
  return devices


def collectives(hlo_text: str, devices: int) -> dict:
  """Per collective kind: ``count``, ``bytes`` (the result buffers) and ``wire_bytes``, what one
  device sends per step in ring algorithms over groups of n: all-reduce 2(n-1)/n x size,
  all-gather (n-1)/n x result, reduce-scatter (n-1) x result, all-to-all (n-1)/n x size,
  collective-permute its size."""
  out = {k: {"count": 0, "bytes": 0, "wire_bytes": 0.0} for k in COLLECTIVES}
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    op = match.group("op")
    op = op[:-len("-start")] if op.endswith("-start") else op
    if op not in out:
      continue
    shape = match.group("shape")
    if match.group("op").endswith("-start") and op in ("all-gather", "collective-permute"):
      # Async starts hold (operands, results); an all-reduce-start's shape is its results.
      parts = _SHAPE.findall(shape)
      shape = " ".join(f"{t}[{d}]" for t, d in parts[len(parts) // 2:])
    size = _shape_bytes(shape)
    n = _group_size(line, devices)
    factor = {"all-reduce": 2 * (n - 1) / n, "all-gather": (n - 1) / n,
              "reduce-scatter": n - 1, "all-to-all": (n - 1) / n, "collective-permute": 1.0}[op]
    out[op]["count"] += 1
    out[op]["bytes"] += size
    out[op]["wire_bytes"] += factor * size if n > 1 else 0.0
  return out


def hlo_dots(hlo_text: str) -> list[tuple[float, str]]:
  """``(FLOPs, instruction)`` of every ``dot`` in an optimised HLO module (one device's share):
  2 x the output size x the contracted size."""
  shapes: dict[str, str] = {}
  dots = []
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    shapes[line.split("=")[0].split()[-1].lstrip("%")] = match.group("shape")
    contract = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", line)
    if match.group("op") != "dot" or not contract:
      continue
    out = _SHAPE.findall(match.group("shape"))
    lhs = _SHAPE.findall(shapes.get(match.group("args").split(",")[0].strip().lstrip("%"), ""))
    if not out or not lhs:
      raise ValueError(f"cannot read the shapes of: {line.strip()[:200]}")
    lhs_dims = [int(d) for d in lhs[0][1].split(",") if d]
    k = int(np.prod([lhs_dims[int(i)] for i in contract.group(1).split(",") if i]))
    dots.append((2.0 * k * int(np.prod([int(d) for d in out[0][1].split(",") if d])), line))
  return dots


def hlo_dot_flops(hlo_text: str) -> float:
  return sum(f for f, _ in hlo_dots(hlo_text))
