"""The `motion_nbs_train` console entry point as a script (torchrun needs a file to start)."""
from motion_nbs.learner import train_cli

if __name__ == "__main__":
    train_cli()
