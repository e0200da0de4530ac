"""A training program for the torture suite, saving its checkpoints in one of the ways real
programs do:

    atomic    model.ckpt written under a temp name and renamed into place (1 MiB)
    inplace   last.pt overwritten in place, in small writes (4 MiB)
    keep1     ckpt-<step>.pt written in place, then the previous one deleted (2 MiB)
    keep3     the same, keeping the last three
    dirs      checkpoint-<step>/{model.bin 3 MiB, optimizer.bin 1 MiB, trainer_state.json},
              written in place into a new directory, the older ones removed (keep 2)
    large     large.ckpt of 64 MiB, written under a temp name and renamed into place

Every checkpoint file carries a header line (step, running total, body length, SHA-256 of
the body), so a checker tells a complete one from a torn one. On start the program resumes
from the newest checkpoint and exits 3 ("corrupt checkpoint") if that one is torn, as a real
program would crash. After each save returns it appends the step to a journal outside the
synced directory (fsync'd), with the time, and on start the step it resumed from: the torture
driver reads it to know the last completed saves.
Training ends once the finish flag exists: the result (total, last step) goes to OUTPUT_DIR.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

MIB = 1024 * 1024
SIZES = {"atomic": MIB, "inplace": 4 * MIB, "keep1": 2 * MIB, "keep3": 2 * MIB,
         "large": 64 * MIB}
DIR_FILES = {"model.bin": 3 * MIB, "optimizer.bin": MIB, "trainer_state.json": 200}
KEEP = {"keep1": 1, "keep3": 3, "dirs": 2}


def body_for(step: int, size: int) -> bytes:
    block = hashlib.sha256(f"step {step}".encode()).digest() * 32  # 1 KiB, differs per step
    return (block * (size // len(block) + 1))[:size]


def encode(step: int, total: int, size: int) -> bytes:
    body = body_for(step, size)
    header = {"step": step, "total": total, "length": len(body),
              "sha256": hashlib.sha256(body).hexdigest()}
    return json.dumps(header).encode() + b"\n" + body


def decode(data: bytes) -> dict | None:
    """The header of a complete checkpoint file, None if it is torn."""
    head, sep, body = data.partition(b"\n")
    if not sep:
        return None
    try:
        header = json.loads(head)
    except ValueError:
        return None
    if len(body) != header.get("length") or hashlib.sha256(body).hexdigest() != header["sha256"]:
        return None
    return header


def write_in_place(path: Path, data: bytes, chunk: int = 64 * 1024) -> None:
    with open(path, "wb") as f:
        for offset in range(0, len(data), chunk):
            f.write(data[offset:offset + chunk])
            f.flush()


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write_in_place(tmp, data, chunk=4 * MIB)
    os.replace(tmp, path)


def checkpoints(style: str, directory: Path) -> list[tuple[int | None, list[Path]]]:
    """The checkpoints present, oldest first: (step from its name, or None; its files)."""
    if style == "atomic":
        return [(None, [directory / "model.ckpt"])] if (directory / "model.ckpt").exists() else []
    if style == "inplace":
        return [(None, [directory / "last.pt"])] if (directory / "last.pt").exists() else []
    if style == "large":
        return [(None, [directory / "large.ckpt"])] if (directory / "large.ckpt").exists() else []
    if style in ("keep1", "keep3"):
        return [(int(p.stem.split("-")[1]), [p]) for p in sorted(directory.glob("ckpt-*.pt"))]
    return [(int(p.name.split("-")[1]), [p / name for name in DIR_FILES])
            for p in sorted(directory.glob("checkpoint-*")) if p.is_dir()]


def read_checkpoint(files: list[Path]) -> dict | None:
    """The state of a checkpoint if every file of it is complete and of one step."""
    headers = []
    for path in files:
        try:
            header = decode(path.read_bytes())
        except OSError:
            return None
        if header is None:
            return None
        headers.append(header)
    if len({(h["step"], h["total"]) for h in headers}) != 1:
        return None
    return headers[0]


def save(style: str, directory: Path, step: int, total: int) -> None:
    if style in ("atomic", "large"):
        name = "model.ckpt" if style == "atomic" else "large.ckpt"
        write_atomic(directory / name, encode(step, total, SIZES[style]))
    elif style == "inplace":
        write_in_place(directory / "last.pt", encode(step, total, SIZES[style]))
    elif style in ("keep1", "keep3"):
        write_in_place(directory / f"ckpt-{step:06d}.pt", encode(step, total, SIZES[style]))
        for old in sorted(directory.glob("ckpt-*.pt"))[:-KEEP[style]]:
            old.unlink(missing_ok=True)
    else:
        target = directory / f"checkpoint-{step:06d}"
        target.mkdir(exist_ok=True)
        for name, size in DIR_FILES.items():
            write_in_place(target / name, encode(step, total, size))
        for old in sorted(p for p in directory.glob("checkpoint-*") if p.is_dir())[:-KEEP[style]]:
            shutil.rmtree(old, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--style", required=True, choices=[*SIZES, "dirs"])
    parser.add_argument("--journal", required=True)
    parser.add_argument("--finish-flag", required=True)
    parser.add_argument("--step-seconds", type=float, default=0.3)
    args = parser.parse_args()
    directory = Path(os.environ["CHECKPOINT_DIR"])
    outputs = Path(os.environ["OUTPUT_DIR"])
    directory.mkdir(parents=True, exist_ok=True)

    step, total = 0, 0
    present = checkpoints(args.style, directory)
    if present:
        state = read_checkpoint(present[-1][1])
        if state is None:
            print(f"corrupt checkpoint: {present[-1][1]}", file=sys.stderr)
            return 3
        step, total = state["step"], state["total"]
    print(json.dumps({"resumed_from": step if present else None}), flush=True)
    with open(args.journal, "a") as journal:
        journal.write(f"resume {step} {time.time()}\n")

    while True:
        time.sleep(args.step_seconds)
        step += 1
        total += step
        save(args.style, directory, step, total)
        with open(args.journal, "a") as journal:
            journal.write(f"{step} {time.time()}\n")
            journal.flush()
            os.fsync(journal.fileno())
        if os.path.exists(args.finish_flag):
            break
    outputs.mkdir(parents=True, exist_ok=True)
    (outputs / "result.json").write_text(json.dumps({"total": total, "last_step": step}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
