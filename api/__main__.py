"""Command line: `python -m api serve | migrate | create-user`."""

import argparse
import errno
import functools
import logging
import os
import socket
import sys

from peewee import DatabaseError

from api import config
from api.errors import ValidationError

log = logging.getLogger("kelpie.api")


def serve(args) -> None:
    from sanic import Sanic
    from sanic.worker.loader import AppLoader

    from api import metrics_dir

    # Sanic reports a taken port with an error log, a shutdown and a traceback; trying the port
    # first turns it into one line (see `explain`) before anything has started.
    socket.create_server((args.host, args.port)).close()
    # Before prometheus-client is imported here or in a worker: it picks its mode on import.
    directory = metrics_dir.prepare()
    try:
        from api.app import API_WORKERS_ENV, create_app, prepare_database

        os.environ[API_WORKERS_ENV] = str(args.workers)
        settings = config.load()
        prepare_database(settings)
        loader = AppLoader(factory=functools.partial(create_app, settings))
        app = loader.load()
        app.prepare(host=args.host, port=args.port, workers=args.workers, access_log=False,
                    motd=False, single_process=args.workers == 1 and args.single_process)
        base = f"http://{args.host}:{args.port}"
        log.info("Kelpie API on %s  ·  API docs %s/docs  ·  dashboard %s/ui", base, base, base)
        Sanic.serve(primary=app, app_loader=loader)
    finally:
        metrics_dir.remove(directory)


def migrate(args) -> None:
    from api.app import prepare_database

    prepare_database(config.load())
    print("database is up to date")


def create_user(args) -> None:
    from api import db, users
    from api.app import prepare_database

    prepare_database(config.load())
    with db.database.connection_context():
        user, key = users.create(args.name, args.org, args.project)  # a taken name: explain()
    print(f"user {user.id} ({user.name})")
    print(f"API key (shown once, store it now): {key}")


def explain(error: BaseException, args) -> str | None:
    """The one line for a start-up failure a person can act on, or None for a real bug."""
    if isinstance(error, ValidationError):  # e.g. create-user with a name that is taken
        return str(error)
    if isinstance(error, DatabaseError):
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return f"cannot use the database (DATABASE_URL): {first}"
    if isinstance(error, OSError) and error.errno == errno.EADDRINUSE:
        return (f"port {args.port} on {args.host} is already in use (is another Kelpie API "
                "running?); choose another with --port")
    if isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EADDRNOTAVAIL):
        return f"cannot listen on {args.host}:{args.port}: {error.strerror}"
    return None


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Sanic prints its lines with its own handlers; passed on to ours too they showed twice.
    logging.getLogger("sanic").propagate = False
    parser = argparse.ArgumentParser(prog="python -m api", description="Kelpie coordination API")
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="run the HTTP API (migrates first)")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=8787)
    serve_parser.add_argument("--workers", type=int, default=1,
                              help="API processes sharing the port")
    serve_parser.add_argument("--single-process", action="store_true",
                              help="no worker manager (one process; for debugging)")
    serve_parser.set_defaults(func=serve)

    commands.add_parser("migrate", help="apply database migrations").set_defaults(func=migrate)

    user_parser = commands.add_parser("create-user", help="create a user and print its API key")
    user_parser.add_argument("name")
    user_parser.add_argument("--org")
    user_parser.add_argument("--project")
    user_parser.set_defaults(func=create_user)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except Exception as error:
        line = explain(error, args)
        if line is None:
            raise
        print(f"kelpie: {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
