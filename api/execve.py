"""What the kernel's execve accepts, checked at submission: a command line it refuses (E2BIG)
can never start, on any node, and would burn every attempt of the job for nothing.

Linux limits each argument or environment string, with its terminating NUL, to MAX_ARG_STRLEN
(32 pages: 131072 bytes), and all of them together, with one pointer each, to a quarter of the
stack limit (2 MiB under the usual 8 MiB). The job's process also inherits the node's own
environment and the variables Kelpie adds, so a job may take at most half of that.
"""

MAX_STRING_BYTES = 131072 - 1  # without the NUL
MAX_TOTAL_BYTES = 1024 * 1024
POINTER_BYTES = 8


def _cost(text: str) -> int:
    return len(text.encode()) + 1 + POINTER_BYTES


def problem(command: str, arguments: list[str], environment: dict[str, str]) -> tuple | None:
    """(field, message) for the first thing execve would refuse, or None."""
    strings = [("command", command)]
    strings += [(f"arguments[{index}]", argument) for index, argument in enumerate(arguments)]
    strings += [(f"environment.{name}", f"{name}={value}") for name, value in environment.items()]
    for field, text in strings:
        if len(text.encode()) > MAX_STRING_BYTES:
            return field, (f"is {len(text.encode())} bytes; execve accepts at most "
                           f"{MAX_STRING_BYTES} bytes in one argument or variable")
    total = sum(_cost(text) for _, text in strings)
    if total > MAX_TOTAL_BYTES:
        return "arguments", (f"command, arguments and environment take {total} bytes; at most "
                             f"{MAX_TOTAL_BYTES} fit in what execve accepts with room left for "
                             "the node's own environment")
    return None
