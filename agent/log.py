"""JSON-lines logging: one object a line on stderr, `job_id` on every line about a job.

Standard `logging` underneath, so modules just call `log = get_logger(__name__)`; the job id is
carried in a context variable set by the worker while it holds a job, which threads started for
that job inherit through `contextvars.copy_context()` (see `job_thread`).
"""

import contextvars
import json
import logging
import sys
import threading
import time

current_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "current_job_id", default=None)

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()) | {"message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None) or current_job_id.get()
        if job_id:
            line["job_id"] = job_id
        for key, value in vars(record).items():
            if key not in _RESERVED and key != "job_id" and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("agent")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # botocore is chatty at DEBUG and its lines would not carry our fields; keep it at WARNING.
    logging.getLogger("botocore").setLevel(logging.WARNING)
    logging.getLogger("s3transfer").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name if name.startswith("agent") else "agent." + name)


def job_thread(target, *, name: str, daemon: bool = True) -> threading.Thread:
    """A thread that runs `target` with the caller's context, so its log lines keep `job_id`."""
    context = contextvars.copy_context()
    return threading.Thread(target=context.run, args=(target,), name=name, daemon=daemon)


def submit(executor, fn, *args, **kwargs):
    """`executor.submit` that keeps the caller's context (and so `job_id`) in the worker thread."""
    context = contextvars.copy_context()
    return executor.submit(context.run, fn, *args, **kwargs)
