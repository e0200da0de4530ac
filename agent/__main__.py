"""`python -m agent` (the `kelpie` binary): with no arguments, the worker agent until told to
stop; `kelpie jobs ...`, the client."""

import gc
import sys

from agent import config as agent_config
from agent import log as agent_log
from agent.version import __version__

USAGE = f"""kelpie {__version__}: the Kelpie worker agent, and a client for its API.

With no arguments: the agent. It polls the Kelpie API for jobs, runs each job's command, keeps
its checkpoints and outputs in S3-compatible storage, and reports the outcome. Configured
entirely from the environment (below).

usage: kelpie [--help | --version]
       kelpie jobs submit FILE|-          submit a job (a batch if the file holds a list)
       kelpie jobs list [--status S] [--group G] [--page N] [--page-size N]
       kelpie jobs get ID [--watch]       a job and its timeline; --watch follows it live
       kelpie jobs cancel ID
       kelpie jobs events ID
       (each takes --json; `kelpie jobs --help` lists the client's options and exit codes)
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("--version", "-V", "version"):
        print(__version__)
        return 0
    if args and args[0] in ("--help", "-h", "help"):
        print(USAGE)
        print(agent_config.help_text())
        return 0
    if args and args[0] == "jobs":
        # Imported here so the agent and --version never load the client.
        from agent.client_cli import main as client_main

        return client_main(args[1:])
    if args:
        print(f"kelpie: unknown argument {args[0]!r} (try --help)", file=sys.stderr)
        return 2
    try:
        config = agent_config.load()
    except agent_config.ConfigError as error:
        print(f"kelpie: configuration error: {error}", file=sys.stderr)
        return 2
    agent_log.setup(config.log_level)
    # Imported here so --help and --version stay fast and need no S3 libraries.
    from agent import identity
    from agent.imds import Imds
    from agent.worker import EXIT_NODE_UNUSABLE, Worker

    try:
        config = identity.resolve(config, Imds(config.imds_url))
    except identity.IdentityError as error:
        print(f"kelpie: cannot start: {error}", file=sys.stderr)
        return EXIT_NODE_UNUSABLE
    worker = Worker(config)
    worker.install_signal_handlers()
    # botocore's service model, loaded by Worker, is some 55,000 objects (more after the first
    # requests) that live as long as the agent. Left to the collector, every full collection
    # walks them all (30-80 ms on the development machine, landing in the middle of a
    # transfer); frozen, collections look only at what the agent makes while it works.
    gc.freeze()
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
