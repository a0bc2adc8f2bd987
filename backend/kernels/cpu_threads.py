"""A serving process's main thread stays out of torch's thread pool, so the generation thread runs at full speed.

libgomp (torch's OpenMP on Linux) keeps a team of worker threads for every thread that has run a parallel region,
for as long as that thread lives, and the main thread lives as long as the process. Once a process holds more OpenMP
threads than it has CPUs, libgomp throttles every team: workers stop spinning between parallel regions and sleep, and
a decode step (a few hundred small parallel products) waits on wake-ups. Measured on this 2-core machine with the
embedded model: a generation thread's step took 59 ms instead of 32 ms once the main thread had run one two-thread
operation (a norm over the space's role vectors) and kept its team.

Measured here, ``torch.set_num_threads`` on the main thread holds for the main thread, while the other threads share
one count, set by the last of them that set it (threads started after the main thread set it inherit the main
thread's). So a process that generates on a background thread calls :func:`reserve` on its main thread before any
torch work (the main thread never builds a team) and the generation thread calls :func:`own` with the count reserve
returned (so it and the other helper threads get the machine's count back). Other threads that need the model hand the
work to the generation thread (the worker's ``Engine.call``): a long-lived helper thread (a web server's pool) that
ran a forward pass would keep a team too.
"""

from __future__ import annotations

import threading

import torch


def reserve() -> int:
    """On the main thread: one torch thread for it from now on; returns the count it had (for :func:`own`)."""
    threads = torch.get_num_threads()
    if threading.current_thread() is threading.main_thread():
        torch.set_num_threads(1)
    return threads


def own(threads: int) -> None:
    """On the generation thread, before its first forward pass: ``threads`` torch threads (not the main thread's)."""
    if threading.current_thread() is not threading.main_thread():
        torch.set_num_threads(max(1, int(threads)))
