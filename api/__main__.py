"""Command line: `python -m api serve | migrate | create-user`."""

import argparse
import functools
import logging
import sys

from api import config


def serve(args) -> None:
    from sanic import Sanic
    from sanic.worker.loader import AppLoader

    from api.app import create_app, prepare_database

    settings = config.load()
    prepare_database(settings)
    loader = AppLoader(factory=functools.partial(create_app, settings))
    app = loader.load()
    app.prepare(host=args.host, port=args.port, workers=args.workers, access_log=False,
                motd=False, single_process=args.workers == 1 and args.single_process)
    Sanic.serve(primary=app, app_loader=loader)


def migrate(args) -> None:
    from api.app import prepare_database

    prepare_database(config.load())
    print("database is up to date")


def create_user(args) -> None:
    from api import db, users
    from api.app import prepare_database
    from api.errors import ValidationError

    prepare_database(config.load())
    try:
        with db.database.connection_context():
            user, key = users.create(args.name, args.org, args.project)
    except ValidationError as error:
        raise SystemExit(str(error)) from None
    print(f"user {user.id} ({user.name})")
    print(f"API key (shown once, store it now): {key}")


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
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
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
