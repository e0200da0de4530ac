"""Autoscaling: scaling rules with their last evaluation, the tick lease that lets one API
process act per tick, and the record of machines reallocated for failing too many jobs."""


def up(dialect: str) -> list[str]:
    return [
        # One rule per container group: two rules for one group would fight over its replicas.
        """CREATE TABLE scaling_rules (
            container_group_id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            organization_name TEXT NOT NULL,
            project_name TEXT NOT NULL,
            container_group_name TEXT NOT NULL,
            min_replicas INTEGER NOT NULL,
            max_replicas INTEGER NOT NULL,
            idle_threshold_seconds INTEGER NOT NULL,
            created TIMESTAMP NOT NULL,
            updated TIMESTAMP NOT NULL,
            last_evaluated TIMESTAMP,
            last_count INTEGER,
            last_target INTEGER,
            last_group_status TEXT,
            last_group_replicas INTEGER,
            last_action TEXT,
            last_error TEXT
        )""",
        "CREATE INDEX scaling_rules_user ON scaling_rules (user_id)",
        # A named background loop that must run once per tick across every process: the process
        # that moves `due` forward owns the tick, and no one starts another before `busy_until`.
        """CREATE TABLE loop_leases (
            name TEXT PRIMARY KEY,
            due TIMESTAMP NOT NULL,
            busy_until TIMESTAMP,
            holder TEXT
        )""",
        # A machine is reallocated once: the row is written before Salad is asked.
        """CREATE TABLE machine_reallocations (
            machine_id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL,
            container_group_id TEXT NOT NULL,
            requested TIMESTAMP NOT NULL,
            outcome TEXT NOT NULL,
            error TEXT,
            finished TIMESTAMP
        )""",
        # Counting a machine's bans for one user when it asks for work.
        "CREATE INDEX job_bans_machine_user ON job_bans (machine_id, user_id)",
    ]
