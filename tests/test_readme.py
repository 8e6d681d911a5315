"""The README and the docs/ pages: their commands each name an entry point that exists, the check
that every one of them is run by some test (tests/readme_commands.py, enforced at the end of a
whole-suite session by conftest.py) tells a command run from one that is not and names its page,
and every relative link between the pages leads somewhere."""

import importlib.util
import re

import pytest

import helpers
import readme_commands as rc


def test_the_readme_and_docs_have_commands_and_each_names_a_module_or_tool_that_exists():
  commands = rc.documented_commands()
  entries = {c.entry for c in commands}
  assert {"attend_jax.main", "attend_jax.predict", "attend_jax.evaluate",
          "tools/prepare_data.py", "tools/convert_dinov2.py"} <= entries
  # The README shows one command of each kind; the pages hold the rest.
  assert {c.entry for c in commands if c.source == "README.md"} >= {
      "attend_jax.main", "attend_jax.predict", "attend_jax.evaluate", "tools/prepare_data.py",
      "tools/convert_dinov2.py"}
  assert {"docs/data.md", "docs/training.md", "docs/detector.md", "docs/predict.md",
          "docs/backbone.md", "docs/scale.md"} <= {c.source for c in commands}
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
  commands = rc.page_commands(README)
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
  [prepare] = [c for c in rc.page_commands(README) if c.entry == "tools/prepare_data.py"]
  assert rc.runs(_ran(*argv), prepare) is covered


@pytest.mark.parametrize("config, covered", [
    ("configs/vindr.py:tiny,detector", True), ("configs/vindr.py:detector,smoke", True),
    ("configs/vindr.py:tiny", False), ("configs/cbis.py:tiny,detector", False),
])
def test_config_arguments_count_once_the_size_ones_are_set_aside(config, covered):
  train = rc.page_commands(README)[1]
  assert rc.runs(_ran("-m", "attend_jax.main", f"--config={config}", "--workdir=/tmp/w",
                      "--config.data.dir=/tmp/d"), train) is covered


def test_the_check_names_each_readme_command_no_test_ran(tmp_path, monkeypatch):
  monkeypatch.setenv(rc.LOG_ENV, str(tmp_path))
  rc.record(["-m", "attend_jax.main", "--config=configs/vindr.py:tiny,detector", "--workdir=w"])
  rc.record(["-m", "attend_jax.predict", "--workdir=w", "--out=p", "--overlays", "a.dcm"])
  rc.record(["-c", "print('not a command')"])
  missing = rc.not_run(rc.recorded(tmp_path), rc.page_commands(README))
  assert [c.entry for c in missing] == ["tools/prepare_data.py", "attend_jax.evaluate"]
  assert missing[0].text.startswith("tools/prepare_data.py --dataset vindr --root /data/vindr")


PAGE = """
# Scale

```bash
python tools/scale_report.py --config=configs/cbis.py
```
"""


@pytest.fixture
def repo(tmp_path, monkeypatch):
  """A repository of a README and two docs pages, which ``rc`` reads instead of this one."""
  (tmp_path / "docs").mkdir()
  (tmp_path / "README.md").write_text(README)
  (tmp_path / "docs" / "scale.md").write_text(PAGE)
  (tmp_path / "docs" / "notes.md").write_text("No commands here.\n")
  monkeypatch.setattr(rc, "REPO", tmp_path)
  monkeypatch.setattr(rc, "README", tmp_path / "README.md")
  monkeypatch.setattr(rc, "DOCS", tmp_path / "docs")
  return tmp_path


def test_commands_are_read_from_the_readme_and_every_docs_page_each_with_its_page(repo):
  commands = rc.documented_commands()
  assert [(c.source, c.entry) for c in commands] == [
      ("README.md", "tools/prepare_data.py"), ("README.md", "attend_jax.main"),
      ("README.md", "attend_jax.predict"), ("README.md", "attend_jax.evaluate"),
      ("docs/scale.md", "tools/scale_report.py")]
  assert commands[-1].config() == ("configs/cbis.py", frozenset())


def test_the_check_names_the_page_of_a_docs_command_no_test_ran(repo, tmp_path, monkeypatch):
  log = tmp_path / "log"
  log.mkdir()
  monkeypatch.setenv(rc.LOG_ENV, str(log))
  for argv in (["tools/prepare_data.py", "--dataset=vindr", "--root=r", "--out=o",
                "--long_side=1"],
               ["-m", "attend_jax.main", "--config=configs/vindr.py:tiny,detector", "--workdir=w"],
               ["-m", "attend_jax.predict", "--workdir=w", "a.dcm", "--overlays"],
               ["-m", "attend_jax.evaluate", "--workdir=w"]):
    rc.record(argv)
  [missing] = rc.not_run(rc.recorded(log))
  assert (missing.source, missing.text) == (
      "docs/scale.md", "tools/scale_report.py --config=configs/cbis.py")
  rc.record(["/repo/tools/scale_report.py", "--config=configs/cbis.py:tiny", "--devices=1"])
  assert rc.not_run(rc.recorded(log)) == []


# Relative links of the pages: [text](path), [text](path#anchor), [text](#anchor), images too.
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
  """``text`` without its fenced blocks, whose ``#`` lines are shell comments, not headings."""
  return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _anchors(text: str) -> set[str]:
  """The anchors GitHub makes of a page's headings: lower case, punctuation dropped, spaces to
  hyphens."""
  out = set()
  for heading in re.findall(r"^#+ +(.+?) *$", _prose(text), flags=re.M):
    out.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
  return out


def _broken_links(pages, root) -> list[str]:
  """Each relative link of ``pages`` to a file, or a heading of a page, that does not exist."""
  broken = []
  for page in pages:
    for target in _LINK.findall(_prose(page.read_text())):
      if re.match(r"[a-z]+:", target):
        continue  # https:, mailto:
      path, _, anchor = target.partition("#")
      linked = (page.parent / path).resolve() if path else page
      where = f"{page.relative_to(root)}: {target}"
      if not linked.exists():
        broken.append(f"{where}: no such file")
      elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked.read_text()):
        broken.append(f"{where}: no such heading")
  return broken


def test_anchors_are_made_as_github_makes_them():
  text = "# Results: what (synthetic, CPU scale)\n## Try a dataset's path\n```\n# x\n```\n"
  assert _anchors(text) == {"results-what-synthetic-cpu-scale", "try-a-datasets-path"}


def test_the_link_check_finds_a_missing_file_and_a_missing_heading(tmp_path):
  (tmp_path / "docs").mkdir()
  readme, page = tmp_path / "README.md", tmp_path / "docs" / "data.md"
  readme.write_text("[ok](docs/data.md#prepare) [gone](docs/gone.md) [site](https://x.org/a)\n"
                    "```\n[in a block](docs/nowhere.md)\n```\n")
  page.write_text("# Data\n\n## Prepare\n\n[back](../README.md#nothing) [here](#data)\n")
  assert _broken_links([readme, page], tmp_path) == [
      "README.md: docs/gone.md: no such file",
      "docs/data.md: ../README.md#nothing: no such heading"]


def test_every_relative_link_of_the_readme_and_docs_leads_to_a_file_and_heading_that_exist():
  broken = _broken_links(rc.pages(), rc.REPO)
  assert not broken, "\n".join(broken)
