"""One competing busy process on the same cores, for the benches' `--busy` measurements (#25).

`with busy_process(): ...` runs the block while another Python process spins on one core, as a laptop that is
also doing something else would; the benches report each such time beside the idle one and their ratio
(goal: <= 2x the idle time)."""
import contextlib
import subprocess
import sys
import time


@contextlib.contextmanager
def busy_process():
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.5)  # let it start spinning
    try: yield proc
    finally:
        proc.kill(); proc.wait()
