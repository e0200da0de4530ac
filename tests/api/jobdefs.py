"""Job definitions used across the API tests."""


def sync_job(**overrides) -> dict:
    job = {
        "command": "python",
        "arguments": ["/app/main.py", "--epochs", "3"],
        "environment": {"SOME_VAR": "value"},
        "sync": {
            "before": [
                {"bucket": "my-bucket", "prefix": "inputs/job1", "local_path": "inputs/",
                 "direction": "download"},
                {"bucket": "my-bucket", "prefix": "checkpoints/job1/",
                 "local_path": "checkpoints/", "direction": "download"},
            ],
            "during": [
                {"bucket": "my-bucket", "prefix": "checkpoints/job1/",
                 "local_path": "checkpoints/", "direction": "upload", "pattern": r"\.ckpt$"},
            ],
            "after": [
                {"bucket": "my-bucket", "prefix": "outputs/job1/", "local_path": "outputs/",
                 "direction": "upload"},
            ],
        },
        "webhook": None,
        "container_group_id": "97f504e8-6de6-4322-b5d5-1777a59a7ad3",
    }
    job.update(overrides)
    return job


def legacy_job(**overrides) -> dict:
    job = {
        "command": "python",
        "arguments": ["/app/main.py"],
        "input_bucket": "my-bucket",
        "input_prefix": "inputs/job1/",
        "checkpoint_bucket": "my-bucket",
        "checkpoint_prefix": "checkpoints/job1",
        "output_bucket": "my-bucket",
        "output_prefix": "outputs/job1/",
        "container_group_id": "97f504e8-6de6-4322-b5d5-1777a59a7ad3",
    }
    job.update(overrides)
    return job
