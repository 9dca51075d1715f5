#!/usr/bin/env python3
"""Crash test: kill -9 `tally apply` at random moments; nothing acknowledged
may be lost or change.

usage: crash_test.py TALLY SCRATCH_DIR [--kills N] [--ops N] [--seed S]

A generated workload is applied with sync durability, a random pipeline
depth and a random snapshot interval (so that kills also land while a
snapshot or the history index is being written), and the process is killed
with SIGKILL at a random moment: after a random delay (which also hits
start-up and replay), or once it has printed a random number of lines. Every
line a killed process printed was an acknowledged op. After each kill:
  - `tally verify` passes (a torn tail is allowed; corruption is not);
  - the balances at a random seq, read through the snapshots and the
    history index, equal those a replay of the log alone gives;
  - the next run prints every acknowledged key again with the same outcome
    and hold id, marked ,replay.
A last run goes to completion; it must repeat every acknowledged outcome,
and `tally export` must then equal the workload's expected balances.
"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

APPLY_LINE = re.compile(rb"^([^,]+),([a-z_]+)(?:,([0-9]+))?(,replay)?$")
PIPELINES = [1, 4, 16, 64, 256]
SNAPSHOT_EVERY = [1000000, 1009, 3001]  # events; the first is the default
# Errors, not outcomes: nothing was written, so a retry is decided anew.
NOT_DECIDED = {b"invalid", b"idempotency_conflict"}
RUN_SECONDS_MAX = 5.0        # a run is killed by then whatever its target


class Child:
    """A `tally apply` whose stdout lines are collected as they arrive."""

    def __init__(self, tally, data, workload, pipeline, snapshot_every, stderr_path):
        self.stderr = open(stderr_path, "wb")
        self.proc = subprocess.Popen(
            [tally, "apply", "--data", data, "--workload", workload, "--durability", "sync",
             "--pipeline", str(pipeline), "--snapshot-every", str(snapshot_every)],
            stdout=subprocess.PIPE, stderr=self.stderr)
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        # Only complete lines count: a line cut by the kill was never
        # fully printed, so it acknowledges nothing.
        for line in self.proc.stdout:
            if line.endswith(b"\n"):
                self.lines.append(line[:-1])

    def kill_when(self, delay_s=None, lines=None):
        start = time.monotonic()
        while self.proc.poll() is None:
            elapsed = time.monotonic() - start
            if delay_s is not None and elapsed >= delay_s:
                break
            if lines is not None and len(self.lines) >= lines:
                break
            if elapsed >= RUN_SECONDS_MAX:
                break
            time.sleep(0.0005)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return self.finish()

    def finish(self):
        code = self.proc.wait()
        self.reader.join()
        self.stderr.close()
        return code


class Acknowledged:
    """Every acknowledged key with its outcome and hold id."""

    def __init__(self):
        self.outcomes = {}

    def check_run(self, lines, where):
        for line in lines:
            match = APPLY_LINE.match(line)
            assert match, "%s: bad line %r" % (where, line)
            key, outcome, hold, replay = match.groups()
            if outcome in NOT_DECIDED:
                continue
            known = self.outcomes.get(key)
            if known is None:
                self.outcomes[key] = (outcome, hold)
                continue
            assert (outcome, hold) == known, "%s: key %r was acknowledged as %r, now %r" % (
                where, key, known, (outcome, hold))
            assert replay, "%s: acknowledged key %r decided again" % (where, key)


def run(tally, *args):
    proc = subprocess.run([tally, *args], capture_output=True)
    return proc.returncode, proc.stdout, proc.stderr.decode(errors="replace")


def check_data(tally, data, log_only, rng, where):
    """verify passes, and the balances at a random seq read through the
    stores equal those of `log_only`, a data directory that holds only a
    link to data's log (so the same question is answered by replaying it)."""
    code, out, err = run(tally, "verify", "--data", data, "--json")
    assert code == 0, "%s: verify failed after the kill: %s" % (where, err)
    seq = rng.randint(0, json.loads(out)["last_seq"])
    answers = []
    for directory in (data, log_only):
        code, out, err = run(tally, "export", "--data", directory, "--at-seq", str(seq))
        assert code == 0, "%s: export --at-seq %d: %s" % (where, seq, err)
        answers.append(out)
    assert answers[0] == answers[1], (
        "%s: the balances at seq %d read through the stores differ from the log's" % (where, seq))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tally")
    ap.add_argument("scratch")
    ap.add_argument("--kills", type=int, default=30)
    ap.add_argument("--ops", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    a = ap.parse_args()
    rng = random.Random(a.seed)
    print("crash test: seed %d, %d kills, %d ops" % (a.seed, a.kills, a.ops), flush=True)

    os.makedirs(a.scratch, exist_ok=True)
    work = tempfile.mkdtemp(prefix="crash-", dir=a.scratch)
    try:
        campaign(a, rng, work)
    except BaseException:
        print("kept the files of this run in", work, flush=True)
        raise
    shutil.rmtree(work)  # every ledger preallocates a 64 MiB segment
    return 0


def campaign(a, rng, work):
    """The kills and the checks after each; raises AssertionError on a failure."""
    workload = os.path.join(work, "w.csv")
    expect = os.path.join(work, "w.expect")
    data = os.path.join(work, "data")
    log_only = os.path.join(work, "log-only")
    os.makedirs(log_only)
    os.symlink(os.path.join(data, "log"), os.path.join(log_only, "log"))
    code, _, err = run(a.tally, "workload", "--subjects", "300", "--items", "20", "--ops",
                       str(a.ops), "--seed", str(a.seed), "--out", workload, "--expect", expect)
    assert code == 0, err
    with open(workload) as f:
        total_lines = sum(1 for _ in f) - 1

    acked = Acknowledged()
    progress = 0  # the most lines any run printed
    started = time.monotonic()
    for kill in range(a.kills):
        pipeline = rng.choice(PIPELINES)
        child = Child(a.tally, data, workload, pipeline, rng.choice(SNAPSHOT_EVERY),
                      os.path.join(work, "stderr.txt"))
        if rng.random() < 0.2:
            # Early: while the ledger opens and replays, or while the run
            # replays lines decided before.
            delay_s = rng.uniform(0, 0.05)
            how = "after %.3f s" % delay_s
            code = child.kill_when(delay_s=delay_s)
        else:
            # Spread the new lines over the campaign, so that kills keep
            # landing among ops never decided; a shallow pipeline is slow
            # (one fdatasync per few ops), so it gets fewer.
            new_max = max(20, min(2 * total_lines // a.kills, pipeline * 40))
            if progress == 0 or rng.random() < 0.7:
                target = progress + rng.randint(1, new_max)  # into ops never decided
            else:
                target = rng.randint(1, progress)  # while replaying decided ones
            target = min(target, total_lines)
            how = "after %d lines" % target
            code = child.kill_when(lines=target)
        where = "run %d (pipeline %d, killed %s)" % (kill + 1, pipeline, how)
        with open(os.path.join(work, "stderr.txt"), "rb") as f:
            stderr = f.read().decode(errors="replace")
        assert code in (0, -signal.SIGKILL), "%s: exit %d: %s" % (where, code, stderr)
        acked.check_run(child.lines, where)
        progress = max(progress, len(child.lines))
        if not os.path.isdir(data):
            # Killed before the ledger created its directory (a slow start,
            # under sanitizers): nothing can have been acknowledged.
            assert not acked.outcomes, "%s: no data directory, yet acknowledged lines" % where
            continue
        check_data(a.tally, data, log_only, rng, where)
        print("%s: %d lines, %d keys acknowledged so far" % (where, len(child.lines),
                                                           len(acked.outcomes)), flush=True)

    child = Child(a.tally, data, workload, rng.choice(PIPELINES), rng.choice(SNAPSHOT_EVERY),
                  os.path.join(work, "stderr.txt"))
    code = child.finish()
    assert code == 0, "the last run failed with exit %d" % code
    assert len(child.lines) == total_lines, (len(child.lines), total_lines)
    before = set(acked.outcomes)
    acked.check_run(child.lines, "the last run")
    printed = {APPLY_LINE.match(line).group(1) for line in child.lines}
    assert before <= printed, "acknowledged keys missing from the last run"

    check_data(a.tally, data, log_only, rng, "after the last run")
    code, out, err = run(a.tally, "export", "--data", data)
    assert code == 0, err
    with open(expect) as f:
        expected = [line for line in f.read().splitlines() if not line.startswith("#")]
    assert out.decode().splitlines() == expected, "the final state differs from the expected one"
    print("crash test passed: %d kills, %d keys acknowledged before the last run, %.1f s" % (
        a.kills, len(before), time.monotonic() - started))


if __name__ == "__main__":
    sys.exit(main())
