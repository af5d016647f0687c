#!/usr/bin/env python3
"""Checks `skymoe plan`'s predicted step times against real multi-process CPU runs on this machine.

1. Profiles one process with one thread (`skymoe bench train --json`): the planner's calibration.
2. For each layout, runs `mpirun -np 2 skymoe train` (one thread per rank) for a few steps and
   takes the median step time (steps after the first).
3. Asks `skymoe plan` for the same layout with that profile and prints predicted vs measured.

Usage: python3 bench/validate_planner.py [--bin build/skymoe] [--preset train-moe] [--steps 4]
Run it on an otherwise idle machine: the ranks share the two cores with nothing else.
"""
import argparse
import json
import os
import random
import statistics
import struct
import subprocess
import tempfile

LAYOUTS = [  # (name, train flags, plan flags)
    ("dp2", "", "--pp 1 --tp 1 --dp 2 --expert-layout none --zero 0"),
    ("dp2 zero1", "--zero 1", "--pp 1 --tp 1 --dp 2 --expert-layout none --zero 1"),
    ("pp2 4,4", "--pp 2 --pp-layers 4,4", "--pp 2 --tp 1 --dp 1 --expert-layout none --zero 0 --pp-layers 4,4 --recompute-layers 0,0"),
    ("pp2 6,2", "--pp 2 --pp-layers 6,2", "--pp 2 --tp 1 --dp 1 --expert-layout none --zero 0 --pp-layers 6,2 --recompute-layers 0,0"),
    ("pp2 4,4 rc 2,0", "--pp 2 --pp-layers 4,4 --recompute-layers 2,0", "--pp 2 --tp 1 --dp 1 --expert-layout none --zero 0 --pp-layers 4,4 --recompute-layers 2,0"),
    ("tp2", "--tp 2", "--pp 1 --tp 2 --dp 1 --expert-layout none --zero 0"),
    ("tp2 edp", "--tp 2 --expert-layout edp", "--pp 1 --tp 2 --dp 1 --expert-layout edp --zero 0"),
    ("dp2 ep", "--expert-layout ep", "--pp 1 --tp 1 --dp 2 --expert-layout ep --zero 0"),
]


def run(cmd, env=None):
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"failed: {cmd}\n{r.stdout}\n{r.stderr}")
    return r.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="build/skymoe")
    ap.add_argument("--preset", default="train-moe")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--intra-gbs", type=float, default=0, help="collective bandwidth, GB/s (default: measured)")
    a = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    tmp = tempfile.mkdtemp(prefix="skymoe-plan-")
    tok = os.path.join(tmp, "tok.bin")
    rng = random.Random(0)  # random tokens: the speed does not depend on the text
    with open(tok, "wb") as f:
        f.write(struct.pack("<200000I", *[rng.randrange(8000) for _ in range(200000)]))

    prof = os.path.join(tmp, "profile.json")
    out = run(f"{a.bin} bench train --preset {a.preset} --seq-len {a.seq_len} --batch-size {a.batch_size} "
              f"--steps 2 --threads 1 --json", env)
    open(prof, "w").write(out)
    print("profile (1 process, 1 thread):", out.strip())
    mpirun = "mpirun --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS -np 2"
    if a.intra_gbs <= 0:  # the all-reduce bus bandwidth between two ranks, measured now
        comm = json.loads(run(f"{mpirun} {a.bin} bench comm --sizes-mb 256 --reps 3 --json", env))
        a.intra_gbs = comm["bus_bandwidth"][0]["all_reduce_gbs"]
        print(f"all-reduce bus bandwidth (2 ranks, 256 MB): {a.intra_gbs:.2f} GB/s")
    rows = []
    for name, tflags, pflags in LAYOUTS:
        log = os.path.join(tmp, name.replace(" ", "_").replace(",", "") + ".jsonl")
        run(f"{mpirun} {a.bin} train --config {a.preset} --data {tok} --seq-len {a.seq_len} "
            f"--batch-size {a.batch_size} --steps {a.steps} --threads 1 --quiet --log-jsonl {log} {tflags}", env)
        steps = [json.loads(l) for l in open(log)]
        tokens = a.batch_size * a.seq_len
        measured = statistics.median(tokens / s["tokens_per_s"] for s in steps[1:])
        # The planner's micro-batch: sequences per pipeline micro-batch on one DP rank.
        dp = 2 if "--dp 2" in pflags else 1
        pp = 2 if "--pp 2" in pflags else 1
        local = a.batch_size // dp
        m = 1
        if pp > 1:
            m = max(x for x in range(1, min(local, 2 * pp) + 1) if local % x == 0)
        plan = json.loads(run(f"{a.bin} plan --config {a.preset} --devices 2 --devices-per-node 2 --memory-gb 24 "
                              f"--profile {prof} --intra-gbs {a.intra_gbs} --global-batch {a.batch_size} "
                              f"--micro-batch {local // m} --seq-len {a.seq_len} {pflags} --json"))
        predicted = plan["plan"]["step_s"]
        rows.append((name, measured, predicted))
        print(f"{name:16s} measured {measured:7.3f} s  predicted {predicted:7.3f} s  error {100 * (predicted / measured - 1):+6.1f}%",
              flush=True)
    errs = [abs(p / m - 1) for _, m, p in rows]
    print(f"mean absolute error {100 * statistics.mean(errs):.1f}%, worst {100 * max(errs):.1f}%")


if __name__ == "__main__":
    main()
