"""`python -m loopbus.agents.cli` runs the `loopbus` command line."""

from loopbus.agents.cli import entry

entry()
