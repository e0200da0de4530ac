"""`make bench`: run every benchmark module (bench/bench_*.py, each with `run()`), in one go.

`python -m bench api storage` runs only the named ones. Each prints its measurements, the
reference measured in the same run, the ratio and the target; it exits 1 when a benchmark
broke or any target was missed.
"""

import importlib
import pkgutil
import platform
import sys
import time
from pathlib import Path

from bench import targets


def main(argv: list[str]) -> int:
    names = sorted(info.name for info in pkgutil.iter_modules([str(Path(__file__).parent)])
                   if info.name.startswith("bench_"))
    wanted = {f"bench_{name}" for name in argv}
    if wanted:
        names = [name for name in names if name in wanted]
    print(f"# kelpie benchmarks — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{platform.machine()}, {_cpus()} CPUs, Python {platform.python_version()}")
    failed = []
    for name in names:
        print(f"\n## {name.removeprefix('bench_')}")
        try:
            importlib.import_module(f"bench.{name}").run()
        except Exception as error:  # one broken benchmark must not hide the others' numbers
            print(f"!! {name} failed: {error!r}")
            failed.append(name)
    if targets.missed:
        print(f"\n!! targets missed: {', '.join(targets.missed)}")
    return 1 if failed or targets.missed else 0


def _cpus() -> int:
    import os
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
