"""The `motion_nbs_train` console entry point as a script (torchrun needs a file to start)."""
import sys

from motion_nbs.cli import train_cli

if __name__ == "__main__":
    sys.exit(train_cli())
