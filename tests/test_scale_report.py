"""tools/scale_report.py on a tiny config and 8 simulated devices: its FLOPs are the analytic
count's, its parameter bytes the tiny model's parameters counted by hand, its memory figures
are positive and fsdp shrinks the parameters a device holds."""

import json
import sys

import pytest

import helpers

sys.path.insert(0, str(helpers.REPO / "tools"))
import hlo_util  # noqa: E402

# vindr.py:smoke is a 32-wide 2-block ViT; small stored images keep the RoI crop cheap. Block 0
# frozen: the analytic count then holds only if the step drops its weight gradients.
TINY = ["--config=configs/vindr.py:smoke", "--config.data.image_size=128",
        "--config.model.freeze_blocks=1", "--nofit", "--noeval"]


@pytest.mark.slow
def test_tiny_config_on_eight_devices(tmp_path):
  out = tmp_path / "scale.json"
  proc = helpers.run("tools/scale_report.py", *TINY, "--lower_for=tpu,cuda", f"--json={out}",
                     "--detector_config=configs/detector_vindr.py:smoke", devices=None)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert "HLO matmuls / analytic" in proc.stdout
  report = json.loads(out.read_text())
  # The TPU program holds the splash kernels; a float32 config on a GPU gets XLA's attention
  # (and cuDNN's could not be lowered without a GPU anyway).
  assert report["lowered"]["tpu"]["attention"] == "splash"
  assert any(k.startswith("splash_mha_fwd") for k in report["lowered"]["tpu"]["kernels"])
  assert report["lowered"]["cuda"]["attention"] == "xla"
  assert report["per_device_batch"] == 1 and report["peak_gb_per_device"] > 0
  # The detector's proposals: paid at every step on the fly, once per image in the records.
  cost = report["proposals"]
  assert cost["on_the_fly_flops_per_step"] > 0 and 0 < cost["of_the_train_step"] < 1
  assert cost["computed_once_flops_per_image"] == pytest.approx(
      cost["on_the_fly_flops_per_step"] / 8)
  for chip, kernel in (("h100", "xla"), ("v5e", "splash")):
    roof = report["roofline"][chip]
    assert roof["attention_kernel"] == kernel and 0 < roof["mfu"] < 1
  reports = report["reports"]
  data_only, fsdp = reports
  assert data_only["mesh"] == {"data": 8, "fsdp": 1} and fsdp["mesh"] == {"data": 1, "fsdp": 8}
  for r in reports:
    analytic = r["analytic"]["train"]
    # Every matmul of the compiled step is in the analytic count, and nothing else: the few
    # left out (the losses' similarity matrices) are far below 1 %.
    assert r["train"]["dot_flops_per_device"] * 8 == pytest.approx(analytic["total"], rel=0.01)
    # XLA's own count adds norms, activations and softmax: more, never less.
    assert 1.0 < r["flops_ratio"] < 2.0
    mem = r["train"]["memory"]
    assert all(mem[k] > 0 for k in ("arguments", "outputs", "temporaries", "peak"))
    assert mem["peak"] >= mem["arguments"] and mem["arguments"] >= r["params_per_device"]
    assert r["params_per_device"] > 0 and r["opt_state_per_device"] > r["params_per_device"]
    for chip in ("H100", "v5e"):
      assert r["projection"][chip]["step_s"] > 0 and r["projection"][chip]["collective_s"] > 0
    # The roofline's op classes against XLA's own totals: every dot's FLOPs, and the bytes its
    # cost analysis counts (operands and results of each top-level instruction).
    classes = r["train"]["op_classes"]
    assert sum(c["flops"] for c in classes.values()) == r["train"]["dot_flops_per_device"]
    assert sum(c["bytes"] for c in classes.values()) == pytest.approx(
        r["train"]["bytes_per_device"], rel=0.02)
    assert classes["attention"]["flops"] > 0 and classes["collective"]["wire_bytes"] > 0
    # Remat keeps fewer activations, for more FLOPs.
    remat = r["remat"]
    assert remat["none"]["saved_bytes"] > remat["dots"]["saved_bytes"] > remat["full"][
        "saved_bytes"]
    assert remat["none"]["flop_overhead"] == 0 < remat["dots"]["flop_overhead"] < remat[
        "full"]["flop_overhead"] < 0.5
  # The tiny model's parameters, counted from its architecture: a 32-wide 2-block ViT (MLP 4 x
  # wider, 4 x 4 position grid, patches of 14 x 14 x 3), then 3 aggregator blocks on tokens of
  # 32 + 256 (the four boxes' sine embedding) = 288, the head and the contrastive projection.
  w, e = 32, 32 + 256
  vit_block = ((w * 3 * w + 3 * w) + (w * w + w) + (w * 4 * w + 4 * w) + (4 * w * w + w)
               + 2 * w + 4 * w)  # qkv, proj, MLP, two LayerScales and two LayerNorms.
  vit = (14 * 14 * 3 * w + w) + (1 + 4 * 4) * w + w + 2 * w + 2 * vit_block  # + pos, CLS, norm.
  aggregator_block = 4 * (e * e + e) + (e * e + e) + 4 * e  # q, k, v, out, MLP, 2 LayerNorms.
  head = ((256 * 256 + 256) + 2 * e + (e * 256 + 256) + (256 + 1)  # Boxes, BatchNorm, fc1, fc2.
          + (e * e + e) + (e * 128 + 128))  # The projection to 128.
  # Data parallelism keeps them all on every device, in float32.
  assert data_only["params_per_device"] == 4 * (vit + 3 * aggregator_block + head)
  assert fsdp["params_per_device"] < data_only["params_per_device"]
  assert fsdp["opt_state_per_device"] < data_only["opt_state_per_device"]
  # Data parallelism all-reduces the gradients: at least the parameters' bytes a step.
  assert data_only["train"]["collectives"]["all-reduce"]["bytes"] >= data_only["params_per_device"]


