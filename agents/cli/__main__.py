"""`python -m agents.cli` runs the `loopbus` command line."""

from agents.cli import entry

entry()
