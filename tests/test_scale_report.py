"""tools/scale_report.py on a tiny config and 8 simulated devices: its FLOPs are the analytic
count's, its memory figures are positive and fsdp shrinks the parameters a device holds."""

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


def test_tiny_config_on_eight_devices(tmp_path):
  out = tmp_path / "scale.json"
  proc = helpers.run("tools/scale_report.py", *TINY, f"--out={out}", devices=None)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert "HLO matmuls / analytic" in proc.stdout
  reports = json.loads(out.read_text())["reports"]
  data_only, fsdp = reports
  assert data_only["mesh"] == {"data": 8, "fsdp": 1} and fsdp["mesh"] == {"data": 1, "fsdp": 8}
  for r in reports:
    analytic = r["analytic"]["train"]
    assert analytic["total"] == sum(v for k, v in analytic.items() if k != "total")
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
  assert fsdp["params_per_device"] < data_only["params_per_device"]
  assert fsdp["opt_state_per_device"] < data_only["opt_state_per_device"]
  # Data parallelism all-reduces the gradients: at least the parameters' bytes a step.
  assert data_only["train"]["collectives"]["all-reduce"]["bytes"] >= data_only["params_per_device"]


@pytest.mark.parametrize("config, extra, mesh", [
    ("configs/cbis.py:smoke", ("--compare_fsdp=0",), [{"data": 8, "fsdp": 1}]),
    ("configs/vindr_reference.py:smoke", ("--devices=1",), [{"data": 1, "fsdp": 1}]),
    ("configs/vindr.py:smoke", ("--config.mesh.fsdp=4", "--compare_fsdp=0"),
     [{"data": 2, "fsdp": 4}]),
])
def test_the_readme_s_other_reports(tmp_path, config, extra, mesh):
  """The README's other scale_report commands, small: another config, one device, the config's
  own fsdp mesh alone."""
  out = tmp_path / "scale.json"
  proc = helpers.run("tools/scale_report.py", f"--config={config}", *TINY[1:], *extra,
                     f"--out={out}", devices=None)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  reports = json.loads(out.read_text())["reports"]
  assert [r["mesh"] for r in reports] == mesh
  assert all(r["train"]["memory"]["peak"] > 0 for r in reports)


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
