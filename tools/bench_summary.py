"""Merges the parts of tools/bench_accelerator.sh (OUT/<part>.json, OUT/<part>.status) into
OUT/summary.json and OUT/summary.md, and sets the loader against the measured train step.

  python tools/bench_summary.py OUT
"""

from __future__ import annotations

import json
import pathlib
import sys

PARTS = ("attention", "train", "torch", "loop", "detector", "data")


def _load(path: pathlib.Path):
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def summarize(out: pathlib.Path) -> dict:
  summary = {p: {"status": _load(out / f"{p}.status"), "figures": _load(out / f"{p}.json")}
             for p in PARTS}
  train, data = summary["train"]["figures"], summary["data"]["figures"]
  if train and data and data.get("feed") and "jax" in train.get("steps", {}):
    step = train["steps"]["jax"]["images_per_s"]
    per_core = data["feed"]["images_per_cpu_s"]
    summary["loader_vs_step"] = {
        "step_images_per_s": step, "loader_images_per_cpu_s": per_core,
        "host_cores_per_accelerator": step / per_core,
        "read_mb_per_s": step * data["feed"]["read_bytes_per_image"] / 1e6,
        "sent_mb_per_s": step * data["feed"]["sent_bytes_per_image"] / 1e6}
  return summary


def _gb(x) -> str:
  return f"{x / 1e9:.1f} GB" if x else "-"


def markdown(s: dict) -> str:
  lines = ["| part | rc | seconds | figures |", "| --- | --- | --- | --- |"]
  for p in PARTS:
    st, fig = s[p]["status"] or {}, s[p]["figures"]
    text = f"skipped: {st['skipped']}" if st.get("skipped") else "no figures"
    if fig and p == "attention" and fig.get("rows"):
      text = "; ".join(
          f"{r['part']} {r['attention']} ({r['kernel']}): {r['jax_ms']:.1f} ms,"
          f" {r['jax_tflops']:.1f} TFLOP/s" + (f" (MFU {100 * r['jax_mfu']:.1f} %)"
                                               if "jax_mfu" in r else "")
          + f", peak {_gb(r.get('peak_bytes'))}" for r in fig["rows"])
    elif fig and p in ("train", "torch") and fig.get("steps"):
      text = "; ".join(
          f"{name} {row['images_per_s']:.1f} images/s"
          + (f" (ViT MFU {100 * row['mfu']:.1f} %)" if "mfu" in row else "")
          + (f", peak {_gb(row.get('peak_bytes'))}" if name == "jax" else "")
          for name, row in fig["steps"].items())
      if fig.get("input_overlap"):
        o = fig["input_overlap"]
        text += (f"; a loader as slow as the step: {o['prefetched_over_max']:.2f}x the larger"
                 f" of the two (old loop {o['sequential_over_sum']:.2f}x their sum)")
    elif fig and p == "loop" and fig.get("rows"):
      r = fig["rows"][-1]
      text = (f"{r['steps']} trainer steps, {r['image_size']} px, {r['per_device_batch']}"
              f" images/device, remat {r['remat']}: {r['images_per_s']:.1f} images/s, MFU"
              f" {100 * r['mfu']:.1f} %, peak {_gb(r.get('peak_bytes'))}")
    elif fig and p == "detector":
      text = (f"detect {fig['detect_images_per_s']:.1f} images/s, backbone"
              f" {fig['backbone_tflops']:.2f} TFLOP/s; step {fig['step_files_images_per_s']:.1f}"
              f" images/s with files, {fig['step_detector_images_per_s']:.1f} with the detector")
    elif fig and p == "data" and fig.get("feed"):
      f = fig["feed"]
      text = (f"{fig['long_side']} px: {f['images_per_cpu_s']:.1f} images per CPU-second;"
              f" {f['read_bytes_per_image'] / 1e6:.2f} MB read,"
              f" {f['sent_bytes_per_image'] / 1e6:.2f} MB sent per image")
    lines.append(f"| {p} | {st.get('rc', '-')} | {st.get('seconds', '-')} | {text} |")
  if "loader_vs_step" in s:
    ls = s["loader_vs_step"]
    lines.append("")
    lines.append(f"Loader against the step: the step takes {ls['step_images_per_s']:.1f} images/s,"
                 f" one host core loads {ls['loader_images_per_cpu_s']:.1f}: "
                 f"{ls['host_cores_per_accelerator']:.2f} cores per accelerator,"
                 f" {ls['read_mb_per_s']:.0f} MB/s from disk, {ls['sent_mb_per_s']:.0f} MB/s to"
                 " the device.")
  dry = any((s[p]["figures"] or {}).get("dry_run") for p in PARTS)
  head = "Accelerator benchmark" + (" (DRY RUN: tiny shapes, the figures mean nothing)" if dry
                                    else "")
  device = next((s[p]["figures"]["device"] for p in PARTS
                 if s[p]["figures"] and "device" in s[p]["figures"]), "?")
  return f"## {head}\n\nDevice: {device}\n\n" + "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    print("usage: python tools/bench_summary.py OUT", file=sys.stderr)
    return 2
  out = pathlib.Path(argv[1])
  s = summarize(out)
  (out / "summary.json").write_text(json.dumps(s, indent=2) + "\n")
  md = markdown(s)
  (out / "summary.md").write_text(md)
  print(md)
  print(f"Wrote {out / 'summary.json'} and {out / 'summary.md'}")
  ran = [s[p]["status"] or {} for p in PARTS]
  return 0 if all(st.get("rc") == 0 or st.get("skipped") for st in ran) else 1


if __name__ == "__main__":
  sys.exit(main(sys.argv))
