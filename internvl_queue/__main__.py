import sys

from .cli import main

# Guarded: the preprocessing pool's spawned processes import the main module again (as
# __mp_main__), and must not start a second worker.
if __name__ == "__main__":
    sys.exit(main())
