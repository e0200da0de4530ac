"""Users, API keys, jobs, machine bans and the job event log."""


def up(dialect: str) -> list[str]:
    serial = "BIGSERIAL PRIMARY KEY" if dialect == "postgresql" else "INTEGER PRIMARY KEY AUTOINCREMENT"
    return [
        """CREATE TABLE users (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            org TEXT,
            project TEXT,
            is_admin BOOLEAN NOT NULL DEFAULT FALSE,
            created TIMESTAMP NOT NULL
        )""",
        """CREATE TABLE api_keys (
            key_hash TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            created TIMESTAMP NOT NULL
        )""",
        "CREATE INDEX api_keys_user ON api_keys (user_id)",
        """CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            status TEXT NOT NULL,
            created TIMESTAMP NOT NULL,
            started TIMESTAMP,
            completed TIMESTAMP,
            canceled TIMESTAMP,
            failed TIMESTAMP,
            heartbeat TIMESTAMP,
            lease_expires TIMESTAMP,
            num_failures INTEGER NOT NULL DEFAULT 0,
            num_heartbeats INTEGER NOT NULL DEFAULT 0,
            num_attempts INTEGER NOT NULL DEFAULT 0,
            machine_id TEXT,
            container_group_id TEXT,
            command TEXT NOT NULL,
            arguments TEXT NOT NULL,
            environment TEXT NOT NULL,
            sync TEXT,
            input_bucket TEXT,
            input_prefix TEXT,
            checkpoint_bucket TEXT,
            checkpoint_prefix TEXT,
            output_bucket TEXT,
            output_prefix TEXT,
            webhook TEXT,
            max_failures INTEGER NOT NULL,
            heartbeat_interval INTEGER NOT NULL,
            compression BOOLEAN NOT NULL DEFAULT FALSE
        )""",
        # The claim: a user's pending jobs of one container group, oldest first.
        "CREATE INDEX jobs_claim ON jobs (user_id, container_group_id, status, created, id)",
        # Reclaiming: running jobs whose lease ran out.
        "CREATE INDEX jobs_lease ON jobs (status, lease_expires)",
        # Listing: newest (or oldest) first per user.
        "CREATE INDEX jobs_user_created ON jobs (user_id, created)",
        """CREATE TABLE job_bans (
            job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            machine_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            container_group_id TEXT,
            created TIMESTAMP NOT NULL,
            PRIMARY KEY (job_id, machine_id)
        )""",
        "CREATE INDEX job_bans_machine ON job_bans (machine_id)",
        f"""CREATE TABLE job_events (
            id {serial},
            job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            at TIMESTAMP NOT NULL,
            kind TEXT NOT NULL,
            status TEXT NOT NULL,
            machine_id TEXT,
            attempt INTEGER,
            exit_code INTEGER,
            reason TEXT
        )""",
        "CREATE INDEX job_events_job ON job_events (job_id, id)",
    ]
