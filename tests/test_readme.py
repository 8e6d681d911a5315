"""The README's commands: each names an entry point that exists, and the check that every one of
them is run by some test (tests/readme_commands.py, enforced at the end of a whole-suite session
by conftest.py) tells a command run from one that is not."""

import importlib.util

import pytest

import helpers
import readme_commands as rc


def test_the_readme_has_commands_and_each_names_a_module_or_tool_that_exists():
  commands = rc.readme_commands()
  entries = {c.entry for c in commands}
  assert {"attend_jax.main", "attend_jax.predict", "attend_jax.evaluate",
          "tools/prepare_data.py", "tools/convert_dinov2.py"} <= entries
  for command in commands:
    if command.entry.startswith("tools/"):
      assert (helpers.REPO / command.entry).is_file(), command.text
    else:
      assert importlib.util.find_spec(command.entry) is not None, command.text
    config = command.config()
    if config is not None:
      assert (helpers.REPO / config[0]).is_file(), command.text


README = """
Some prose with `python -m attend_jax.main --config=configs/x.py` outside a block.

```bash
.venv/bin/python tools/prepare_data.py --dataset vindr --root /data/vindr \\
    --out data/vindr --long_side 2048   # a comment
python -m attend_jax.main --config=configs/vindr.py:detector --workdir=w && echo done
python -m attend_jax.predict --workdir=w /data/new --overlays
gcloud compute tpus tpu-vm ssh pod --command="cd a && python -m attend_jax.evaluate --workdir=w"
make demo
```
"""


def test_commands_are_read_from_blocks_continued_lines_and_quoted_commands():
  commands = rc.readme_commands(README)
  assert [c.entry for c in commands] == ["tools/prepare_data.py", "attend_jax.main",
                                         "attend_jax.predict", "attend_jax.evaluate"]
  prepare, train, predict, _ = commands
  assert prepare.flag_dict == {"dataset": "vindr", "root": "/data/vindr", "out": "data/vindr",
                               "long_side": "2048"}
  assert train.config() == ("configs/vindr.py", frozenset({"detector"}))
  assert predict.flag_dict == {"workdir": "w", "overlays": True}
  assert predict.positional == ("/data/new",)


def _ran(*argv):
  return rc.parse(list(argv))


@pytest.mark.parametrize("argv, covered", [
    # The same command with tiny overrides, other paths and the :tiny variant.
    (("tools/prepare_data.py", "--dataset=vindr", "--root=/tmp/l", "--out=/tmp/d",
      "--long_side=256", "--workers=2"), True),
    (("/repo/tools/prepare_data.py", "--dataset=vindr", "--root=r", "--out=o", "--long_side=1"),
     True),
    (("tools/prepare_data.py", "--dataset=rsna", "--root=r", "--out=o", "--long_side=1"), False),
    (("tools/prepare_data.py", "--dataset=vindr", "--root=r", "--out=o"), False),  # No long_side.
    (("tools/make_synthetic.py", "--dataset=vindr", "--root=r", "--out=o", "--long_side=1"),
     False),
])
def test_a_test_run_counts_only_with_the_same_entry_choices_and_flags(argv, covered):
  [prepare] = [c for c in rc.readme_commands(README) if c.entry == "tools/prepare_data.py"]
  assert rc.runs(_ran(*argv), prepare) is covered


@pytest.mark.parametrize("config, covered", [
    ("configs/vindr.py:tiny,detector", True), ("configs/vindr.py:detector,smoke", True),
    ("configs/vindr.py:tiny", False), ("configs/cbis.py:tiny,detector", False),
])
def test_config_arguments_count_once_the_size_ones_are_set_aside(config, covered):
  train = rc.readme_commands(README)[1]
  assert rc.runs(_ran("-m", "attend_jax.main", f"--config={config}", "--workdir=/tmp/w",
                      "--config.data.dir=/tmp/d"), train) is covered


def test_the_check_names_each_readme_command_no_test_ran(tmp_path, monkeypatch):
  monkeypatch.setenv(rc.LOG_ENV, str(tmp_path))
  rc.record(["-m", "attend_jax.main", "--config=configs/vindr.py:tiny,detector", "--workdir=w"])
  rc.record(["-m", "attend_jax.predict", "--workdir=w", "--out=p", "--overlays", "a.dcm"])
  rc.record(["-c", "print('not a command')"])
  missing = rc.not_run(rc.recorded(tmp_path), rc.readme_commands(README))
  assert [c.entry for c in missing] == ["tools/prepare_data.py", "attend_jax.evaluate"]
  assert missing[0].text.startswith("tools/prepare_data.py --dataset vindr --root /data/vindr")
