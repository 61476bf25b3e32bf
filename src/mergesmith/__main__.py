"""`python -m mergesmith`: the command line."""

from mergesmith.cli import main

main()
