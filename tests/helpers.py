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
