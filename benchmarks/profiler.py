"""A profile of every thread of the measured process, for ``run.py --profile DIR``.

py-spy cannot read this machine's Python (a pyenv build: "Failed to find python version from
target process"), and a sampling thread inside the process only sees the others where they
give up the GIL (a blocking call), not where they spend it. So the benchmark processes run
``cProfile`` in every thread: the thread that starts the profile, and each thread started
after it (``threading.setprofile`` hands each new thread its own profiler on its first call).
At ``stop`` the profiles are merged and written with ``pstats`` (``profile_summary.py`` reads
the file). Deterministic profiling slows Python calls down (about 2x here), so its times are
shares of a budget, not the benchmark's figures.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import threading
from pathlib import Path
from typing import Any


class Profiler:
    """cProfile in this thread and in every thread started after ``start``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.profiles: list[cProfile.Profile] = []
        self._lock = threading.Lock()

    def _new(self) -> cProfile.Profile:
        profile = cProfile.Profile()
        with self._lock:
            self.profiles.append(profile)
        return profile

    def _thread_started(self, *_: Any) -> None:
        # the first profile event of a new thread: replace this hook with the thread's profiler
        sys.setprofile(None)
        self._new().enable()

    def start(self) -> Profiler:
        threading.setprofile(self._thread_started)
        self._new().enable()
        return self

    def stop(self) -> None:
        """Stop profiling and write the merged statistics (``pstats`` format)."""
        threading.setprofile(None)  # type: ignore[arg-type]
        for profile in self.profiles:
            profile.disable()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            stats = pstats.Stats(self.profiles[0])
            for profile in self.profiles[1:]:
                stats.add(profile)
        stats.dump_stats(str(self.path))


def start_profile(path: Path) -> Profiler:
    """Profile this process (every thread) into ``path`` until ``stop``."""
    return Profiler(path).start()
