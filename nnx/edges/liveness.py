"""Where a run's process lives, and whether it still does.

Every run records its host, pid and the pid's start time when it starts, and a heartbeat (unix
time, the last epoch logged and that epoch's duration) with its metric writes. A RUNNING run whose
process died without a word (kill -9, the machine lost, the out-of-memory killer) is then told from
a live one: on its own host at once (the pid is gone, or now belongs to a process that started at
another time), from another host once its heartbeat is older than a few epochs' time.
"""

import os
import socket
import time
from pathlib import Path

from nnx import records

HOST, PID, PID_START = records.TAG_HOST, records.TAG_PID, records.TAG_PID_START
HEARTBEAT, LAST_EPOCH, EPOCH_SECONDS = records.TAG_HEARTBEAT, records.TAG_LAST_EPOCH, records.TAG_EPOCH_SECONDS
KILLED_REASON = records.TAG_KILLED_REASON

# From another host a run is stale when its heartbeat is older than STALE_EPOCHS epochs, and never
# sooner than STALE_MIN_S (a busy store delays a heartbeat; the two machines' clocks differ a little).
# Before its first epoch (data loading and compilation) a run has FIRST_EPOCH_S. tracking.stale_after
# or `nnx-runs --stale-after` sets one limit instead.
STALE_EPOCHS = 5
STALE_MIN_S = 300.0
FIRST_EPOCH_S = 1800.0


def process_start(pid: int) -> str | None:
    """The start time of live process `pid` (clock ticks after boot, /proc/<pid>/stat's 22nd field),
    "" where there is no /proc but the pid exists, None if no live process has that pid (a zombie,
    killed but not yet reaped by its parent, counts as gone)."""
    if not Path("/proc/self/stat").exists():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # someone else's process: it exists
        return ""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name, which is in parentheses and may hold spaces: state is field 3.
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def here() -> dict:
    """The tags that say where this process runs, with a first heartbeat."""
    pid = os.getpid()
    return {HOST: socket.gethostname(), PID: str(pid), PID_START: process_start(pid) or "", HEARTBEAT: f"{time.time():.0f}"}


def stale_limit(tags: dict, stale_after: float | None = None) -> float:
    """Seconds without a heartbeat after which a run on another host counts as gone."""
    if stale_after:
        return float(stale_after)
    seconds = tags.get(EPOCH_SECONDS)
    return FIRST_EPOCH_S if not seconds else max(STALE_MIN_S, STALE_EPOCHS * float(seconds))


def heartbeat_age(tags: dict, now: float) -> float | None:
    beat = tags.get(HEARTBEAT)
    return None if not beat else now - float(beat)


def why_stale(tags: dict, *, now: float, host: str, start_of=process_start, stale_after: float | None = None) -> str | None:
    """Why a RUNNING run's process is gone ("process 1234 on host X gone"), or None while it may run.

    Args:
      tags: the run's tags (HOST, PID, PID_START, HEARTBEAT, EPOCH_SECONDS).
      now: unix time; host: the host asking (socket.gethostname()).
      start_of: pid -> its start time, None if gone (process_start; a test passes its own).
      stale_after: seconds without a heartbeat for a run on another host (default: stale_limit's rule).
    A run recorded before nnx wrote these tags is never called stale: nothing says where it ran.
    """
    if not tags.get(HOST) or not tags.get(PID):
        return None
    pid, where = int(tags[PID]), f"process {tags[PID]} on host {tags[HOST]}"
    if tags[HOST] == host:
        start = start_of(pid)
        if start is None:
            return f"{where} gone"
        if start and tags.get(PID_START) and start != tags[PID_START]:
            return f"{where} gone (the pid now belongs to a process started later)"
        return None
    age, limit = heartbeat_age(tags, now), stale_limit(tags, stale_after)
    if age is not None and age > limit:
        return f"{where} gone: no heartbeat for {age:.0f} s (the limit is {limit:.0f} s)"
    return None
