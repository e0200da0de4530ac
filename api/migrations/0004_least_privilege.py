"""Least privilege: key ids, names, scopes, expiry and last use; the organization and project a
job was submitted under; who caused each event; reallocations keyed by tenant and group; and no
stored webhook response bodies."""


def up(dialect: str) -> list[str]:
    return [
        "ALTER TABLE api_keys ADD COLUMN id TEXT",
        "ALTER TABLE api_keys ADD COLUMN name TEXT",
        "ALTER TABLE api_keys ADD COLUMN scope TEXT NOT NULL DEFAULT 'user'",
        "ALTER TABLE api_keys ADD COLUMN container_group_ids TEXT",
        "ALTER TABLE api_keys ADD COLUMN expires TIMESTAMP",
        "ALTER TABLE api_keys ADD COLUMN last_used TIMESTAMP",
        # Existing keys get an id derived from their hash: stable, and it reveals nothing (the
        # hash of 32 random bytes).
        "UPDATE api_keys SET id = 'key_' || substr(key_hash, 1, 16) WHERE id IS NULL",
        "CREATE UNIQUE INDEX api_keys_id ON api_keys (id)",
        "ALTER TABLE jobs ADD COLUMN organization TEXT",
        "ALTER TABLE jobs ADD COLUMN project TEXT",
        "ALTER TABLE job_events ADD COLUMN actor TEXT",
        # Bodies stored before this release came from receivers the tenant named: drop them.
        "UPDATE webhook_deliveries SET last_response_body = NULL",
        "ALTER TABLE webhook_deliveries ADD COLUMN last_duration_ms INTEGER",
        """CREATE TABLE machine_reallocations_0004 (
            user_id TEXT NOT NULL,
            container_group_id TEXT NOT NULL,
            machine_id TEXT NOT NULL,
            requested TIMESTAMP NOT NULL,
            outcome TEXT NOT NULL,
            error TEXT,
            finished TIMESTAMP,
            PRIMARY KEY (user_id, container_group_id, machine_id)
        )""",
        "INSERT INTO machine_reallocations_0004 SELECT user_id, container_group_id, machine_id,"
        " requested, outcome, error, finished FROM machine_reallocations",
        "DROP TABLE machine_reallocations",
        "ALTER TABLE machine_reallocations_0004 RENAME TO machine_reallocations",
        # Bans are counted per tenant and container group when a machine asks for work.
        "CREATE INDEX job_bans_machine_user_group ON job_bans"
        " (machine_id, user_id, container_group_id)",
    ]
