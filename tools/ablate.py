r"""What each part of the method is worth: named variants of a config, several seeds each, on the
same prepared data, compared with the baseline image by image.

  python tools/ablate.py --config=configs/demo.py:fine --seeds=5 --out=workdirs/ablation \
      --detector_config=configs/demo.py:fine,detector
  python tools/ablate.py --config=configs/demo.py:fine --variants="cls only,+ repulsive" \
      --seeds=2 --out=/tmp/ablation --steps=200

Variants are the ``VARIANTS`` dict of the config file: a name and a set of config overrides;
the first is the baseline. Each run is ``python -m attend_jax.main`` with those overrides and
``--config.seed=k`` in ``OUT/runs/<variant>/seed<k>``, so the data (prepared once, by the
first run) and the detector (``--detector_config``, trained once into the config's
``proposals.detector`` when it has no evaluation yet) are the same for all; the seed changes
the initialisation and the data order. Finished runs are skipped, and an interrupted one
resumes: rerunning the same command continues where it stopped.

Writes ``OUT/ablation.json`` (every run's test metrics, and per variant), ``OUT/ablation.md``
(the table, the command and the wall time) and ``OUT/ablation.png``. Per variant: the mean and
standard deviation over seeds of the test AUC and of the sensitivity at FPR 0.1, and the
paired difference against the baseline with a bootstrap 95 % CI over seeds and test images
(``attend_jax.eval.metrics.paired_difference``: the same images for both).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import pathlib
import re
import sys
import time

import numpy as np
from absl import app, flags

from attend_jax import cli
from attend_jax.eval import metrics
from attend_jax.progress import Progress, log

_CONFIG = flags.DEFINE_string("config", None, "The config file and its argument (FILE[:ARG])"
                              " whose VARIANTS are compared.")
_VARIANTS = flags.DEFINE_list("variants", None, "Variant names (default: all, in file order).")
_SEEDS = flags.DEFINE_integer("seeds", 5, "Seeds per variant: 0 .. seeds - 1.")
_OUT = flags.DEFINE_string("out", "workdirs/ablation", "Output folder.")
_STEPS = flags.DEFINE_integer("steps", None, "Override train.steps of every run (quick looks).")
_DETECTOR = flags.DEFINE_string("detector_config", None,
                                "Config (file:arg) of the detector the variants read, trained"
                                " into the config's proposals.detector if it is not there yet.")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 2000, "Resamples of the paired differences.")
_SET = flags.DEFINE_multi_string("set", [], "KEY=VALUE, a config override for every run (and"
                                 " the detector, for data.* keys), e.g. --set=data.dir=/data/x.")
flags.mark_flags_as_required(["config"])


def load(config_flag: str):
  """(config, VARIANTS) of ``FILE[:ARG]``; the VARIANTS' baseline first."""
  path, _, arg = config_flag.partition(":")
  if not pathlib.Path(path).is_file():
    raise ValueError(f"--config: no such config file {path!r}")
  spec = importlib.util.spec_from_file_location("ablation_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  variants = getattr(module, "VARIANTS", None)
  if not variants:
    raise ValueError(f"{path} defines no VARIANTS (a dict: name -> config overrides).")
  return module.get_config(arg) if arg else module.get_config(), dict(variants)


SECONDS = "seconds.txt"  # A finished run's training time, kept beside it.


def _apply(config, overrides: list[str]) -> None:
  """``KEY=VALUE`` overrides on a loaded config, typed like the values they replace."""
  for item in overrides:
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"--set={item!r}: expected KEY=VALUE")
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      node = node[part]
    old = node[leaf]
    node[leaf] = type(old)(value) if old is not None and not isinstance(old, bool) else (
        value.lower() in ("1", "true") if isinstance(old, bool) else value)


def slug(name: str) -> str:
  return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _overrides(overrides: dict) -> list[str]:
  return [f"--config.{k}={v}" for k, v in overrides.items()]


