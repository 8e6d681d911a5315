"""tools/bench_vit.py's dry run, and its per-op profile (tools/op_profile.py)."""

import json

import jax
import jax.numpy as jnp
import pytest

import bench_util
import helpers
import op_profile


def test_classify_names_the_matmul_and_its_shapes():
  f = jax.jit(lambda a, b: jnp.tanh(a @ b).sum(0))
  hlo = f.lower(jnp.ones((8, 16)), jnp.ones((16, 4))).compile().as_text()
  kinds = op_profile.classify_hlo(hlo)
  dots = [v["what"] for v in kinds.values() if v["kind"] == "matmul"]
  assert dots and all("f32[8,16] x f32[16,4]" in d for d in dots), kinds
  table = op_profile.jax_ops(lambda: f(jnp.ones((8, 16)), jnp.ones((16, 4))).block_until_ready(),
                             hlo, reps=2)
  assert table["traced_ms"] > 0 and sum(r["share"] for r in table["ops"].values()) > 0.99
  assert "matmul" in op_profile.summary(table), table


def test_a_loop_is_classified_as_one_and_not_counted_beside_its_body():
  # lax.map's while carries a tuple, whose shape holds spaces; the profile drops loops' own spans
  # (their bodies' ops are counted), so an unparsed while was counted twice, as "other".
  xs = jnp.ones((4, 8, 8))
  f = jax.jit(lambda xs: jax.lax.map(lambda x: jnp.tanh(x @ x), xs))
  hlo = f.lower(xs).compile().as_text()
  kinds = op_profile.classify_hlo(hlo)
  whiles = [line.split("=")[0].strip().lstrip("%") for line in hlo.splitlines()
            if " while(" in line]
  assert whiles and all(kinds[w]["kind"] == "loop" for w in whiles), (whiles, kinds)
  table = op_profile.jax_ops(lambda: f(xs).block_until_ready(), hlo, reps=2)
  assert "other" not in op_profile.summary(table), table


def test_the_fused_cpu_attention_kernel_is_classified_as_attention():
  from attend_jax.models import attention, cpu_attention

  q = jnp.ones((2, 17, 2, 16))
  f = jax.jit(jax.grad(lambda q: attention.dot_product_attention(q, q, q, "cpu").sum()))
  hlo = f.lower(q).compile().as_text()
  kinds = op_profile.classify_hlo(hlo)
  calls = {v["what"] for v in kinds.values() if v["kind"] == "attention"}
  assert {what.split(" = ")[-1] for what in calls} == {cpu_attention.FORWARD,
                                                       cpu_attention.BACKWARD}, calls
  assert "(f32[2,17,2,16], f32[2,2,17]) = " + cpu_attention.FORWARD in calls, calls
  table = op_profile.jax_ops(lambda: f(q).block_until_ready(), hlo, reps=2)
  assert op_profile.summary(table)["attention"] > 0, table


def _touch(size: int, region=None):
  """Writes one byte in each 4 KiB page of ``region`` (a fresh anonymous mapping of ``size``
  bytes, without huge pages, if None): one minor fault per page the first time."""
  import mmap

  if region is None:
    region = mmap.mmap(-1, size)
    region.madvise(mmap.MADV_NOHUGEPAGE)
  for offset in range(0, size, 4096):
    region[offset] = 1
  return region


def _growing_heap(calls_that_fault: int, size: int = 60 << 20):
  """A call that touches ``size`` bytes of fresh memory its first ``calls_that_fault`` times (as
  a step whose heap still grows), then memory it has touched before; and the list of its
  calls."""
  kept, calls = [], []
  reused = _touch(size)

  def fn():
    calls.append(len(calls))
    if len(calls) <= calls_that_fault:
      kept.append(_touch(size))
    else:
      _touch(size, reused)
  return fn, calls


def test_warm_up_goes_on_until_calls_stop_faulting():
  settles, settles_calls = _growing_heap(3)
  steady, steady_calls = _growing_heap(0)
  faults = {}
  bench_util.interleaved({"settles": settles, "steady": steady}, reps=2, warmup=1, faults=faults)
  # Three faulting calls, then one warm-up round without faults, then the two timed calls.
  assert len(settles_calls) == 3 + 1 + 2 and len(steady_calls) == len(settles_calls)
  assert faults["settles"] <= bench_util.SETTLED_FAULTS, faults
  # A call that always faults ends the warm-up after MAX_SETTLE_ROUNDS more rounds.
  never, never_calls = _growing_heap(100)
  faults = {}
  bench_util.interleaved({"never": never}, reps=1, warmup=1, faults=faults)
  assert len(never_calls) == 1 + bench_util.MAX_SETTLE_ROUNDS + 1
  assert faults["never"] > bench_util.SETTLED_FAULTS, faults