@pytest.mark.slow
@pytest.mark.parametrize("config, extra, mesh", [
    ("configs/cbis.py:smoke", ("--compare_fsdp=0",), [{"data": 8, "fsdp": 1}]),
    ("configs/vindr_reference.py:smoke", ("--devices=1",), [{"data": 1, "fsdp": 1}]),
    ("configs/vindr.py:smoke", ("--config.mesh.fsdp=4", "--compare_fsdp=0"),
     [{"data": 2, "fsdp": 4}]),
])
def test_the_readme_s_other_reports(tmp_path, config, extra, mesh):
  """docs/scale.md's other scale_report commands, small: another config, one device, the config's
  own fsdp mesh alone."""
  out = tmp_path / "scale.json"
  proc = helpers.run("tools/scale_report.py", f"--config={config}", *TINY[1:], *extra,
                     f"--json={out}", "--noremat_sweep", devices=None)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  reports = json.loads(out.read_text())["reports"]
  assert [r["mesh"] for r in reports] == mesh
  assert all(r["train"]["memory"]["peak"] > 0 for r in reports)


@pytest.mark.slow
def test_a_batch_the_devices_do_not_divide_is_one_clear_line():
  proc = helpers.run("tools/scale_report.py", *TINY, "--config.data.batch_size=4", devices=None)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: data.batch_size (4) is not a multiple of the 8 devices; set"
      " --config.data.batch_size= or --devices=.")


HLO = """
ENTRY %main {
  %p0 = f32[8,1024]{1,0} parameter(0)
  %all-reduce.1 = f32[8,1024]{1,0} all-reduce(%p0), replica_groups=[1,8]<=[8], to_apply=%add
  %all-gather.2 = bf16[64,1024]{1,0} all-gather(%p0), replica_groups={{0,1,2,3},{4,5,6,7}}
  %rs.3 = (f32[2,1024]{1,0}, f32[4]{0}) reduce-scatter(%p0, %p0), replica_groups=[2,4]<=[8]
  %w = f32[1024,256]{1,0} parameter(1)
  ROOT %dot.4 = f32[8,256]{1,0} dot(%p0, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}
"""


def test_collectives_and_matmuls_are_read_from_the_hlo():
  c = hlo_util.collectives(HLO, 8)
  assert c["all-reduce"] == {"count": 1, "bytes": 8 * 1024 * 4,
                             "wire_bytes": 2 * 7 / 8 * 8 * 1024 * 4}
  assert c["all-gather"]["bytes"] == 64 * 1024 * 2
  assert c["all-gather"]["wire_bytes"] == 3 / 4 * 64 * 1024 * 2
  assert c["reduce-scatter"]["bytes"] == (2 * 1024 + 4) * 4
  assert c["reduce-scatter"]["wire_bytes"] == 3 * (2 * 1024 + 4) * 4
  assert hlo_util.hlo_dot_flops(HLO) == 2 * 8 * 256 * 1024