def _train(config_flag: str, workdir: pathlib.Path, extra: list[str]) -> None:
  """One run as a user starts it; its output goes to WORKDIR/stdout.txt."""
  import subprocess

  workdir.mkdir(parents=True, exist_ok=True)
  with open(workdir / "stdout.txt", "a") as out:
    proc = subprocess.run([sys.executable, "-m", "attend_jax.main", f"--config={config_flag}",
                           f"--workdir={workdir}", *extra], stdout=out, stderr=subprocess.STDOUT,
                          check=False)
  if proc.returncode:
    tail = (workdir / "stdout.txt").read_text().strip().splitlines()[-3:]
    raise RuntimeError(f"the run in {workdir} failed (exit code {proc.returncode}): "
                       + " / ".join(tail))


def _predictions(workdir: pathlib.Path) -> dict[str, tuple[int, float]]:
  with open(workdir / "eval" / "predictions.csv", newline="") as f:
    return {r["image_id"]: (int(r["label"]), float(r["probability"])) for r in csv.DictReader(f)}


def summarize(runs: dict[str, list[pathlib.Path]], num_bootstrap: int = 2000) -> dict:
  """Per variant: mean and sd over seeds of the test AUC and sensitivity at FPR 0.1, and the
  paired differences against the first variant (the baseline)."""
  out = {}
  names = list(runs)
  preds = {n: [_predictions(w) for w in runs[n]] for n in names}
  images = sorted(preds[names[0]][0])
  labels = np.array([preds[names[0]][0][i][0] for i in images])
  scores = {n: np.array([[p[i][1] for i in images] for p in preds[n]]) for n in names}
  sens = lambda y, s: metrics.sensitivity_at_fpr(y, s, 0.1)  # noqa: E731
  for n in names:
    aucs = [metrics.auc(labels, s) for s in scores[n]]
    senss = [sens(labels, s) for s in scores[n]]
    row = {"seeds": len(aucs), "auc": aucs, "sens_at_fpr_0.1": senss,
           "auc_mean": float(np.mean(aucs)), "auc_sd": float(np.std(aucs, ddof=1) if len(aucs) > 1
                                                             else 0.0),
           "sens_mean": float(np.mean(senss)),
           "sens_sd": float(np.std(senss, ddof=1) if len(senss) > 1 else 0.0)}
    if n != names[0]:
      seeds = min(len(scores[n]), len(scores[names[0]]))
      row["auc_diff"] = metrics.paired_difference(labels, scores[n][:seeds],
                                                  scores[names[0]][:seeds],
                                                  num_samples=num_bootstrap)
      row["sens_diff"] = metrics.paired_difference(labels, scores[n][:seeds],
                                                   scores[names[0]][:seeds], metric=sens,
                                                   num_samples=num_bootstrap)
    out[n] = row
  return {"baseline": names[0], "test_images": len(images), "test_cancers": int(labels.sum()),
          "variants": out}


def _markdown(result: dict, command: str) -> str:
  per_run = [t for ts in result["run_seconds"].values() for t in ts]
  lines = [f"# Ablation ({result['test_images']} test images, {result['test_cancers']} cancers)",
           "", f"`{command}`", "",
           f"Training time: {sum(per_run) / 60:.1f} min in all, {np.median(per_run) / 60:.1f} min"
           f" per run (median of {len(per_run)}).", "",
           "| variant | seeds | test AUC (mean ± sd) | Δ AUC vs baseline [95 % CI] |"
           " sens @ FPR 0.1 | Δ sens [95 % CI] |", "|---|---:|---:|---:|---:|---:|"]
  fmt = lambda d: f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"  # noqa: E731
  for name, row in result["variants"].items():
    diff = fmt(row["auc_diff"]) if "auc_diff" in row else "(baseline)"
    sdiff = fmt(row["sens_diff"]) if "sens_diff" in row else ""
    lines.append(f"| {name} | {row['seeds']} | {row['auc_mean']:.3f} ± {row['auc_sd']:.3f} |"
                 f" {diff} | {row['sens_mean']:.3f} ± {row['sens_sd']:.3f} | {sdiff} |")
  lines += ["", "A difference whose CI excludes 0 is more than the seeds' and the test images'"
            " noise; one whose CI spans 0 is not shown to matter on this data.",
            "", "![ablation](ablation.png)"]
  return "\n".join(lines) + "\n"


