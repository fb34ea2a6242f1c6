"""One competing busy process on the same cores, for the benches' `--busy` measurements (#25).

`with busy_process(): ...` runs the block while another Python process spins on one core, as a laptop that is
also doing something else would; the benches report each such time beside the idle one and their ratio
(goal: <= 2x the idle time).

What to expect: the busy process and our two threads are three runnable threads on two cores. With perfect sharing
our threads would get 4/3 of a core each second (1.5x); but every parallel loop (numba's, torch's) ends at a barrier
that waits for whichever of its threads is off the core, so a process of short parallel loops gets about one core:
about 2x. Measured on the development machine (Dec 2026): 1.7-2.2x across bench_features, bench_cpfs, bench_data
and bench_preimage; dynamic scheduling of numba's loops (`numba.set_parallel_chunksize(1)`) did not change it."""
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
