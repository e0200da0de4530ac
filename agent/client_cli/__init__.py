"""`kelpie jobs ...`: the client for people and scripts, in the same executable as the agent.

`kelpie` with no arguments is the agent; `kelpie jobs <command>` talks to the API as a user,
with human tables by default and `--json` for scripts. Exit codes: see errors.py (and
docs/binary.md). Imported only when a client command runs, so the agent and `--version` never
load it.
"""

import argparse
import json
import sys

from agent import config as agent_config
from agent.client_cli import commands
from agent.client_cli.errors import USAGE, ClientError, Refused

EXIT_CODES = """exit codes:
  0  done (get --watch: the job completed)
  1  the API refused the request (bad input, unknown job, wrong key, job already finished)
  2  usage: bad arguments, configuration or job file; nothing was sent
  3  the API could not be reached or kept failing
  4  get --watch: the job ended failed
  5  get --watch: the job ended canceled
"""

STATUSES = ("pending", "running", "completed", "failed", "canceled")


def _positive(kind):
    def parse(raw: str):
        try:
            value = kind(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{raw!r} must be more than 0")
        return value
    return parse


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="kelpie jobs", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Submit, list, follow and cancel Kelpie jobs.",
        epilog=EXIT_CODES + "\n" + agent_config.client_help_text())
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, handler):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="print the API's JSON, for scripts")
        p.set_defaults(handler=handler)
        return p

    p = command("submit", "submit a job, or a batch when the file holds a list", commands.submit)
    p.add_argument("file", help="JSON file with the job (or a list of jobs); - reads stdin")

    p = command("list", "list jobs, newest first", commands.list_jobs)
    p.add_argument("--status", choices=STATUSES)
    p.add_argument("--group", metavar="CONTAINER_GROUP_ID", help="only this container group")
    p.add_argument("--page", type=_positive(int), default=1)
    p.add_argument("--page-size", type=_positive(int), default=50)
    p.add_argument("--asc", action="store_true", help="oldest first")

    p = command("get", "show a job and its timeline", commands.get)
    p.add_argument("id")
    p.add_argument("--watch", action="store_true",
                   help="follow the timeline live until the job ends; the exit code says how")
    p.add_argument("--interval", type=_positive(float), default=2.0, metavar="SECONDS",
                   help="seconds between looks while watching (default 2)")

    p = command("cancel", "cancel a job that has not finished", commands.cancel)
    p.add_argument("id")

    p = command("events", "a job's history, one row per transition", commands.events)
    p.add_argument("id")
    return top


def main(argv: list[str], out=None, err=None) -> int:
    """`argv` is what follows `kelpie jobs`."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = parser().parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2)
        return USAGE if exit_.code else 0
    try:
        config = agent_config.load_client()
    except agent_config.ConfigError as error:
        err.write(f"kelpie: configuration error: {error}\n")
        return USAGE
    from agent.client_cli.http import Api  # urllib3 only once a command really runs

    try:
        return args.handler(Api(config), args, out, err)
    except ClientError as error:
        err.write(f"kelpie: {error}\n")
        if isinstance(error, Refused) and args.json and isinstance(error.body, dict):
            out.write(json.dumps(error.body) + "\n")
        return error.exit_code
    except KeyboardInterrupt:
        return 130
