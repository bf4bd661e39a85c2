"""Worker processes of the harmonised-scan cache and the generator: single-threaded, and ending with their parent."""

from __future__ import annotations

import os
import sys


def single_threaded(parent: int | None = None) -> None:
    """Pool initialiser: one thread per process (torch, SimpleITK, BLAS), the processes are the parallelism, and a
    forked child must not use the OpenMP pool its parent may have started; the worker ends with its parent
    (a killed ``ichor preprocess`` or ``ichor synth`` leaves no worker running on its own)."""
    import SimpleITK as sitk
    import torch
    from threadpoolctl import threadpool_limits

    die_with_parent(parent)
    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    # numpy's BLAS too: a (N, 3) @ (3, 3) product in ichor.data.coverage took 0.3 s instead of 0.08 s
    # with OpenBLAS threads contending for 2 busy cores
    threadpool_limits(1)


def die_with_parent(parent: int | None = None) -> None:
    """Ask Linux to send this process SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG); elsewhere nothing.

    ``parent`` is the pid of the process that started this one: if it is no longer the parent, it
    died before the request was made (adopted by init or a subreaper), and this process ends now.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)
