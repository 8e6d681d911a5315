"""The steps of the real-path tier, each a command as users run it (tests/helpers.py)."""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
import re

import numpy as np
import orbax.checkpoint as ocp

import helpers


def ok(*args, devices: int = 1) -> str:
  """Runs ``python ARGS``; its output, after checking it exited 0 and printed no traceback."""
  proc = helpers.run(*args, devices=devices)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, f"{' '.join(map(str, args))}\n{out[-5000:]}"
  assert "Traceback" not in out, out[-5000:]
  return out


@dataclasses.dataclass(frozen=True)
class Backbone:
  """A converter's output folder, and the upstream (Meta-named) tensors it was converted from."""

  folder: pathlib.Path
  meta: dict[str, np.ndarray]


def train(config: str, workdir: pathlib.Path, data: pathlib.Path, backbone: Backbone | None,
          *overrides: str, devices: int = 1) -> tuple[dict, str]:
  """``python -m attend_jax.main`` on prepared ``data`` with ``backbone``: (test metrics, output)."""
  weights = [f"--config.model.pretrained={backbone.folder}"] if backbone else []
  out = ok("-m", "attend_jax.main", f"--config={config}", f"--workdir={workdir}",
           f"--config.data.dir={data}", *weights, *overrides, devices=devices)
  if backbone:
    assert f"Loaded the DINOv2 backbone from {backbone.folder}" in out, out[-3000:]
  metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
  assert metrics["split"] == "test", metrics
  return metrics, out


def test_images(data: pathlib.Path) -> int:
  """The test split's image count in prepare's manifest of ``data``."""
  return json.loads((data / "manifest.json").read_text())["counts"]["test"]["images"]


def trained_params(workdir: pathlib.Path) -> dict:
  """The parameters of a run's newest checkpoint, as saved."""
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  with ocp.StandardCheckpointer() as ckptr:
    state = ckptr.restore(workdir / "checkpoints" / str(steps[-1]) / "state")
  return state["params"]


def _value(tree: dict) -> np.ndarray:
  return np.asarray(tree["value"] if isinstance(tree, dict) else tree)


def check_backbone(workdir: pathlib.Path, backbone: Backbone, frozen: int) -> None:
  """The run's ViT started from the converted weights: its patch embedding and first ``frozen``
  blocks are still the upstream file's tensors (read here by hand, not by the converter), and a
  trained block has moved away from them."""
  vit = trained_params(workdir)["vision_model"]
  meta = backbone.meta
  conv = meta["patch_embed.proj.weight"]  # (D, C, kh, kw); ours is (kh * kw * C, D).
  np.testing.assert_array_equal(_value(vit["patch_embed"]["proj"]["kernel"]),
                                conv.transpose(2, 3, 1, 0).reshape(-1, conv.shape[0]))
  blocks = vit["blocks"]
  for i in range(len(blocks)):
    block, prefix = blocks[str(i)], f"blocks.{i}."
    pairs = [(block["attn"]["qkv"]["kernel"], meta[prefix + "attn.qkv.weight"].T),
             (block["mlp"]["fc1"]["kernel"], meta[prefix + "mlp.fc1.weight"].T),
             (block["norm1"]["scale"], meta[prefix + "norm1.weight"])]
    if i < frozen:
      for got, want in pairs:
        np.testing.assert_array_equal(_value(got), want, err_msg=f"frozen block {i}")
    else:
      assert any(not np.array_equal(_value(got), want) for got, want in pairs), (
          f"block {i} is trained, but still holds the pretrained weights")


def rows(path: pathlib.Path) -> list[dict]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def evaluate(workdir: pathlib.Path, out: pathlib.Path) -> dict:
  """``python -m attend_jax.evaluate`` on the test split: its metrics, after checking that the
  files its report links exist and that its table has a row per image (a classifier) or per
  kept box (a detector)."""
  printed = ok("-m", "attend_jax.evaluate", f"--workdir={workdir}", "--split=test",
               f"--out={out}")
  metrics = json.loads((out / "metrics.json").read_text())
  report = (out / "report.md").read_text()
  for link in re.findall(r"\]\(([^)]+)\)", report):
    assert (out / link).is_file(), link
  if "map50" in metrics:
    assert "mAP@0.5" in printed and "(detections.csv)" in report
    assert len(rows(out / "detections.csv")) == metrics["num_detections"]
  else:
    assert "AUC" in printed and "(predictions.csv)" in report
    assert len(rows(out / "predictions.csv")) == metrics["num_examples"]
  return metrics


def predict(workdir: pathlib.Path, dicoms: list[pathlib.Path], out: pathlib.Path,
            *extra: str) -> list[dict]:
  """``python -m attend_jax.predict`` on DICOM files as the dataset ships them: its images."""
  ok("-m", "attend_jax.predict", f"--workdir={workdir}", f"--out={out}", "--workers=1", *extra,
     *map(str, dicoms))
  images = json.loads((out / "predictions.json").read_text())["images"]
  assert len(images) == len(dicoms) == len(rows(out / "predictions.csv"))
  assert all(0.0 <= im["probability"] <= 1.0 for im in images)
  return images
