"""``python -m vltk`` = the ``vltk`` command."""

from vltk.cli import main

main()
