"""Running the project's commands in child processes, as a user runs them."""

import os
import pathlib
import subprocess
import sys

import readme_commands

REPO = pathlib.Path(__file__).resolve().parents[1]
# Only a guard against a hung child, far above any run's duration; never a speed check.
HANG_GUARD_S = 3600


# XLA's CPU code generation without LLVM's optimisations, for the tests and their children.
# Most of the suite is compiling a few-step run's programs, and this cuts the CPU time of a
# smoke training run by about a third (measured: 64 -> 41 s of user time); the compiled
# programs compute the same things (the HLO passes are unchanged), only more slowly, which a
# few-step run does not feel. The long runs whose results are compared with measured figures
# (tests/test_demo.py) keep XLA's defaults: fast_compile=False.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def env(devices: int | None = 1, fast_compile: bool = True, **extra: str) -> dict[str, str]:
  """This process's environment for a child on the CPU with ``devices`` simulated devices
  (None: no device-count flag, i.e. one device, as a user's shell has), plus ``extra``."""
  out = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out["JAX_PLATFORMS"] = "cpu"
  flags = [FAST_COMPILE] if fast_compile else []
  if devices is not None and devices != 1:
    flags.append(f"--xla_force_host_platform_device_count={devices}")
  if flags:
    out["XLA_FLAGS"] = " ".join(flags)
  return out | extra


def run(*args, devices: int | None = 1, cwd=REPO, extra_env: dict | None = None,
        fast_compile: bool = True, **kwargs) -> subprocess.CompletedProcess:
  """``python ARGS`` in ``cwd`` (the repository), output captured as text."""
  readme_commands.record(args)
  return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True,
                        text=True, timeout=HANG_GUARD_S, check=False,
                        env=env(devices, fast_compile, **(extra_env or {})), **kwargs)


def start(*args, devices: int | None = 1, extra_env: dict | None = None) -> subprocess.Popen:
  """``python ARGS`` started in the repository, stdout and stderr together as text."""
  readme_commands.record(args)
  return subprocess.Popen([sys.executable, *map(str, args)], cwd=REPO, text=True,
                          env=env(devices, **(extra_env or {})), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen) -> str:
  """Waits for ``proc`` (with the hang guard) and returns its output."""
  return proc.communicate(timeout=HANG_GUARD_S)[0]

# The reference's real VinDr label CSVs and Grounding-DINO proposal files, beside the checkout.
SHARED = REPO.parent / "shared" / "data" / "vindr_reference"


def needs_shared(test):
  """Skips ``test``, saying why, on a checkout without the shared real data."""
  import pytest

  return pytest.mark.skipif(not (SHARED / "proposals").is_dir(),
                            reason=f"needs the reference's real data in {SHARED}")(test)


def tiny_prepared(root: pathlib.Path, out: pathlib.Path | None = None, seed: int = 0,
                  jpeg2000_fraction: float = 0.0, **prepare_kwargs) -> pathlib.Path:
  """Six synthetic studies written as DICOMs to ``root/dicom`` and prepared at 96 px
  (``synthetic_96``) into ``out`` (default ``root``): the suite's tiny dataset; returns ``out``."""
  from attend_jax.data import prepare, synthetic

  out = root if out is None else out
  synthetic.generate(root / "dicom", 6, seed=seed, size_range=(200, 260),
                     jpeg2000_fraction=jpeg2000_fraction)
  prepare.prepare("synthetic", root / "dicom", out, prepare.PrepareOptions(long_side=96),
                  workers=1, **prepare_kwargs)
  return out


TINY_VIT = {"width": 32, "depth": 1, "num_heads": 2, "pretrained_grid": 2}


def tiny_config(data_dir: str | pathlib.Path = "", proposals: str = "grid", **sections):
  """The demo's smoke classifier shrunk for the suite: a one-block width-32 ViT, 28-px RoIs,
  ``proposals`` RoIs, on ``tiny_prepared``'s ``synthetic_96`` in ``data_dir``.
  ``sections`` set more, as ``train__steps=6`` for ``c.train.steps = 6``."""
  from configs import demo

  c = demo.get_config("smoke")
  c.data.dir, c.data.name, c.data.image_size = str(data_dir), "synthetic_96", 96
  c.data.synthetic.num_studies = 0
  c.proposals.source = proposals
  c.model.vit_overrides.update(TINY_VIT)
  c.model.roi_size = 28
  for key, value in sections.items():
    section, name = key.split("__")
    c[section][name] = value
  return c


def assert_same_trees(a, b) -> None:
  """Two pytrees (parameters, states) with the same leaves, equal bit for bit."""
  import jax
  import numpy as np

  a, b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(a) == len(b) > 0
  for x, y in zip(a, b):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def latest_params(workdir: pathlib.Path):
  """(step, parameters) of a training workdir's newest resume checkpoint."""
  import orbax.checkpoint as ocp

  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  state = ocp.StandardCheckpointer().restore(
      (workdir / "checkpoints" / str(steps[-1]) / "state").absolute())
  return steps[-1], state["params"]


def _printed(x: str | float) -> tuple[float, float]:
  """A figure and half a unit of its last printed digit (0 for an exact number)."""
  if not isinstance(x, str):
    return float(x), 0.0
  text = x.replace(",", "")
  digits = len(text.split(".")[1]) if "." in text else 0
  return float(text), 0.5 * 10.0**-digits


def printed_quotient(quotient: str, numerator: str | float, denominator: str | float,
                     scale: float = 1.0) -> bool:
  """Whether a printed ``quotient`` can be ``scale x numerator / denominator`` of the printed
  (or exact) figures beside it, given how many digits each was rounded to: a benchmark's
  ratios and rates agree with its times. Denominators are positive."""
  (q, dq), (n, dn), (d, dd) = map(_printed, (quotient, numerator, denominator))
  low = scale * min((n - dn) / (d + dd), (n - dn) / max(d - dd, 1e-300))
  high = scale * max((n + dn) / (d + dd), (n + dn) / max(d - dd, 1e-300))
  return low - dq <= q <= high + dq


def png_rgb(path):
  """A PNG's RGB pixels, (h, w, 3) in [0, 1]."""
  from matplotlib import image

  return image.imread(path)[..., :3]


def has_colour(pixels, rgb, tol: float = 0.08) -> bool:
  """Whether any pixel is within ``tol`` of ``rgb`` in every channel."""
  import numpy as np

  return bool((np.abs(pixels - np.asarray(rgb)).max(axis=-1) < tol).any())


# matplotlib's line colours C0 (#1f77b4), C1, C2 and C3.
C0, C1, C2, C3 = ((0.122, 0.467, 0.706), (1.0, 0.498, 0.055), (0.173, 0.627, 0.173),
                  (0.839, 0.153, 0.157))
