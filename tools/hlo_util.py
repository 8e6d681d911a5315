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


def _shape_bytes(text: str, f32_bytes: int = 4) -> int:
  return sum((f32_bytes if t == "f32" else _DTYPE_BYTES[t])
             * int(np.prod([int(d) for d in dims.split(",") if d]))
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


# --- the roofline's op classes -------------------------------------------------------------------

OP_CLASSES = ("matmul", "attention", "elementwise", "collective")
# Instructions that move no data: views, tuples, constants, parameters, control flow (whose
# bodies are counted instead).
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "call",
         "conditional", "after-all", "opt-barrier", "partition-id", "replica-id", "iota"}
_HEADER = re.compile(r"^(ENTRY\s+)?%?(?P<name>[\w.\-]+)\s+\(.*\)\s+->\s+.*\{\s*$")


def _table(text: str, name: str) -> dict[int, str]:
  """One of the module's source tables (FileNames, FunctionNames, FileLocations, StackFrames)."""
  start = text.find("\n" + name + "\n")
  out: dict[int, str] = {}
  if start < 0:
    return out
  for line in text[start + len(name) + 2:].splitlines():
    row = re.match(r"(\d+) (.*)$", line)
    if not row:
      break
    out[int(row.group(1))] = row.group(2)
  return out


def _source_files(text: str) -> dict[int, str]:
  """stack_frame_id -> the file of that frame (the op's innermost user frame)."""
  files, locations, frames = (_table(text, t) for t in ("FileNames", "FileLocations",
                                                          "StackFrames"))
  out = {}
  for frame, row in frames.items():
    location = re.search(r"file_location_id=(\d+)", row)
    loc = locations.get(int(location.group(1)), "") if location else ""
    file_id = re.search(r"file_name_id=(\d+)", loc)
    out[frame] = files.get(int(file_id.group(1)), "").strip('"') if file_id else ""
  return out


def _operands(line: str, op: str) -> list[str]:
  """The operand names of an instruction: the %names inside its opcode's parentheses."""
  start = line.index(op + "(") + len(op) + 1
  depth, end = 1, start
  while end < len(line) and depth:
    depth += {"(": 1, ")": -1}.get(line[end], 0)
    end += 1
  return re.findall(r"%([\w.\-]+)", line[start:end - 1])


def op_classes(hlo_text: str, devices: int, attention_file: str = "attention.py",
               bf16_sources: tuple[str, ...] = ()) -> dict:
  """Per class (matmul, attention, elementwise, collective): ``count``, ``flops`` (2 x
  multiply-adds of the dots) and ``bytes`` (operands read and results written) of the
  instructions of an optimised module that go through memory: its fusions and unfused ops in
  the entry computation and control-flow bodies (a while body counted ``known_trip_count``
  times where XLA knows it). Inside a fusion, values stay on chip. Attention is every
  instruction the source file ``attention_file`` emitted (its matmuls and the softmax over the
  scores); collectives also get ``wire_bytes`` (``collectives``).

  ``bf16_sources``: path fragments of the source files whose float32 values count 2 bytes, for a
  bfloat16 model compiled by XLA:CPU, which widens every bfloat16 value to float32 (it has no
  bfloat16 arithmetic): its layers' activations are 16-bit on an accelerator."""
  lines = hlo_text.splitlines()
  frames = _source_files(hlo_text)
  computations: dict[str, list[str]] = {}
  current = None
  for line in lines:
    header = _HEADER.match(line)
    if header:
      current = header.group("name")
      computations[current] = []
    elif line.strip() == "}":
      current = None
    elif current is not None and _INSTRUCTION.match(line):
      computations[current].append(line)
  shapes, inner, trips = {}, set(), {}
  for body in computations.values():
    for line in body:
      match = _INSTRUCTION.match(line)
      shapes[line.split("=")[0].split()[-1].lstrip("%")] = match.group("shape")
      if match.group("op") == "fusion" or "to_apply=" in line:
        inner.update(re.findall(r"(?:calls|to_apply)=%([\w.\-]+)", line))
      if match.group("op") == "while":
        body_name = re.search(r"body=%([\w.\-]+)", line)
        n = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
        if body_name:
          trips[body_name.group(1)] = int(n.group(1)) if n else 1

  def source(line):
    frame = re.search(r"stack_frame_id=(\d+)", line)
    return frames.get(int(frame.group(1)), "") if frame else ""

  per_dot = {line: flops for flops, line in hlo_dots(hlo_text)}
  dot_flops = {name: sum(per_dot.get(l, 0.0) for l in body) for name, body in computations.items()}
  # Whatever attention_file emitted: its matmuls, and the softmax passes over the scores.
  attention = {name: any(source(l).endswith(attention_file) for l in body)
               for name, body in computations.items()}
  sourced = {name: any(source(l) for l in body) for name, body in computations.items()}
  narrow = {name: bool(bf16_sources) and any(f in source(l) for l in body for f in bf16_sources)
            for name, body in computations.items()}
  kinds: dict[str, str] = {}  # Instruction -> its class, for the copies XLA adds without a source.
  out = {k: {"count": 0, "flops": 0.0, "bytes": 0.0} for k in OP_CLASSES}
  wire = collectives("\n".join(l for name, body in computations.items() if name not in inner
                               for l in body), devices)
  for name, body in computations.items():
    if name in inner:
      continue
    times = trips.get(name, 1)
    for line in body:
      op = _INSTRUCTION.match(line).group("op")
      if op in _FREE:
        continue
      base = op[:-len("-start")] if op.endswith("-start") else op
      if op.endswith("-done"):
        continue  # Its -start holds the transfer.
      called = re.search(r"calls=%([\w.\-]+)", line)
      flops = dot_flops.get(called.group(1), 0.0) if called else per_dot.get(line, 0.0)
      operands = _operands(line, op)
      if base in COLLECTIVES:
        kind = "collective"
      elif (attention.get(called.group(1), False) if called else
            source(line).endswith(attention_file)):
        kind = "attention"
      elif not (sourced.get(called.group(1), False) if called else source(line)) and any(
          kinds.get(o) == "attention" for o in operands):
        kind = "attention"  # A layout copy XLA added to the scores: attention's traffic.
      elif flops:
        kind = "matmul"
      else:
        kind = "elementwise"
      kinds[line.split("=")[0].split()[-1].lstrip("%")] = kind
      f32 = 2 if (narrow.get(called.group(1), False) if called else
                  bool(bf16_sources) and any(f in source(line) for f in bf16_sources)) else 4
      moved = _shape_bytes(_INSTRUCTION.match(line).group("shape"), f32) + sum(
          _shape_bytes(shapes.get(o, ""), f32) for o in operands)
      out[kind]["count"] += times
      out[kind]["flops"] += times * flops
      out[kind]["bytes"] += times * moved
  out["collective"]["wire_bytes"] = sum(c["wire_bytes"] for c in wire.values())
  return out
