"""What the agent deletes: only what Kelpie or the job put there (agent/jobs.py).

A directory made for the job is emptied afterwards. A directory that existed (data baked into
the image) loses only the files the agent downloaded and the files that appeared during the run;
everything else stays, and the agent logs what it kept. `/`, the home directory and the work
directory are never cleaned, a directory that leads into a system directory (also through a
symlink) fails the job, and one swapped for a symlink during the run is left alone.
"""

import logging
import os
from pathlib import Path

import pytest

from agent.jobs import JobError, plan_for, prepare_directories


def sync_job(*entries: tuple[str, str]) -> dict:
    """A job with one during entry per (local_path, prefix)."""
    return {"id": "j", "command": "x", "sync": {"during": [
        {"bucket": "b", "prefix": prefix, "local_path": local_path}
        for local_path, prefix in entries]}}


def write(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def tree(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*"))


def test_a_directory_made_for_the_job_is_emptied_and_stays(make_config, tmp_path):
    config = make_config()
    sentinel = write(tmp_path / "sentinel.txt")
    plan = plan_for(sync_job(("made/for/job", "p/")), config)
    directories = prepare_directories(plan, config)
    made = tmp_path / "made" / "for" / "job"
    assert made.is_dir()
    downloaded = write(made / "input.bin")
    directories.record_downloaded([downloaded])
    write(made / "deep" / "ckpt" / "step-1.pt")
    os.symlink(tmp_path, made / "link-out")  # a symlink is removed, never followed

    directories.clean()

    assert made.is_dir() and not any(made.iterdir())
    assert (tmp_path / "made").is_dir()
    assert sentinel.exists()  # the symlink's target was not touched


def test_an_existing_directory_keeps_what_was_there_before(make_config, tmp_path, caplog):
    """The reproduction: `local_path` pointing at data baked into the image. Before, the agent
    emptied it before and after every job."""
    config = make_config()
    data = tmp_path / "srv" / "data"
    write(data / "weights" / "base.safetensors", "baked")
    write(data / "vocab.txt", "baked")
    write(data / "config.json", "baked")
    os.symlink("vocab.txt", data / "vocab-link")
    plan = plan_for(sync_job((str(data), "p/")), config)
    directories = prepare_directories(plan, config)

    # The download replaces one baked file and adds another; the run adds files and a
    # directory, and edits a baked file in place.
    write(data / "config.json", "downloaded")
    write(data / "extra" / "shard-0.bin", "downloaded")
    directories.record_downloaded([data / "config.json", data / "extra" / "shard-0.bin"])
    write(data / "ckpt" / "step-1" / "model.pt", "run")
    write(data / "log.txt", "run")
    os.symlink("/", data / "root-link")
    (data / "vocab.txt").write_text("edited by the job")

    with caplog.at_level(logging.INFO, logger="agent"):
        directories.clean()

    assert tree(data) == ["vocab-link", "vocab.txt", "weights", "weights/base.safetensors"]
    assert (data / "weights" / "base.safetensors").read_text() == "baked"
    kept = [r for r in caplog.records if "kept what was there before" in r.getMessage()]
    assert len(kept) == 1 and kept[0].kept == 3
    assert kept[0].kept_examples == ["vocab-link", "vocab.txt", "weights/base.safetensors"]


def test_nested_directories_are_judged_each_by_its_own_record(make_config, tmp_path):
    config = make_config()
    write(tmp_path / "outer" / "baked.txt")
    plan = plan_for(sync_job(("outer", "a/"), ("outer/inner", "b/")), config)
    directories = prepare_directories(plan, config)
    write(tmp_path / "outer" / "inner" / "out.txt")
    write(tmp_path / "outer" / "new.txt")

    directories.clean()

    assert tree(tmp_path / "outer") == ["baked.txt", "inner"]  # inner: made for the job


@pytest.mark.parametrize("which", ["work", "home"])
def test_the_work_directory_and_home_are_never_cleaned(make_config, tmp_path, monkeypatch,
                                                       which):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    config = make_config()
    directory = tmp_path if which == "work" else home
    plan = plan_for(sync_job(("." if which == "work" else str(home), "p/")), config)
    directories = prepare_directories(plan, config)
    appeared = write(directory / "appeared-during-the-run.txt")
    directories.record_downloaded([appeared])

    directories.clean()

    assert appeared.exists()


@pytest.mark.parametrize(("local_path", "reason"), [
    ("/", "is / itself"), ("/etc", "system"), ("/usr/../etc/", "system"), ("//root", "itself"),
    ("/lib64/x", "system"), ("../escape", "climbs out"), ("a/../../b", "climbs out"),
    ("~", "home directory itself"),
])
def test_the_agent_refuses_what_the_api_refuses(make_config, local_path, reason):
    with pytest.raises(JobError) as refused:
        plan_for(sync_job((local_path, "p/")), make_config())
    assert "sync.during[0].local_path" in str(refused.value) and reason in str(refused.value)


def test_a_symlink_into_a_system_directory_fails_the_job(make_config, tmp_path):
    """The rule is judged again on the real path, after symlinks, when the directory is
    prepared: `ckpt` → /etc passes the lexical check and must not pass this one."""
    config = make_config()
    os.symlink("/etc", tmp_path / "ckpt")
    plan = plan_for(sync_job(("ckpt/ssl", "p/")), config)
    with pytest.raises(JobError) as refused:
        prepare_directories(plan, config)
    assert "really /etc/ssl" in str(refused.value) and "system" in str(refused.value)


def test_legacy_directories_are_judged_too(make_config, tmp_path):
    config = make_config(INPUT_DIR="/proc/kelpie", CHECKPOINT_DIR="c", OUTPUT_DIR="o")
    plan = plan_for({"id": "j", "command": "run", "input_bucket": "b", "input_prefix": "i/",
                     "checkpoint_bucket": "b", "checkpoint_prefix": "c/",
                     "output_bucket": "b", "output_prefix": "o/"}, config)
    with pytest.raises(JobError, match="/proc"):
        prepare_directories(plan, config)


def test_a_directory_swapped_for_a_symlink_during_the_run_is_left_alone(make_config, tmp_path):
    config = make_config()
    elsewhere = tmp_path / "elsewhere"
    write(elsewhere / "precious.txt")
    plan = plan_for(sync_job(("ckpt", "p/")), config)
    directories = prepare_directories(plan, config)
    (tmp_path / "ckpt").rmdir()
    os.symlink(elsewhere, tmp_path / "ckpt")

    directories.clean()

    assert (elsewhere / "precious.txt").exists()


def test_a_file_where_a_directory_should_be_fails_the_job(make_config, tmp_path):
    config = make_config()
    write(tmp_path / "ckpt")
    with pytest.raises(JobError, match="not a directory"):
        prepare_directories(plan_for(sync_job(("ckpt", "p/")), config), config)
