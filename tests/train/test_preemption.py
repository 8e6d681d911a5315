"""StopSignal on its own: what a signal does inside and outside it, and the grace period."""

import os
import signal

import pytest

from attend_jax import config_check
from attend_jax.train import preemption
from configs import demo

import helpers


def test_a_signal_is_noted_and_the_old_handlers_come_back():
  before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
  with preemption.StopSignal(grace_s=600) as stop:
    assert not stop.requested()
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested() and stop.signum == signal.SIGTERM
    os.kill(os.getpid(), signal.SIGTERM)  # A second SIGTERM changes nothing.
    assert stop.signum == signal.SIGTERM
    with pytest.raises(KeyboardInterrupt):  # A second Ctrl-C interrupts at once.
      os.kill(os.getpid(), signal.SIGINT)
    assert stop.counting_down
  assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
  # Its grace period ends with the block: left running, it exited this process 600 s later
  # (an xdist worker: "node down: Not properly terminated").
  assert not stop.counting_down


def test_a_committed_checkpoint_ends_the_grace_period():
  with preemption.StopSignal(grace_s=600) as stop:
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.counting_down
    stop.committed()
    assert not stop.counting_down


def test_preempted_says_the_step_and_where_its_checkpoint_is():
  e = preemption.Preempted(signal.SIGINT, 7, "gs://b/run/checkpoints")
  assert str(e) == ("stopped by SIGINT after step 7; its checkpoint is committed in"
                    " gs://b/run/checkpoints. Rerun the same command to resume.")
  assert str(preemption.Preempted(None, 7, "x")).startswith(
      "stopped with the other hosts (one of them was signalled) after step 7;")


_OUT_OF_TIME = """
import os, signal, time
from attend_jax.train import preemption
with preemption.StopSignal(grace_s=0.5):
  os.kill(os.getpid(), signal.SIGTERM)
  time.sleep(600)  # A checkpoint that never commits.
"""


def test_past_the_grace_period_the_process_exits_with_its_own_code():
  out = helpers.run("-c", _OUT_OF_TIME)
  assert out.returncode == preemption.EXIT_PREEMPTED_UNSAVED, out.stderr[-2000:]
  assert "did not commit within train.preemption_grace_s (0.5 s)" in out.stderr
  assert preemption.EXIT_PREEMPTED != preemption.EXIT_PREEMPTED_UNSAVED


def test_the_grace_period_must_be_positive():
  c = demo.get_config("smoke")
  c.train.preemption_grace_s = 0.0
  with pytest.raises(config_check.ConfigError, match="preemption_grace_s must be positive"):
    config_check.check(c)
