"""`make bench`: run the benchmarks and write docs/benchmarks.md.

Each ``tests/bench/bench_<name>.py`` defines ``run(env) -> str`` returning a Markdown section
(figures measured in this run, with a baseline measured in the same run). ``env`` carries the
broker and database to use. ``python -m tests.bench rpc auth`` runs only the named ones.
"""

import eventlet

eventlet.monkey_patch()

import importlib  # noqa: E402
import os  # noqa: E402
import pkgutil  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402

from tests.bench.env import BenchEnv  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "benchmarks.md"


def machine():
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    rabbit = subprocess.run(["rabbitmqctl", "-q", "version"], capture_output=True, text=True)
    return (f"{os.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, "
            f"RabbitMQ {rabbit.stdout.strip() or '?'}")


def main(names):
    here = [str(Path(__file__).parent)]
    modules = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules(here)
                     if m.name.startswith("bench_"))
    chosen = names or modules
    sections = {}
    if OUT.exists():  # keep sections of benchmarks not run this time
        current = None
        for line in OUT.read_text().splitlines(keepends=True):
            if line.startswith("<!-- bench:"):
                current = line.split(":", 1)[1].split("-->")[0].strip()
                sections[current] = ""
            elif current:
                sections[current] += line
    env = BenchEnv()
    try:
        for name in chosen:
            print(f"== bench {name}", flush=True)
            started = time.monotonic()
            module = importlib.import_module(f"tests.bench.bench_{name}")
            body = module.run(env)
            stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
            sections[name] = (f"{body.rstrip()}\n\n_Measured {stamp} on {machine()}; "
                              f"took {time.monotonic() - started:.0f} s._\n\n")
            print(body, flush=True)
    finally:
        env.close()
    header = ("# Benchmarks\n\nWritten by `make bench` (`python -m tests.bench [name ...]`). "
              "Every figure is paired with a baseline measured in the same run on the same "
              "machine, because these machines are noisy: compare ratios, not absolutes.\n\n")
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(header + "".join(f"<!-- bench: {k} -->\n{v}" for k, v in
                                    sorted(sections.items())))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main(sys.argv[1:])