@pytest.mark.slow
def test_dry_run_writes_rows_and_both_frameworks_op_tables(tmp_path):
  # docs/scale.md's flags; --dry_run makes the sizes 28 px.
  out = helpers.run("tools/bench_vit.py", "--dry_run", "--sizes=224,448", "--parts=forward,train",
                    f"--json={tmp_path / 'vit.json'}", f"--profile={tmp_path / 'profile.md'}")
  assert out.returncode == 0, out.stderr[-3000:]
  figures = json.loads((tmp_path / "vit.json").read_text())
  rows = figures["rows"]
  # Run again with the glibc tunables that keep freed memory for reuse, and says so.
  assert figures["glibc_tunables"] == bench_util.MALLOC_REUSE
  assert f"glibc malloc: {bench_util.MALLOC_REUSE}" in out.stdout
  assert "batch 1, " in out.stdout.splitlines()[0], out.stdout  # The header's batch: the run's.
  # The parts asked for, at the dry run's one size (28 px) and batch (1).
  assert [(r["part"], r["size"], r["batch"]) for r in rows] == [("forward", 28, 1),
                                                                 ("train", 28, 1)]
  printed = [line.split() for line in out.stdout.splitlines() if line.startswith("vits14 ")]
  assert [(p[1], p[4]) for p in printed] == [("28", "forward"), ("28", "train")], out.stdout
  # ViT-S/14 at 28 px, by hand: 2 x 2 patches and the CLS, 5 tokens of width 384, MLP 1536,
  # 12 blocks; 2 x the multiply-adds of qkv, proj, the MLP, the scores and the weighted values,
  # plus the patch embedding. A train step is 3 forwards.
  d, t = 384, 5
  forward = 12 * (2 * t * d * (3 * d + d + 2 * 4 * d) + 2 * 2 * t * t * d) + 2 * 4 * 14 * 14 * 3 * d
  for row, cells in zip(rows, printed):
    flops = forward * (3 if row["part"] == "train" else 1)
    for name in ("torch", "jax"):  # Each rate is the same count over that framework's time.
      assert row[f"{name}_tflops"] * row[f"{name}_ms"] * 1e9 == pytest.approx(flops), name
    assert row["torch_over_jax"] == pytest.approx(row["torch_ms"] / row["jax_ms"])
    torch_ms, jax_ms, ratio = cells[5:8]
    assert abs(float(torch_ms) - row["torch_ms"]) <= 0.05, (cells, row)
    assert abs(float(jax_ms) - row["jax_ms"]) <= 0.05, (cells, row)
    assert helpers.printed_quotient(ratio, torch_ms, jax_ms), cells
    # The last two cells: each framework's minor page faults per timed call, as recorded.
    assert [int(c) for c in cells[-2:]] == [row["torch_page_faults"], row["jax_page_faults"]]
    assert min(row["torch_page_faults"], row["jax_page_faults"]) >= 0
  profile = (tmp_path / "profile.md").read_text()
  assert profile.count("### vits14 28 px") == 2
  assert "| aten::" in profile and "= backward dot of" in profile  # The train step's backward.


@pytest.mark.slow
def test_attention_a_b_without_torch_writes_a_row_per_kernel(tmp_path):
  """bench_accelerator.sh's A/B: each case once per kernel, JAX alone."""
  out = helpers.run("tools/bench_vit.py", "--dry_run", "--parts=train", "--attention=xla,cpu",
                    "--notorch", f"--json={tmp_path / 'ab.json'}")
  assert out.returncode == 0, out.stderr[-3000:]
  rows = json.loads((tmp_path / "ab.json").read_text())["rows"]
  assert [(r["attention"], r["kernel"]) for r in rows] == [("xla", "xla"), ("cpu", "cpu")]
  assert all("torch_ms" not in r for r in rows)
  # Printed as recorded, the torch columns empty.
  printed = [line.split() for line in out.stdout.splitlines() if line.startswith("vits14 ")]
  assert [(p[3], p[4], p[5], p[7]) for p in printed] == [("xla", "train", "-", "-"),
                                                         ("cpu", "train", "-", "-")], out.stdout
  for row, cells in zip(rows, printed):
    assert abs(float(cells[6]) - row["jax_ms"]) <= 0.05, (cells, row)
  assert all(r["peak_bytes"] is None for r in rows)  # The CPU keeps no memory statistics.
