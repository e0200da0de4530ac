"""Jobs run to completion end to end: real API, real SeaweedFS, real agent processes."""

import gzip
import json
import sys

from tests.e2e.harness import object_keys, read_object, sync_block, train_command


def test_sync_job_completes_with_outputs_in_bucket(jobs, agents, s3, bucket, imds):
    s3.put_object(Bucket=bucket, Key="job1/inputs/data/a.txt", Body=b"alpha")
    s3.put_object(Bucket=bucket, Key="job1/inputs/b.txt", Body=b"beta")
    job = jobs.submit(**train_command(3, 0.05, "--input-dir", "inputs",
                                      "--checkpoint-dir", "checkpoints", "--output-dir", "outputs"),
                      sync=sync_block(bucket, "job1"), heartbeat_interval=1,
                      environment={"EXTRA": "1"})
    agent = agents("machine-a")

    done = jobs.wait_status(job["id"], "completed", timeout=60, agents=[agent])

    assert done["machine_id"] == "machine-a"
    result = json.loads(read_object(s3, bucket, "job1/outputs/result.json"))
    assert result == {"steps": 3, "total": 6, "resumed_from": None,
                      "inputs": ["b.txt", "data/a.txt"], "job_id": job["id"]}
    # Only the newest two checkpoints are kept locally, and deletions follow to the bucket.
    assert object_keys(s3, bucket, "job1/checkpoints/") == [
        "job1/checkpoints/step-000002.ckpt", "job1/checkpoints/step-000003.ckpt"]
    # Deletion cost: high while the outputs went up, back to 0 once idle.
    costs = imds.deletion_costs()
    assert 999999999 in costs and costs[-1] == 0
    # The job's directories are purged afterwards.
    assert not any((agent.work_dir / "checkpoints").iterdir())
    assert all(line.get("job_id") == job["id"] for line in agent.logged("uploaded"))


def test_legacy_job_completes(jobs, agents, s3, bucket):
    s3.put_object(Bucket=bucket, Key="legacy/in/input.txt", Body=b"legacy input")
    job = jobs.submit(**train_command(2, 0.05), heartbeat_interval=1,
                      input_bucket=bucket, input_prefix="legacy/in/",
                      checkpoint_bucket=bucket, checkpoint_prefix="legacy/ckpt/",
                      output_bucket=bucket, output_prefix="legacy/out/")
    agent = agents("machine-a", INPUT_DIR="in", CHECKPOINT_DIR="ckpt", OUTPUT_DIR="out")

    jobs.wait_status(job["id"], "completed", timeout=60, agents=[agent])

    result = json.loads(read_object(s3, bucket, "legacy/out/result.json"))
    assert result["total"] == 3 and result["inputs"] == ["input.txt"]
    assert "legacy/ckpt/step-000002.ckpt" in object_keys(s3, bucket, "legacy/ckpt/")


def test_compression_round_trip(jobs, agents, s3, bucket):
    s3.put_object(Bucket=bucket, Key="gz/inputs/data.txt.gz", Body=gzip.compress(b"x" * 5000),
                  ContentEncoding="gzip")
    s3.put_object(Bucket=bucket, Key="gz/inputs/archive.tar.gz", Body=b"not gzip-encoded")
    script = ("import os, pathlib; d = pathlib.Path('inputs');"
              "o = pathlib.Path('outputs'); o.mkdir(exist_ok=True);"
              "(o / 'copy.txt').write_bytes((d / 'data.txt').read_bytes());"
              "(o / 'names.txt').write_text(' '.join(sorted(p.name for p in d.iterdir())))")
    job = jobs.submit(command=sys.executable, arguments=["-c", script], compression=True,
                      heartbeat_interval=1, sync={
                          "before": [{"bucket": bucket, "prefix": "gz/inputs/",
                                      "local_path": "inputs", "direction": "download"}],
                          "after": [{"bucket": bucket, "prefix": "gz/outputs/",
                                     "local_path": "outputs", "direction": "upload"}]})
    agent = agents("machine-a")

    jobs.wait_status(job["id"], "completed", timeout=60, agents=[agent])

    assert object_keys(s3, bucket, "gz/outputs/") == ["gz/outputs/copy.txt.gz",
                                                       "gz/outputs/names.txt.gz"]
    stored = s3.get_object(Bucket=bucket, Key="gz/outputs/copy.txt.gz")
    assert stored["ContentEncoding"] == "gzip"
    assert gzip.decompress(stored["Body"].read()) == b"x" * 5000
    names = gzip.decompress(read_object(s3, bucket, "gz/outputs/names.txt.gz")).decode()
    # The gzip-encoded object lost its .gz; a plain object named .gz was left as it was.
    assert names == "archive.tar.gz data.txt"