def plot(result: dict, path: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = list(result["variants"])
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.5 * len(names) + 1.5), sharey=True)
  for y, name in enumerate(names):
    row = result["variants"][name]
    left.scatter(row["auc"], [y] * len(row["auc"]), s=14, color="0.5")
    left.errorbar(row["auc_mean"], y, xerr=row["auc_sd"], fmt="o", color="C0")
    if "auc_diff" in row:
      d = row["auc_diff"]
      right.errorbar(d["mean"], y, xerr=[[d["mean"] - d["ci_low"]], [d["ci_high"] - d["mean"]]],
                     fmt="o", color="C3" if d["ci_high"] < 0 else "C2" if d["ci_low"] > 0
                     else "C7")
  right.axvline(0, color="0.3", linewidth=0.8)
  left.set(yticks=range(len(names)), yticklabels=names, xlabel="test AUC (seeds, mean ± sd)")
  right.set(xlabel=f"AUC − {result['baseline']!r} (paired, 95 % CI)")
  left.invert_yaxis()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config_flag = _CONFIG.value
  config, variants = load(config_flag)
  chosen = _VARIANTS.value or list(variants)
  unknown = [v for v in chosen if v not in variants]
  if unknown:
    raise ValueError(f"no variant {unknown} in {config_flag}; it has {list(variants)}")
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  cli.setup_logging(out)
  _apply(config, _SET.value)
  common = ([f"--config.train.steps={_STEPS.value}"] if _STEPS.value else [])
  common += [f"--config.{item}" for item in _SET.value]
  if _DETECTOR.value and config.proposals.get("detector"):
    detector = pathlib.Path(config.proposals.detector)
    if not (detector / "eval" / "metrics.json").exists():
      log("Training the detector %s into %s", _DETECTOR.value, detector)
      _train(_DETECTOR.value, detector,
             [f"--config.{item}" for item in _SET.value if item.startswith("data.")])
  jobs = [(name, seed) for name in chosen for seed in range(_SEEDS.value)]
  runs: dict[str, list[pathlib.Path]] = {name: [] for name in chosen}
  progress = Progress("ablation runs", "run")
  for done, (name, seed) in enumerate(jobs):
    progress(done, len(jobs))
    workdir = out / "runs" / slug(name) / f"seed{seed}"
    runs[name].append(workdir)
    if (workdir / "eval" / "metrics.json").exists():
      continue  # Finished by an earlier invocation.
    t = time.perf_counter()
    _train(config_flag, workdir, [f"--config.seed={seed}", *_overrides(variants[name]),
                                  *common])
    seconds = time.perf_counter() - t
    (workdir / SECONDS).write_text(f"{seconds:.1f}\n")
    test = json.loads((workdir / "eval" / "metrics.json").read_text())
    log("%s, seed %d: test AUC %.3f in %.0f s", name, seed, test["auc"] or float("nan"), seconds)
  progress(len(jobs), len(jobs))
  result = summarize(runs, _BOOTSTRAP.value)
  result.update(command=" ".join(["python tools/ablate.py", *sys.argv[1:]]),
                runs={n: [str(w) for w in ws] for n, ws in runs.items()},
                run_seconds={n: [float((w / SECONDS).read_text()) for w in ws
                                 if (w / SECONDS).exists()] for n, ws in runs.items()})
  (out / "ablation.json").write_text(json.dumps(result, indent=2) + "\n")
  (out / "ablation.md").write_text(_markdown(result, result["command"]))
  plot(result, out / "ablation.png")
  print((out / "ablation.md").read_text())


if __name__ == "__main__":
  cli.run(main, errors=(ValueError, RuntimeError))
