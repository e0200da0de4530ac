"""Status webhooks: a per-user signing secret and the delivery outbox."""


def up(dialect: str) -> list[str]:
    serial = "BIGSERIAL PRIMARY KEY" if dialect == "postgresql" else "INTEGER PRIMARY KEY AUTOINCREMENT"
    return [
        # Made on first use (reading it, or the first delivery), so existing users need nothing.
        "ALTER TABLE users ADD COLUMN webhook_secret TEXT",
        # The outbox: one row per notification, written in the transaction that changed the job.
        # No foreign key to jobs: a notification already committed is still delivered when the
        # job is deleted afterwards (purge, admin clear).
        f"""CREATE TABLE webhook_deliveries (
            id {serial},
            job_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            url TEXT NOT NULL,
            job_status TEXT NOT NULL,
            body TEXT NOT NULL,
            status TEXT NOT NULL,
            created TIMESTAMP NOT NULL,
            next_attempt TIMESTAMP NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_attempt TIMESTAMP,
            last_response_code INTEGER,
            last_response_body TEXT,
            last_error TEXT,
            delivered TIMESTAMP,
            lease_until TIMESTAMP,
            lease_token TEXT
        )""",
        # The sender's scan: pending rows by due time.
        "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt)",
        # Per-job order (is an earlier row of this job still pending?) and GET /jobs/:id/webhooks.
        "CREATE INDEX webhook_deliveries_job ON webhook_deliveries (job_id, id)",
    ]
