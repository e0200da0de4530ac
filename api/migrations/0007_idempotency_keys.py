"""Idempotency-Key on POST /jobs and /jobs/batch (issue 11): the first answer to each tenant's
key, replayed to a retry within 24 hours. The primary key is what makes two concurrent
requests with one key create one job: the second insert waits for the first and then finds
the row taken."""


def up(dialect: str) -> list[str]:
    return [
        """CREATE TABLE idempotency_keys (
            user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            project TEXT NOT NULL,
            idempotency_key TEXT NOT NULL,
            request_hash TEXT NOT NULL,
            status INTEGER NOT NULL,
            body TEXT NOT NULL,
            created TIMESTAMP NOT NULL,
            PRIMARY KEY (user_id, project, idempotency_key)
        )""",
        "CREATE INDEX idempotency_keys_created ON idempotency_keys (created)",
    ]
