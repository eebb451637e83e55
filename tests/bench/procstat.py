"""CPU figures from /proc for the benchmarks: per process, per group of processes, machine."""

import os
from pathlib import Path

__all__ = ["TICKS", "cpu_seconds", "processes", "cpu_by_group", "machine_busy", "children"]

TICKS = os.sysconf("SC_CLK_TCK")


def _seconds(stat_text):
    fields = stat_text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def cpu_seconds(pid):
    """User plus system CPU seconds used so far by process ``pid``."""
    with open(f"/proc/{pid}/stat") as stat:
        return _seconds(stat.read())


def processes():
    """(pid, command name, CPU seconds so far) of every process on the machine."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # ended meanwhile
            continue
        yield int(stat.parent.name), text[text.index("(") + 1:text.rindex(")")], _seconds(text)


def cpu_by_group(groups):
    """CPU seconds so far per group; ``groups`` maps a name to a test of (pid, name)."""
    totals = dict.fromkeys(groups, 0.0)
    for pid, name, seconds in processes():
        for group, member in groups.items():
            if member(pid, name):
                totals[group] += seconds
                break
    return totals


def machine_busy():
    """(busy, total) jiffies of the whole machine so far."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    return sum(values) - values[3] - values[4], sum(values)


def children(pid):
    """Ids of the processes whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found
