"""An example long-running job that checkpoints every step and resumes from its latest checkpoint.

It "trains" by adding step numbers into a running total, so the final result proves that every
step ran exactly once even across interruptions: total == steps * (steps + 1) / 2.

    python examples/train.py --steps 20 --step-seconds 0.5

Directories come from the flags, else INPUT_DIR / CHECKPOINT_DIR / OUTPUT_DIR (which the Kelpie
agent sets). Checkpoints are written to a temp file and renamed into place, the usual way to make
a checkpoint appear complete or not at all; only the newest `--keep` are kept. On SIGTERM/SIGINT
the finished step is checkpointed once more (marked "interrupted") before exiting.
"""

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

CHECKPOINT_GLOB = "step-*.ckpt"


def latest_checkpoint(directory: Path) -> dict | None:
    checkpoints = sorted(directory.glob(CHECKPOINT_GLOB))
    for path in reversed(checkpoints):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # unreadable: fall back to the one before
    return None


def save_checkpoint(directory: Path, state: dict, keep: int) -> Path:
    path = directory / f"step-{state['step']:06d}.ckpt"
    tmp = directory / f".{path.name}.tmp"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)
    for old in sorted(directory.glob(CHECKPOINT_GLOB))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--step-seconds", type=float, default=1.0)
    parser.add_argument("--input-dir", default=os.environ.get("INPUT_DIR", "inputs"))
    parser.add_argument("--checkpoint-dir", default=os.environ.get("CHECKPOINT_DIR", "checkpoints"))
    parser.add_argument("--output-dir", default=os.environ.get("OUTPUT_DIR", "outputs"))
    parser.add_argument("--keep", type=int, default=2, help="checkpoints to keep")
    parser.add_argument("--fail-with", type=int, default=None,
                        help="exit with this code after the first step (to test failures)")
    args = parser.parse_args()

    checkpoints, outputs = Path(args.checkpoint_dir), Path(args.output_dir)
    checkpoints.mkdir(parents=True, exist_ok=True)
    outputs.mkdir(parents=True, exist_ok=True)
    inputs = sorted(p.relative_to(args.input_dir).as_posix()
                    for p in Path(args.input_dir).rglob("*") if p.is_file()) if Path(
        args.input_dir).is_dir() else []

    state = latest_checkpoint(checkpoints) or {"step": 0, "total": 0, "resumed_from": None}
    resumed_from = state["step"] if state["step"] else None
    print(f"train: starting at step {state['step'] + 1} of {args.steps}"
          + (f" (resumed from checkpoint {resumed_from})" if resumed_from else ""), flush=True)

    def on_signal(signum, _frame):
        save_checkpoint(checkpoints, {**state, "interrupted": True}, args.keep)
        print(f"train: interrupted at step {state['step']}; checkpoint saved", flush=True)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    while state["step"] < args.steps:
        time.sleep(args.step_seconds)
        step = state["step"] + 1
        state = {"step": step, "total": state["total"] + step, "resumed_from": resumed_from}
        save_checkpoint(checkpoints, state, args.keep)
        print(f"train: step {step} done, checkpoint saved", flush=True)
        if args.fail_with is not None:
            print(f"train: failing with exit code {args.fail_with}", flush=True)
            return args.fail_with

    result = {"steps": args.steps, "total": state["total"], "resumed_from": resumed_from,
              "inputs": inputs, "job_id": os.environ.get("KELPIE_JOB_ID")}
    (outputs / "result.json").write_text(json.dumps(result, indent=2))
    print(f"train: finished, total {state['total']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
