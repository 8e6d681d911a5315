"""The commands of the README and the docs/ pages, and whether the suite runs each of them.

Every ``python -m attend_jax.<module>`` and ``python tools/<name>.py`` in the fenced blocks of
README.md and docs/*.md is a command users copy. ``helpers.run`` and ``helpers.start`` log each
command a test runs (``ATTEND_JAX_COMMAND_LOG``), and after a run of the whole suite
``conftest.py`` fails the session, naming each documented command that no test ran and the page
it came from.

A test runs a documented command when it runs the same entry point with every flag the page gives:
values may differ (paths, sizes), except those that choose what runs (``CHOICE_FLAGS``), and a
config file must be the same file with the same arguments once the size arguments (``SIZE_ARGS``:
the ``:tiny``, ``:smoke`` and ``:ci`` variants) are set aside. Tests may add flags (tiny overrides).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shlex

REPO = pathlib.Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
LOG_ENV = "ATTEND_JAX_COMMAND_LOG"
SIZE_ARGS = frozenset({"tiny", "smoke", "ci"})
# Flags whose value picks what the command does, not where or how big; for a list (--parts),
# a test that runs more of it runs the README's.
CHOICE_FLAGS = {"tools/prepare_data.py": {"dataset", "crop"}, "tools/make_synthetic.py": {"layout"},
                "tools/convert_dinov2.py": {"variant"}, "tools/bench_train.py": {"preset"},
                "tools/bench_detector.py": {"preset"}, "tools/bench_vit.py": {"parts"},
                "attend_jax.evaluate": {"split"}}
_SEPARATORS = {"&&", "||", ";", "|", "do", "then"}
_TOOL = re.compile(r"(?:^|/)tools/(\w+\.py)$")


@dataclasses.dataclass(frozen=True)
class Command:
  """One command line: its entry point (``attend_jax.main``, ``tools/prepare_data.py``), its
  flags (name -> value, True for a bare boolean flag), positional arguments, and the page it is
  documented on (``README.md``, ``docs/data.md``; empty for a command a test ran)."""

  entry: str
  flags: tuple[tuple[str, object], ...]
  positional: tuple[str, ...]
  text: str
  source: str = ""

  @property
  def flag_dict(self) -> dict[str, object]:
    return dict(self.flags)

  def config(self) -> tuple[str, frozenset[str]] | None:
    """(config file, its arguments without the size ones), if the command takes a config."""
    value = self.flag_dict.get("config")
    if not isinstance(value, str):
      return None
    path, _, arg = value.partition(":")
    return path, frozenset(a for a in arg.split(",") if a) - SIZE_ARGS


def parse(argv: list[str], text: str | None = None) -> Command | None:
  """The command of ``argv`` (``[..., "python", "-m", "attend_jax.x", ...]`` or
  ``["tools/x.py", ...]``); None if it runs neither an attend_jax module nor a tool."""
  args = [str(a) for a in argv]
  while args and not (args[0] == "-m" or _TOOL.search(args[0])):
    args.pop(0)
  if not args:
    return None
  if args[0] == "-m":
    if len(args) < 2 or not args[1].startswith("attend_jax"):
      return None
    entry, rest = args[1], args[2:]
  else:
    entry, rest = "tools/" + _TOOL.search(args[0]).group(1), args[1:]
  flags, positional = {}, []
  i = 0
  while i < len(rest):
    token = rest[i]
    if token in _SEPARATORS:
      break
    if token.startswith("--"):
      name, eq, value = token[2:].partition("=")
      if not eq and i + 1 < len(rest) and not rest[i + 1].startswith("--") and (
          rest[i + 1] not in _SEPARATORS) and name not in BOOLEAN_FLAGS:
        value, i = rest[i + 1], i + 1
      flags[name.replace("-", "_")] = value if (eq or value) else True
    else:
      positional.append(token)
    i += 1
  return Command(entry, tuple(sorted(flags.items())), tuple(positional),
                 text or " ".join(argv))


# Bare flags of our CLIs that take no value (so that ``--overlays DIR`` keeps DIR positional).
BOOLEAN_FLAGS = frozenset({"overlays", "registers", "keep_orientation", "keep_cache", "verbose",
                           "dry_run", "noverbose", "beam", "dicomweb_store"})


def _python_commands(line: str) -> list[list[str]]:
  """Token lists of every python command in one shell line, quoted ones (``--command="..."``)
  included."""
  try:
    tokens = shlex.split(line, comments=True)
  except ValueError:
    return []
  found, i = [], 0
  while i < len(tokens):
    token = tokens[i]
    if " " in token and ("attend_jax" in token or "tools/" in token):
      inner = token.split("=", 1)[1] if token.startswith("--") and "=" in token else token
      found += _python_commands(inner)
    elif re.fullmatch(r"!?(\S*/)?python3?", token):
      end = next((j for j in range(i + 1, len(tokens)) if tokens[j] in _SEPARATORS),
                 len(tokens))
      found.append(tokens[i + 1:end])
      i = end
    i += 1
  return found


def pages() -> list[pathlib.Path]:
  """The pages whose commands users copy: the README and every docs/ page."""
  return [README, *sorted(DOCS.glob("*.md"))]


def page_commands(text: str, source: str = "README.md") -> list[Command]:
  """Every attend_jax or tools/ command in the fenced blocks of one page's ``text``, in order,
  each attributed to ``source``."""
  out = []
  for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M):
    for line in block.replace("\\\n", " ").splitlines():
      for argv in _python_commands(line):
        command = parse(argv, " ".join(argv))
        if command is not None:
          out.append(dataclasses.replace(command, source=source))
  return out


def documented_commands() -> list[Command]:
  """The commands of every page (``pages()``), page by page."""
  return [command for page in pages()
          for command in page_commands(page.read_text(), page.relative_to(REPO).as_posix())]


def runs(test: Command, documented: Command) -> bool:
  """Whether ``test`` (a command a test ran) runs ``documented`` (see the module's docstring)."""
  if test.entry != documented.entry or documented.config() != test.config():
    return False
  want, got = documented.flag_dict, test.flag_dict
  choices = CHOICE_FLAGS.get(documented.entry, set())
  for name, value in want.items():
    if name == "config":
      continue
    if name not in got or (name in choices and not set(str(value).split(","))
                           <= set(str(got[name]).split(","))):
      return False
  return bool(test.positional) or not documented.positional


def record(argv: list[str]) -> None:
  """Logs ``argv`` (a child command a test starts) for the session's check."""
  folder = os.environ.get(LOG_ENV)
  if not folder:
    return
  with open(pathlib.Path(folder) / f"{os.getpid()}.jsonl", "a") as f:
    f.write(json.dumps([str(a) for a in argv]) + "\n")


def recorded(folder: str | os.PathLike) -> list[Command]:
  out = []
  for path in sorted(pathlib.Path(folder).glob("*.jsonl")):
    for line in path.read_text().splitlines():
      command = parse(json.loads(line))
      if command is not None:
        out.append(command)
  return out


def not_run(ran: list[Command], documented: list[Command] | None = None) -> list[Command]:
  """The documented commands (by default, every page's) that none of ``ran`` runs."""
  documented = documented_commands() if documented is None else documented
  return [d for d in documented if not any(runs(t, d) for t in ran)]
