"""``python -m bingfa``: the ``bingfa`` command, for when the script is not on PATH."""

import sys

from bingfa._cli import main

# The guard matters: process pools started by the command (bingfa demo) must
# never run the command again when something imports this module.
if __name__ == "__main__":
    sys.exit(main())