def test_pattern_selects_files(jobs, agents, s3, bucket):
    s3.put_object(Bucket=bucket, Key="pat/inputs/keep.csv", Body=b"1")
    s3.put_object(Bucket=bucket, Key="pat/inputs/skip.bin", Body=b"2")
    script = ("import pathlib, time; c = pathlib.Path('ckpt');"
              "(c / 'model.ckpt').write_text('m'); (c / 'scratch.tmp').write_text('t');"
              "(c / 'sub').mkdir(); (c / 'sub' / 'deep.ckpt').write_text('d');"
              "o = pathlib.Path('out'); o.mkdir(exist_ok=True);"
              "(o / 'seen.txt').write_text(' '.join(sorted(p.name for p in"
              " pathlib.Path('in').iterdir())))")
    job = jobs.submit(command=sys.executable, arguments=["-c", script], heartbeat_interval=1,
                      sync={
                          "before": [{"bucket": bucket, "prefix": "pat/inputs/",
                                      "local_path": "in", "direction": "download",
                                      "pattern": r"\.csv$"}],
                          "during": [{"bucket": bucket, "prefix": "pat/ckpt/",
                                      "local_path": "ckpt", "direction": "upload",
                                      "pattern": r"\.ckpt$"}],
                          "after": [{"bucket": bucket, "prefix": "pat/out/",
                                     "local_path": "out", "direction": "upload"}]})
    agent = agents("machine-a")

    jobs.wait_status(job["id"], "completed", timeout=60, agents=[agent])

    # sub/ is a checkpoint directory: its commit marker sits beside it (agent.commits).
    assert object_keys(s3, bucket, "pat/ckpt/") == ["pat/ckpt/model.ckpt",
                                                     "pat/ckpt/sub/.kelpie-commit.json",
                                                     "pat/ckpt/sub/deep.ckpt"]
    assert read_object(s3, bucket, "pat/out/seen.txt") == b"keep.csv"


def test_deleted_file_deletes_its_object(jobs, agents, s3, bucket):
    script = ("import pathlib, time; c = pathlib.Path('ckpt');"
              "(c / 'old.ckpt').write_text('old'); time.sleep(1.5);"
              "(c / 'old.ckpt').unlink(); (c / 'new.ckpt').write_text('new'); time.sleep(0.5)")
    job = jobs.submit(command=sys.executable, arguments=["-c", script], heartbeat_interval=1,
                      sync={"during": [{"bucket": bucket, "prefix": "del/",
                                        "local_path": "ckpt", "direction": "upload"}]})
    agent = agents("machine-a")

    jobs.wait_status(job["id"], "completed", timeout=60, agents=[agent])

    assert object_keys(s3, bucket, "del/") == ["del/new.ckpt"]
    # old.ckpt really was in the bucket before its deletion followed.
    assert any(line.get("key") == "del/old.ckpt" for line in agent.logged("uploaded"))
    assert any(line.get("key") == "del/old.ckpt" for line in agent.logged("deleted object"))


def test_path_traversal_key_is_refused(jobs, agents, s3, bucket, tmp_path):
    # SeaweedFS itself rejects keys with '..' segments, so the escape tried here is the one the
    # agent could create: with compression on, "sub/...gz" would become "sub/.." once its .gz
    # is removed, i.e. the input directory itself.
    s3.put_object(Bucket=bucket, Key="trav/inputs/ok.txt.gz", Body=gzip.compress(b"fine"),
                  ContentEncoding="gzip")
    s3.put_object(Bucket=bucket, Key="trav/inputs/sub/...gz", Body=gzip.compress(b"evil"),
                  ContentEncoding="gzip")
    script = ("import pathlib; i = pathlib.Path('inputs');"
              "pathlib.Path('out').mkdir(exist_ok=True);"
              "pathlib.Path('out/seen.txt').write_text(' '.join(sorted("
              "p.relative_to(i).as_posix() for p in i.rglob('*') if p.is_file())))")
    job = jobs.submit(command=sys.executable, arguments=["-c", script], heartbeat_interval=1,
                      compression=True, sync={
                          "before": [{"bucket": bucket, "prefix": "trav/inputs/",
                                      "local_path": "inputs", "direction": "download"}],
                          "after": [{"bucket": bucket, "prefix": "trav/out/",
                                     "local_path": "out", "direction": "upload"}]})
    agent = agents("machine-a")

    jobs.wait_status(job["id"], "completed", timeout=60, agents=[agent])

    assert gzip.decompress(read_object(s3, bucket, "trav/out/seen.txt.gz")) == b"ok.txt"
    refused = agent.logged("refused an object key")
    assert [line["key"] for line in refused] == ["trav/inputs/sub/...gz"]
    assert not any(b"evil" in p.read_bytes() for p in tmp_path.rglob("*")
                   if p.is_file() and p.suffix != ".log" and "seaweed" not in str(p))
