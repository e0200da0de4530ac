"""Targets met or missed, across every benchmark of one `make bench` run.

Each benchmark prints its own verdict through `verdict()`, which also remembers a miss, so
that `make bench` can exit non-zero when any target was missed (a slower build must not pass
for a faster one just because its numbers scrolled by).
"""

missed: list[str] = []


def verdict(label: str, met: bool) -> str:
    """The word printed beside a measurement; a miss is remembered under `label`."""
    if not met:
        missed.append(label)
    return "MET" if met else "MISSED"