# A module as XLA prints it: source tables, a matmul fusion from the model, an attention dot
# from attend_jax/models/attention.py inside a while loop of known trip count, an elementwise
# fusion and a collective.
CLASSES_HLO = """HloModule m

FileNames
1 "/x/attend_jax/models/vit.py"
2 "/x/attend_jax/models/attention.py"

FunctionNames
1 "f"

FileLocations
1 {file_name_id=1 function_name_id=1 line=10 end_line=10 column=0 end_column=0}
2 {file_name_id=2 function_name_id=1 line=20 end_line=20 column=0 end_column=0}

StackFrames
1 {file_location_id=1 parent_frame_id=1}
2 {file_location_id=2 parent_frame_id=2}

%fused_mm (a: f32[8,64], b: f32[64,32]) -> f32[8,32] {
  %a = f32[8,64]{1,0} parameter(0)
  %b = f32[64,32]{1,0} parameter(1)
  ROOT %d = f32[8,32]{1,0} dot(%a, %b), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={stack_frame_id=1}
}

%fused_add (x: f32[8,32]) -> f32[8,32] {
  %x = f32[8,32]{1,0} parameter(0)
  ROOT %y = f32[8,32]{1,0} add(%x, %x)
}

%body (s: f32[16,16]) -> f32[16,16] {
  %s = f32[16,16]{1,0} parameter(0)
  ROOT %qk = f32[16,16]{1,0} dot(%s, %s), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={stack_frame_id=2}
}

%cond (c: f32[16,16]) -> pred[] {
  %c = f32[16,16]{1,0} parameter(0)
  ROOT %t = pred[] constant(true)
}

ENTRY %main (p0: f32[8,64], p1: f32[64,32], p2: f32[16,16]) -> f32[8,32] {
  %p0 = f32[8,64]{1,0} parameter(0)
  %p1 = f32[64,32]{1,0} parameter(1)
  %p2 = f32[16,16]{1,0} parameter(2)
  %mm = f32[8,32]{1,0} fusion(%p0, %p1), kind=kOutput, calls=%fused_mm
  %loop = f32[16,16]{1,0} while(%p2), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  %ar = f32[8,32]{1,0} all-reduce(%mm), replica_groups=[1,4]<=[4], to_apply=%fused_add
  ROOT %out = f32[8,32]{1,0} fusion(%ar), kind=kLoop, calls=%fused_add
}
"""


def test_op_classes_count_flops_and_bytes_by_hand():
  c = hlo_util.op_classes(CLASSES_HLO, 4)
  mm_bytes = (8 * 64 + 64 * 32 + 8 * 32) * 4
  assert c["matmul"] == {"count": 1, "flops": 2 * 8 * 32 * 64, "bytes": mm_bytes}
  # The loop body's dot, three times: 16 x 16 x 16 multiply-adds, two operands and a result.
  assert c["attention"] == {"count": 3, "flops": 3 * 2 * 16 * 16 * 16,
                            "bytes": 3 * 3 * 16 * 16 * 4}
  assert c["elementwise"] == {"count": 1, "flops": 0.0, "bytes": 2 * 8 * 32 * 4}
  assert c["collective"]["count"] == 1 and c["collective"]["bytes"] == 2 * 8 * 32 * 4
  assert c["collective"]["wire_bytes"] == 2 * 3 / 4 * 8 * 32 * 4


def test_a_bf16_model_s_float32_values_count_two_bytes_where_its_layers_made_them():
  c = hlo_util.op_classes(CLASSES_HLO, 4, bf16_sources=("/attend_jax/models/",))
  full = hlo_util.op_classes(CLASSES_HLO, 4)
  assert c["matmul"]["bytes"] == full["matmul"]["bytes"] / 2  # vit.py's fusion.
  assert c["attention"]["bytes"] == full["attention"]["bytes"] / 2  # attention.py's loop.
  assert c["elementwise"] == full["elementwise"]  # No source: kept at 4 bytes.
  assert c["collective"]["bytes"] == full["collective"]["bytes"]
