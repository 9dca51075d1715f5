#!/usr/bin/env python3
"""End-to-end checks of the tally command line's contract (docs/cli.md).

usage: cli_test.py TALLY SCRATCH_DIR

Every command is run as a user would run it: a generated workload is applied,
exported, logged, verified, corrupted and verified again. Each check is a
function named test_*; the last line printed is "N passed, N failed".

Each run works in a directory of its own under SCRATCH_DIR, removed when
every check passes and kept (its path printed) when one fails: every ledger
preallocates a 64 MiB segment, so runs left behind would fill the disk.
"""
import fcntl
import json
import os
import pty
import random
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request

TALLY = os.path.abspath(sys.argv[1])
SCRATCH_ROOT = os.path.abspath(sys.argv[2])
SCRATCH = None  # this run's directory under SCRATCH_ROOT, made by main()

COMMANDS = ["apply", "bench", "export", "balance", "list", "history", "log", "verify", "snapshot",
            "workload"]
OUTCOMES = ["ok", "insufficient", "overflow", "hold_unknown", "hold_expired", "hold_finalized",
            "invalid", "idempotency_conflict"]
APPLY_LINE = re.compile(rb"^([^,\n]+),(" + "|".join(OUTCOMES).encode() + rb")(,[0-9]+)?(,replay)?$")
BENCH_LINE = re.compile(r"^ops=\d+ seconds=\d+\.\d{3} ops_per_s=\d+ p50_us=\d+ p99_us=\d+$")
EVENT_TYPES = {"acquire", "consume", "transfer", "hold", "commit", "release", "expire", "batch",
               "rejected"}
HEADER = "op,key,subject,item,qty,to,ttl_ms,hold_key\n"
# Not times for --at-time, --since, --until (docs/cli.md, "Time").
BAD_TIMES = ["yesterday", "2026-03-31", "2026-03-31T23:59:59", "2026-03-31 23:59:59Z",
             "2026-02-29T00:00:00Z", "2026-13-01T00:00:00Z", "2026-03-31T24:00:00Z",
             "2026-03-31T23:59:60Z", "2026-03-31T23:59:59.1234567891Z", "2026-03-31T23:59:59.Z",
             "2026-03-31T23:59:59+2:00", "1.5", "+5", "9999-01-01T00:00:00Z"]
HISTORY_LINE = re.compile(r"^(\d+) (\S+Z) (acquire|consume|transfer|hold|commit|release|expire|batch) "
                          r"key=(\S*) delta_available=([+-]?\d+) delta_held=([+-]?\d+) "
                          r"available=(\d+) held=(\d+)$")
SNAPSHOT_LINE = re.compile(r"^seq=(\d+) time=(\S+Z) size=(\d+) digest=([0-9a-f]{16})$")

# The log's byte layout (docs/log-format.md, log/format.h).
SEGMENT_HEADER_BYTES = 64
FRAME_HEADER_BYTES = 32
FRAME_LENGTH_OFFSET = 8


def tally(*args, expect_exit=None, stdin=None, cwd=None):
    """Runs tally; returns (exit code, stdout bytes, stderr text)."""
    proc = subprocess.run([TALLY, *args], input=stdin, capture_output=True, timeout=300, cwd=cwd)
    stderr = proc.stderr.decode(errors="replace")
    if expect_exit is not None and proc.returncode != expect_exit:
        raise AssertionError("tally %s: exit %d, expected %d\nstderr: %s" %
                             (" ".join(map(str, args)), proc.returncode, expect_exit, stderr))
    return proc.returncode, proc.stdout, stderr


def text(data):
    return data.decode()


def new_dir(name):
    path = tempfile.mkdtemp(prefix=name + "-", dir=SCRATCH)
    return path


def write(path, content):
    with open(path, "w") as f:
        f.write(content)
    return path


def expect_balance_lines(expect_path):
    with open(expect_path) as f:
        return [line for line in f.read().splitlines() if not line.startswith("#")]


def expect_counts(expect_path):
    with open(expect_path) as f:
        last = f.read().splitlines()[-1]
    assert last.startswith("#outcomes "), last
    return dict(word.split("=") for word in last.split()[1:])


def parse_apply_output(out):
    """[(key, outcome, hold or None, replay)] from `tally apply` output."""
    result = []
    for line in out.split(b"\n")[:-1]:
        match = APPLY_LINE.match(line)
        assert match, "bad apply line %r" % line
        hold = int(match.group(3)[1:]) if match.group(3) else None
        result.append((match.group(1), match.group(2).decode(), hold, match.group(4) is not None))
    assert out.endswith(b"\n") or not out
    return result


def segment_frames(path):
    """[(offset, payload length)] of the frames in a segment file."""
    with open(path, "rb") as f:
        data = f.read()
    frames = []
    offset = SEGMENT_HEADER_BYTES
    while offset + FRAME_HEADER_BYTES <= len(data):
        (length,) = struct.unpack_from("<I", data, offset + FRAME_LENGTH_OFFSET)
        if length == 0:
            break
        frames.append((offset, length))
        offset += FRAME_HEADER_BYTES + (length + 7) // 8 * 8
    return frames


def flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x5a]))


def only_segment(data_dir):
    names = sorted(os.listdir(os.path.join(data_dir, "log")))
    assert names, "no segment in " + data_dir
    return os.path.join(data_dir, "log", names[0])


# ---- the shared fixture: one workload, applied once --------------------------

class Fixture:
    def __init__(self):
        self.dir = new_dir("fixture")
        self.csv = os.path.join(self.dir, "w.csv")
        self.expect = os.path.join(self.dir, "w.expect")
        tally("workload", "--subjects", "40", "--items", "6", "--ops", "3000", "--seed", "5",
              "--retry-rate", "0.05", "--out", self.csv, "--expect", self.expect, expect_exit=0)
        self.data = os.path.join(self.dir, "data")
        _, out, _ = tally("apply", "--data", self.data, "--workload", self.csv, expect_exit=0)
        self.first = parse_apply_output(out)
        _, out, _ = tally("apply", "--data", self.data, "--workload", self.csv, expect_exit=0)
        self.second = parse_apply_output(out)
        with open(self.csv) as f:
            self.keys = [line.split(",")[1].encode() for line in f.read().splitlines()[1:]]
        _, out, _ = tally("log", "--data", self.data, "--json", expect_exit=0)
        self.events = [json.loads(line) for line in text(out).splitlines()]

    def copy_data(self, name):
        path = os.path.join(new_dir(name), "data")
        shutil.copytree(self.data, path)
        return path


FIXTURE = None


def fixture():
    global FIXTURE
    if FIXTURE is None:
        FIXTURE = Fixture()
    return FIXTURE


# ---- help and usage ---------------------------------------------------------

def test_help_exits_0_for_every_command():
    code, out, _ = tally("--help", expect_exit=0)
    for command in COMMANDS:
        assert ("  " + command + " ") in text(out), command
    for command in COMMANDS:
        _, out, _ = tally(command, "--help", expect_exit=0)
        assert text(out).startswith("usage: tally " + command), text(out)
        assert "--help" in text(out)
    for word in ("help", "--help", "-h"):
        _, out, _ = tally(word, "apply", expect_exit=0)
        assert text(out).startswith("usage: tally apply")
        for about in ("help", "--help", "-h"):
            _, out, _ = tally(word, about, expect_exit=0)
            assert text(out).startswith("usage: tally COMMAND"), (word, about)
    # Help wins over every other problem on the line, before or after it.
    tally("apply", "--help", "--data", expect_exit=0)
    tally("apply", "--bogus", "--help", expect_exit=0)
    tally("apply", "--data", "x", "--data", "y", "-h", expect_exit=0)


def test_output_that_cannot_be_written_exits_1():
    f = fixture()
    workload = ["workload", "--subjects", "10", "--ops", "100"]
    for args in (["--help"], ["help", "export"], ["apply", "--help"], ["--version"],
                 ["export", "--data", f.data], workload + ["--out", "-"],
                 workload + ["--out", os.path.join(new_dir("full-expect"), "w.csv"),
                             "--expect", "-"]):
        with open("/dev/full", "wb") as full:
            proc = subprocess.run([TALLY, *args], stdout=full, stderr=subprocess.PIPE, timeout=60)
        assert proc.returncode == 1, (args, proc.returncode)
        # Said once, the same for every command.
        assert proc.stderr == b"tally: error writing the output\n", (args, proc.stderr)


def test_closed_standard_streams_are_not_taken_by_the_ledger_s_files():
    f = fixture()
    d = new_dir("closed-stdout")
    # With stdout closed, the next file opened would take its descriptor:
    # the acknowledged lines would go into the ledger's LOCK, and apply
    # would succeed. Closed, it is an output that cannot be written.
    for command in ("apply", "bench"):
        data = os.path.join(d, command)
        proc = subprocess.run("exec %s %s --data %s --workload %s >&-" % (
            TALLY, command, data, f.csv), shell=True, stderr=subprocess.PIPE, timeout=120)
        assert proc.returncode == 1, (command, proc.returncode, proc.stderr)
        assert b"tally: error writing the output" in proc.stderr, (command, proc.stderr)
        with open(os.path.join(data, "LOCK"), "rb") as lock:
            held = lock.read()
        assert b",ok" not in held and b"ops=" not in held, (command, held[:100])
    # Its stdin and stderr closed too, a read still answers.
    proc = subprocess.run("exec %s balance --data %s %s %s <&- 2>&-" % (
        TALLY, f.data, "nobody", "nothing"), shell=True, stdout=subprocess.PIPE, timeout=60)
    assert proc.returncode == 0 and proc.stdout == b"available=0 held=0\n", proc


def test_output_whose_reader_went_away_exits_1():
    f = fixture()
    for args in (["--help"], ["log", "--data", f.data], ["export", "--data", f.data]):
        read_end, write_end = os.pipe()
        os.close(read_end)
        proc = subprocess.run([TALLY, *args], stdout=write_end, stderr=subprocess.PIPE, timeout=60)
        os.close(write_end)
        assert proc.returncode == 1, (args, proc.returncode)
    tally("verify", "--data", f.data, expect_exit=0)


def test_usage_errors_exit_2():
    f = fixture()
    cases = [
        [],
        ["frobnicate"],
        ["serve"],
        ["serve", "--data", f.data, "--io-threads", "0"],
        ["apply", "--workload", f.csv],
        ["apply", "--data", f.data],
        ["apply", "--data", f.data, "--workload", f.csv, "--pipeline", "0"],
        ["apply", "--data", f.data, "--workload", f.csv, "--pipeline", "many"],
        ["apply", "--data", f.data, "--workload", f.csv, "--durability", "eventually"],
        ["apply", "--data", f.data, "--workload", f.csv, "--bogus"],
        ["apply", "--data", f.data, "--workload", f.csv, "--idempotency-window", "-1"],
        ["apply", "--data", f.data, "--workload", f.csv, "--hold-ttl-max", "0"],
        ["apply", "--data", f.data, "--workload", f.csv, "--queue-depth", "0"],
        ["apply", "--data", f.data, "--workload", f.csv, "--segment-bytes", "4096"],
        ["serve", "--data", f.data, "--sync-interval-ms", "0"],
        ["bench", "--connect", "127.0.0.1:1", "--workload", f.csv, "--idempotency-window", "0"],
        ["apply", "--data", f.data, "--workload", f.csv, "extra"],
        ["apply", "--data", f.data, "--workload", os.path.join(SCRATCH, "missing.csv")],
        ["bench", "--data", f.data, "--workload", f.csv, "--expect", os.path.join(SCRATCH, "no")],
        ["bench", "--data", f.data, "--workload", f.csv, "--expect", ""],
        ["workload", "--subjects", "10", "--ops", "10", "--out", "-", "--expect", ""],
        ["serve", "--data", f.data, "--token-file="],
        ["export"],
        ["export", "--data", f.data, "--json=yes"],
        ["balance", "--data", f.data, "s1"],
        ["list", "--data", f.data],
        ["log", "--data", f.data, "--from-seq", "-3"],
        ["log", "--data", f.data, "--to-seq", "1.5"],
        ["verify", "--data"],
        ["verify", "--data", f.data, "--from-seq", "5", "--to-seq", "3"],
        ["verify", "--data", f.data, "--from-seq", "0"],
        ["export", "--data", f.data, "--at-seq", "5", "--at-time", "5"],
        ["export", "--data", f.data, "--at-seq", "-1"],
        ["balance", "--data", f.data, "--at-seq", "x", "s1", "i1"],
        ["list", "--data", f.data, "--at-time", "", "s1"],
        ["balance", "--data", f.data, "", "i1"],
        ["snapshot", "--data", f.data, "--list", "--retain", "3"],
        ["snapshot", "--data", f.data, "--retain", "0"],
        ["history", "--data", f.data, "s1"],
        ["history", "--data", f.data, "--rebuild", "s1", "i1"],
        ["history", "--data", f.data, "--rebuild", "--from-seq", "3"],
        ["history", "--data", f.data, "s1", "i1", "--to-seq", "0"],
        ["log", "--data", f.data, "--type", "hold,steal"],
        ["log", "--data", f.data, "--type", ""],
        ["log", "--data", f.data, "--since", "2026-03-31"],
        ["log", "--data", f.data, "--subject", ""],
        ["log", "--data", f.data, "--item", ""],
        ["log", "--data", f.data, "--key", ""],
        ["workload", "--subjects", "10", "--ops", "10"],
        ["workload", "--subjects", "x", "--ops", "10", "--out", "-"],
        ["workload", "--subjects", "10", "--ops", "10", "--out", "-", "--retry-rate", "2"],
        ["workload", "--subjects", "10", "--ops", "10", "--out", "-", "--ttl-ms", "0"],
        ["workload", "--subjects", "10", "--ops", "10", "--out", "-", "--expect", "-"],
        ["workload", "--subjects", "10", "--ops", "10", "--out", os.path.join(f.dir, "same"),
         "--expect", os.path.join(f.dir, ".", "same")],
        ["help", "frobnicate"],
        ["help", "apply", "extra"],
        ["--version", "extra"],
        ["--help", "apply", "extra"],
        ["export", "--data", ""],
        ["apply", "--data=", "--workload", f.csv],
        ["log", "--data", f.data, "--from-seq", "5", "--to-seq", "3"],
        ["history", "--data", f.data, "s1", "i1", "--from-seq", "5", "--to-seq", "3"],
        ["log", "--data", f.data, "--since", "2026-01-02T00:00:00Z", "--until", "2026-01-01T00:00:00Z"],
    ]
    for bad_time in BAD_TIMES:
        cases.append(["export", "--data", f.data, "--at-time", bad_time])
        cases.append(["log", "--data", f.data, "--until", bad_time])
    for args in cases:
        code, out, err = tally(*args)
        assert code == 2, "%s: exit %d, stderr %s" % (args, code, err)
        assert err.startswith("tally: "), "%s: stderr %r" % (args, err)
        assert out == b"", args
    # A flag that swallowed the next word is named, not the positionals.
    _, _, err = tally("balance", "--data", f.data, "--at-seq", "s1", "i1", expect_exit=2)
    assert err.startswith("tally: --at-seq: 's1' is not an integer"), err
    # A time well formed but past an int64 of ns is named as out of range.
    for far in ("9223372036854775808", "9999-01-01T00:00:00Z"):
        _, _, err = tally("export", "--data", f.data, "--at-time", far, expect_exit=2)
        assert "is outside the times a ledger can hold, 1677-09-21T" in err, err


def test_serve_refuses_its_command_line_before_touching_the_data_directory():
    data = os.path.join(new_dir("serve-refused"), "data")
    for listen in (["--listen", "0.0.0.0:0"], ["--http", "0.0.0.0:0"], ["--listen", "nowhere:1"],
                   ["--listen", "[::1"], ["--http", "[]:7421"], ["--segment-bytes", "100004"]):
        code, _, err = tally("serve", "--data", data, *listen)
        assert code == 2 and err.startswith("tally: "), (listen, code, err)
        assert not os.path.exists(data), listen
    _, _, err = tally("serve", "--data", data, "--http", "0.0.0.0:0", expect_exit=2)
    assert "requires a token (--token-file)" in err, err
    token_dir = new_dir("token-dir")
    _, _, err = tally("serve", "--data", data, "--http", "0.0.0.0:0", "--token-file", token_dir,
                      expect_exit=2)
    assert "cannot read the token file %s: Is a directory" % token_dir in err, err
    # Read no further than the limit: a device given by mistake is refused.
    _, _, err = tally("serve", "--data", data, "--http", "0.0.0.0:0", "--token-file", "/dev/zero",
                      expect_exit=2)
    assert "the token file /dev/zero holds more than 4096 bytes" in err, err
    empty = write(os.path.join(token_dir, "empty"), " \n")
    _, _, err = tally("serve", "--data", data, "--http", "0.0.0.0:0", "--token-file", empty,
                      expect_exit=2)
    assert "is empty" in err, err
    # A port already in use fails the start before the data directory is made.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = "127.0.0.1:%d" % taken.getsockname()[1]
        for listen in (["--listen", port, "--http", "127.0.0.1:0"],
                       ["--listen", "127.0.0.1:0", "--http", port]):
            code, _, err = tally("serve", "--data", data, *listen)
            assert code == 1 and "in use" in err, (listen, code, err)
            assert not os.path.exists(data), listen


def test_malformed_csv_names_the_line():
    d = new_dir("malformed")
    cases = {
        "op,key\n": "line 1",
        HEADER + "acquire,k1,s1,i1,5,,,\nacquire,k2,s1,i1,5,,\n": "line 3",
        HEADER + "acquire,k1,s1,i1,lots,,,\n": "line 2",
        HEADER + "steal,k1,s1,i1,5,,,\n": "line 2",
        HEADER + "commit,k1,,,5,,,h1\n": "line 2",
        HEADER + "acquire,k1,s1,i1,,,,\n": "line 2",
        HEADER + "hold,k1,s1,i1,5,,soon,\n": "line 2",
        HEADER + "acquire,k1,s1,i1,5,,,\n\nacquire,k2,s1,i1,5,,,\n": "line 3",
    }
    for content, where in cases.items():
        csv = write(os.path.join(d, "bad.csv"), content)
        for command in ("apply", "bench"):
            code, out, err = tally(command, "--data", os.path.join(d, "data"), "--workload", csv)
            assert code == 2, (content, code, err)
            assert where in err and err.startswith("tally: "), (content, err)
            assert out == b""
    # Blank lines at the end are no ops.
    csv = write(os.path.join(d, "trailing.csv"), HEADER + "acquire,k1,s1,i1,5,,,\n\n\r\n")
    _, out, _ = tally("apply", "--data", os.path.join(d, "trailing"), "--workload", csv,
                      expect_exit=0)
    assert out == b"k1,ok\n", out


# ---- apply, export, bench -----------------------------------------------------

def test_apply_prints_one_line_per_op_in_file_order():
    f = fixture()
    assert [key for key, _, _, _ in f.first] == f.keys
    for key, outcome, hold, replay in f.first:
        if hold is not None:
            assert outcome == "ok", (key, outcome)
    holds = [hold for _, _, hold, replay in f.first if hold is not None and not replay]
    assert holds, "the workload made no hold"
    assert len(set(holds)) == len(holds), "hold ids repeat"


def test_apply_outcomes_match_the_expect_counts():
    f = fixture()
    counts = {"ok": 0, "insufficient": 0, "hold_unknown": 0, "retry": 0}
    for _, outcome, _, replay in f.first:
        if replay:
            counts["retry"] += 1
        elif outcome.startswith("hold_"):
            counts["hold_unknown"] += 1
        else:
            counts[outcome] += 1
    assert {k: str(v) for k, v in counts.items()} == expect_counts(f.expect), counts


def test_apply_twice_replays_every_outcome():
    f = fixture()
    assert len(f.second) == len(f.first)
    for (key, outcome, hold, _), (key2, outcome2, hold2, replay2) in zip(f.first, f.second):
        assert (key, outcome, hold) == (key2, outcome2, hold2), (key, outcome, hold, outcome2, hold2)
        assert replay2, key


def test_export_equals_the_expected_state():
    f = fixture()
    _, out, _ = tally("export", "--data", f.data, expect_exit=0)
    assert text(out).splitlines() == expect_balance_lines(f.expect)
    _, out, _ = tally("export", "--data", f.data, "--json", expect_exit=0)
    rows = [json.loads(line) for line in text(out).splitlines()]
    assert ["%s,%s,%d,%d" % (r["subject"], r["item"], r["available"], r["held"]) for r in rows] == \
        expect_balance_lines(f.expect)


def test_pipeline_depth_and_durability_do_not_change_outcomes():
    f = fixture()
    d = new_dir("pipeline")
    _, out, _ = tally("apply", "--data", os.path.join(d, "p1"), "--workload", f.csv,
                      "--pipeline", "1", "--durability", "none", expect_exit=0)
    assert parse_apply_output(out) == f.first
    _, out, _ = tally("apply", "--data", os.path.join(d, "p4k"), "--workload", f.csv,
                      "--pipeline", "4096", "--durability", "async", expect_exit=0)
    assert parse_apply_output(out) == f.first


def test_bench_checks_the_expect_file():
    f = fixture()
    d = new_dir("bench")
    _, out, err = tally("bench", "--data", os.path.join(d, "ok"), "--workload", f.csv,
                        "--expect", f.expect, expect_exit=0)
    assert BENCH_LINE.match(text(out).strip()), text(out)
    assert text(out).count("\n") == 1
    assert text(out).startswith("ops=%d " % len(f.keys))
    assert "note:" not in err, err
    # Again on the same data: every key was decided before, which the
    # expect file still matches, but the figures are of replays.
    _, out, err = tally("bench", "--data", os.path.join(d, "ok"), "--workload", f.csv,
                        "--expect", f.expect, expect_exit=0)
    assert BENCH_LINE.match(text(out).strip()), text(out)
    assert "note: %d of the %d ops named keys the ledger had decided before" % (
        len(f.keys), len(f.keys)) in err, err

    lines = expect_balance_lines(f.expect)
    subject, item, available, held = lines[0].split(",")
    altered = [",".join([subject, item, str(int(available) + 1), held])] + lines[1:]
    with open(f.expect) as src:
        outcomes = src.read().splitlines()[-1]
    bad_state = write(os.path.join(d, "bad_state.expect"), "\n".join(altered + [outcomes]) + "\n")
    code, out, err = tally("bench", "--data", os.path.join(d, "bad1"), "--workload", f.csv,
                           "--expect", bad_state)
    assert code == 1, (code, err)
    assert BENCH_LINE.match(text(out).strip())
    assert "%s,%s" % (subject, item) in err, err

    counts = expect_counts(f.expect)
    counts["ok"] = str(int(counts["ok"]) - 1)
    bad_counts = write(os.path.join(d, "bad_counts.expect"), "\n".join(lines) + "\n#outcomes " +
                       " ".join("%s=%s" % kv for kv in counts.items()) + "\n")
    code, _, err = tally("bench", "--data", os.path.join(d, "bad2"), "--workload", f.csv,
                         "--expect", bad_counts)
    assert code == 1 and "outcomes" in err, (code, err)
    # Only the first ten differences are shown, and the counts are one of them
    # however many balances differ.
    all_altered = [",".join(line.split(",")[:2] + ["%d" % (int(line.split(",")[2]) + 1),
                                                   line.split(",")[3]]) for line in lines]
    assert len(all_altered) > 10
    bad_both = write(os.path.join(d, "bad_both.expect"), "\n".join(all_altered) + "\n#outcomes " +
                     " ".join("%s=%s" % kv for kv in counts.items()) + "\n")
    code, _, err = tally("bench", "--data", os.path.join(d, "bad3"), "--workload", f.csv,
                         "--expect", bad_both)
    assert code == 1, (code, err)
    assert "(%d differences)" % (len(lines) + 1) in err, err
    assert "tally:   outcomes: expected " in err, err

    # A line of zeros names a pair with nothing, as no line does.
    zeros = write(os.path.join(d, "zeros.expect"), "\n".join(
        ["nobody,nothing,0,0"] + lines + [outcomes]) + "\n")
    tally("bench", "--data", os.path.join(d, "zeros"), "--workload", f.csv, "--expect", zeros,
          expect_exit=0)

    # Amounts are numbers: leading zeros are no difference.
    padded = write(os.path.join(d, "padded.expect"), "\n".join(
        ["%s,%s,0%s,00%s" % tuple(line.split(",")) for line in lines] + [outcomes]) + "\n")
    tally("bench", "--data", os.path.join(d, "padded"), "--workload", f.csv, "--expect", padded,
          expect_exit=0)


def test_bench_reads_expect_names_unquoted():
    d = new_dir("bench-quote")
    # A double quote is a byte of a workload's name, and of an expect
    # file's: export quotes the name, the expect file does not.
    csv = write(os.path.join(d, "w.csv"), HEADER + 'acquire,k1,s1,a"b,5,,,\n')
    outcomes = "#outcomes ok=1 insufficient=0 hold_unknown=0 retry=0\n"
    plain = write(os.path.join(d, "plain.expect"), 's1,a"b,5,0\n' + outcomes)
    data = os.path.join(d, "data")
    tally("bench", "--data", data, "--workload", csv, "--expect", plain, expect_exit=0)
    _, out, _ = tally("export", "--data", data, expect_exit=0)
    assert text(out) == 's1,"a""b",5,0\n', out
    # Read unquoted, export's line names another item.
    quoted = write(os.path.join(d, "quoted.expect"), 's1,"a""b",5,0\n' + outcomes)
    code, _, err = tally("bench", "--data", os.path.join(d, "again"), "--workload", csv,
                         "--expect", quoted)
    assert code == 1, (code, err)
    assert 's1,"a""b": expected nothing, got 5,0' in err, err
    assert 's1,"""a""""b""": expected 5,0, got nothing' in err, err


def test_bench_refuses_a_malformed_expect_file_before_it_runs():
    f = fixture()
    d = new_dir("bench-expect")
    lines = expect_balance_lines(f.expect)
    with open(f.expect) as src:
        outcomes = src.read().splitlines()[-1]
    # Five fields: no name holds a comma.
    expect = write(os.path.join(d, "five_fields.expect"),
                   "\n".join(lines[:1] + ["a,x,10,0,5"] + lines[1:] + [outcomes]))
    data = os.path.join(d, "five_fields")
    code, out, err = tally("bench", "--data", data, "--workload", f.csv, "--expect", expect)
    assert code == 2 and "line 2: expected" in err, (code, err)
    assert "see 'tally bench --help'" in err, err
    assert out == b"" and not os.path.exists(data)
    # No line at all: a generator that failed to write it, not an expectation.
    empty = write(os.path.join(d, "empty.expect"), "")
    code, out, err = tally("bench", "--data", data, "--workload", f.csv, "--expect", empty)
    assert code == 2 and "line 1: no balance line and no '#outcomes ...' line" in err, (code, err)
    assert out == b"" and not os.path.exists(data)


def test_bench_reports_an_expect_file_no_state_matches_as_differences():
    f = fixture()
    d = new_dir("bench-expect-wrong")
    lines = expect_balance_lines(f.expect)
    subject, item, available, held = lines[0].split(",")
    with open(f.expect) as src:
        outcomes = src.read().splitlines()[-1]
    # A file cut short, a line added after the counts, a pair listed twice
    # (even once rightly), the counts twice: each is a difference, whatever
    # the ledger does, so the bench runs and exits 1.
    cases = {
        "cut_short": (lines[:-1], "outcomes: expected a '#outcomes ...' line, the file has none"),
        "added": (lines + [outcomes, "nobody,nothing,1,0"],
                  "nobody,nothing: expected 1,0, got nothing"),
        "repeated": (lines[:1] + [",".join([subject, item, str(int(available) + 1), held])] +
                     lines[1:] +
                     [outcomes],
                     "line 2: %s,%s is listed twice (first on line 1)" % (subject, item)),
        "counts_twice": (lines + [outcomes, outcomes],
                         "line %d: a second '#outcomes ...' line (the first on line %d)" %
                         (len(lines) + 2, len(lines) + 1)),
    }
    for name, (expect_lines, message) in cases.items():
        expect = write(os.path.join(d, name + ".expect"), "\n".join(expect_lines) + "\n")
        code, out, err = tally("bench", "--data", os.path.join(d, name), "--workload", f.csv,
                               "--expect", expect)
        assert code == 1 and message in err, (name, code, err)
        assert BENCH_LINE.match(text(out).strip()), (name, out)
    # The counts may stand anywhere: order is no difference.
    first = write(os.path.join(d, "counts_first.expect"), "\n".join([outcomes] + lines) + "\n")
    tally("bench", "--data", os.path.join(d, "counts_first"), "--workload", f.csv,
          "--expect", first, expect_exit=0)


def test_bench_times_point_in_time_reads():
    f = fixture()
    d = new_dir("bench_pit")
    _, out, err = tally("bench", "--data", os.path.join(d, "data"), "--workload", f.csv,
                        "--expect", f.expect, "--point-in-time", "500", expect_exit=0)
    lines = text(out).splitlines()
    assert len(lines) == 2, out
    assert BENCH_LINE.match(lines[0]), lines[0]
    assert re.fullmatch(r"queries=500 seconds=[0-9.]+ queries_per_s=[0-9]+ p50_us=[0-9]+ p99_us=[0-9]+",
                        lines[1]), lines[1]
    # Without a history projection there is nothing to wait for (it once
    # waited 10 minutes, past tally()'s timeout): the reads replay.
    _, out, _ = tally("bench", "--data", os.path.join(d, "off"), "--workload", f.csv,
                      "--history", "off", "--point-in-time", "20", expect_exit=0)
    assert text(out).splitlines()[1].startswith("queries=20 "), out
    # Only pairs a read may name are asked: a line refused for its name named none.
    refused = write(os.path.join(d, "refused.csv"),
                    "op,key,subject,item,qty,to,ttl_ms,hold_key\nacquire,n1,s,i,5,,,\n"
                    "acquire,n2,%s,i,5,,,\n" % ("y" * 256))
    _, out, _ = tally("bench", "--data", os.path.join(d, "refused"), "--workload", refused,
                      "--point-in-time", "200", expect_exit=0)
    assert text(out).splitlines()[1].startswith("queries=200 "), out
    tally("bench", "--data", os.path.join(d, "bad"), "--workload", f.csv, "--point-in-time", "-1",
          expect_exit=2)
    tally("bench", "--connect", "127.0.0.1:1", "--workload", f.csv, "--point-in-time", "5",
          expect_exit=2)


def test_bench_rate_paces_the_ops():
    f = fixture()
    d = new_dir("bench_rate")
    # The last op is due (ops - 1) / rate seconds after the first, so the
    # run lasts at least that long, and the answers are still checked.
    rate = 4 * len(f.keys)
    _, out, _ = tally("bench", "--data", os.path.join(d, "data"), "--workload", f.csv,
                      "--expect", f.expect, "--durability", "none", "--rate", str(rate),
                      expect_exit=0)
    line = text(out).strip()
    assert BENCH_LINE.match(line), line
    seconds = float(re.search(r"seconds=([0-9.]+)", line).group(1))
    assert seconds >= (len(f.keys) - 1) / rate - 0.001, line
    for bad in ("0", "-5", "x"):
        tally("bench", "--data", os.path.join(d, "bad"), "--workload", f.csv, "--rate", bad,
              expect_exit=2)


def test_bench_progress_writes_a_line_a_second_from_the_start_of_the_run():
    f = fixture()
    d = new_dir("bench_progress")
    # At 1,000 ops/s the run takes about 3 s: a line about each second,
    # the first near op 1,000 (a driver behind its schedule submits later
    # ops by then, not earlier ones).
    assert 3000 <= len(f.keys) < 3500
    _, _, err = tally("bench", "--data", os.path.join(d, "data"), "--workload", f.csv,
                      "--durability", "none", "--rate", "1000", "--progress", expect_exit=0)
    pattern = r"tally: ([0-9]+) of %d ops submitted, [0-9]+ completed" % len(f.keys)
    lines = err.strip().splitlines()
    assert 2 <= len(lines) <= 4, err
    submitted = [int(re.fullmatch(pattern, line).group(1)) for line in lines]
    assert 1000 <= submitted[0] < 1700, err
    assert submitted == sorted(submitted), err


def test_outcomes_of_a_handmade_workload():
    d = new_dir("handmade")
    csv = write(os.path.join(d, "w.csv"), HEADER + "".join([
        "acquire,a1,alice,gold,100,,,\n",
        "hold,h1,alice,gold,30,,60000,\n",
        "hold,h2,alice,gold,500,,60000,\n",      # insufficient
        "commit,c1,,,,,,h1\n",
        "commit,c2,,,,,,h1\n",                   # the hold is finalized
        "release,r1,,,,,,h2\n",                  # its hold op failed
        "release,r2,,,,,,nothing\n",             # never a key
        "release,r3,,,,,,a1\n",                  # a key, not a hold
        "acquire,a1,alice,gold,100,,,\n",        # a retry
        "acquire,a1,alice,gold,7,,,\n",          # same key, other request
        "acquire,z1,alice,gold,0,,,\n",          # qty 0
        "transfer,t1,alice,gold,5,alice,,\n",    # to itself
        "hold,h3,alice,gold,5,,0,\n",            # ttl out of range
        "hold,h1,alice,gold,30,,60000,\n",       # a retry of a hold
        "transfer,t2,alice,gold,20,bob,,\n",
        "consume,x1,bob,gold,21,,,\n",
        "acquire,,alice,gold,5,,,\n",            # no key
        "acquire,e1,,gold,5,,,\n",              # no subject
        "commit,e2,,,,,,\n",                    # names no hold
    ]))
    _, out, _ = tally("apply", "--data", os.path.join(d, "data"), "--workload", csv, expect_exit=0)
    lines = text(out).splitlines()
    assert lines[0] == "a1,ok"
    assert re.fullmatch(r"h1,ok,(\d+)", lines[1]), lines[1]
    hold_id = lines[1].split(",")[2]
    assert lines[2:] == [
        "h2,insufficient",
        "c1,ok",
        "c2,hold_finalized",
        "r1,hold_unknown",
        "r2,hold_unknown",
        "r3,hold_unknown",
        "a1,ok,replay",
        "a1,idempotency_conflict",
        "z1,invalid",
        "t1,invalid",
        "h3,invalid",
        "h1,ok,%s,replay" % hold_id,
        "t2,ok",
        "x1,insufficient",
        ",invalid",
        "e1,invalid",
        "e2,hold_unknown",
    ], lines
    _, out, _ = tally("export", "--data", os.path.join(d, "data"), expect_exit=0)
    assert text(out) == "alice,gold,50,0\nbob,gold,20,0\n", text(out)


# ---- balance, list ------------------------------------------------------------

def test_balance_and_list_agree_with_export():
    f = fixture()
    lines = expect_balance_lines(f.expect)
    subject = lines[len(lines) // 2].split(",")[0]
    mine = [line for line in lines if line.split(",")[0] == subject]
    _, out, _ = tally("list", "--data", f.data, subject, expect_exit=0)
    assert text(out).splitlines() == [line.split(",", 1)[1] for line in mine]
    _, out, _ = tally("list", "--data", f.data, "--json", subject, expect_exit=0)
    rows = [json.loads(line) for line in text(out).splitlines()]
    assert ["%s,%s,%d,%d" % (r["subject"], r["item"], r["available"], r["held"]) for r in rows] == mine
    for line in mine:
        _, item, available, held = line.split(",")
        _, out, _ = tally("balance", "--data", f.data, subject, item, expect_exit=0)
        assert text(out) == "available=%s held=%s\n" % (available, held)
        _, out, _ = tally("balance", "--data", f.data, "--json", subject, item, expect_exit=0)
        assert json.loads(text(out)) == {"subject": subject, "item": item,
                                         "available": int(available), "held": int(held)}
    _, out, _ = tally("balance", "--data", f.data, "nobody", "nothing", expect_exit=0)
    assert text(out) == "available=0 held=0\n"
    _, out, _ = tally("list", "--data", f.data, "nobody", expect_exit=0)
    assert out == b""


def test_read_commands_need_an_existing_data_dir():
    missing = os.path.join(SCRATCH, "no-such-dir")
    a_file = write(os.path.join(SCRATCH, "a-file"), "not a data directory\n")
    for args in (["export"], ["balance", "a", "b"], ["list", "a"], ["log"], ["verify"],
                 ["export", "--at-seq", "1"], ["history", "a", "b"], ["history", "--rebuild"],
                 ["snapshot"], ["snapshot", "--list"], ["backup", "--out", missing + "-copy"]):
        for data in (missing, a_file):
            code, out, err = tally(args[0], "--data", data, *args[1:])
            assert code == 1 and err.startswith("tally: ") and data in err, (args, code, err)
            assert "no data directory" in err, (args, err)


def test_read_commands_refuse_a_directory_that_holds_no_ledger():
    other = new_dir("not-a-ledger")
    write(os.path.join(other, "readme"), "hi\n")
    for data in (other, os.path.join(fixture().data, "log")):
        before = sorted(os.listdir(data))
        for args in (["export"], ["balance", "a", "b"], ["list", "a"], ["log"], ["verify"],
                     ["export", "--at-seq", "1"], ["history", "a", "b"], ["history", "--rebuild"],
                     ["snapshot"], ["snapshot", "--list"],
                     ["backup", "--out", os.path.join(SCRATCH, "no-ledger-copy")]):
            code, out, err = tally(args[0], "--data", data, *args[1:])
            assert code == 1 and out == b"" and err.startswith("tally: ") and \
                "no ledger at %s: it has no log directory" % data in err, (args, code, err)
        assert sorted(os.listdir(data)) == before, (data, os.listdir(data))


def test_a_directory_of_ledger_files_without_a_log_is_a_ledger_whose_log_is_lost():
    # What a ledger makes (LOCK, its stores) is a data directory, log or not:
    # a rebuild of an empty one leaves LOCK and history/, and verify says so.
    # Hidden files aside: a .gitkeep makes no other directory of it.
    data = new_dir("rebuilt-empty")
    os.mkdir(os.path.join(data, "lost+found"))
    write(os.path.join(data, ".gitkeep"), "")
    tally("history", "--data", data, "--rebuild", expect_exit=0)
    assert sorted(os.listdir(data)) == [".gitkeep", "LOCK", "history", "lost+found"], \
        os.listdir(data)
    _, out, _ = tally("verify", "--data", data, "--json", expect_exit=0)
    assert json.loads(text(out))["ok"] is True, out
    tally("export", "--data", data, expect_exit=0)
    # A ledger whose log is gone: verify reports the events lost, not "no ledger".
    lost = fixture().copy_data("log-lost")
    shutil.rmtree(os.path.join(lost, "log"))
    code, out, err = tally("verify", "--data", lost)
    assert code == 1 and "no ledger" not in err and "lost" in err, (code, err)


def test_snapshot_of_an_empty_data_dir_fails_and_makes_nothing():
    data = new_dir("empty")
    code, out, err = tally("snapshot", "--data", data)
    assert code == 1 and out == b"" and "nothing to snapshot" in err, (code, err)
    assert os.listdir(data) == [], os.listdir(data)


def test_verify_of_an_empty_data_dir_passes_but_not_from_a_seq():
    data = new_dir("empty-verify")
    _, out, _ = tally("verify", "--data", data, "--json", expect_exit=0)
    assert json.loads(text(out))["ok"] is True, out
    # Seq 1 is not there to check, so a range that starts there checks nothing.
    code, out, err = tally("verify", "--data", data, "--from-seq", "1")
    assert code == 1 and out == b"" and \
        "--from-seq 1 is past the end of the log (last seq 0)" in err, (code, err)
    assert os.listdir(data) == [], os.listdir(data)


def test_backup_copies_a_data_dir_that_opens_and_verifies():
    f = fixture()
    data = f.copy_data("backup")
    tally("snapshot", "--data", data, expect_exit=0)
    out_dir = os.path.join(new_dir("backup-out"), "copy")
    _, out, err = tally("backup", "--data", data, "--out", out_dir, "--json", expect_exit=0)
    assert err == "", err
    report = json.loads(text(out))
    last = len(f.events)
    assert report["last_seq"] == last and report["segments"] >= 1, report
    assert report["snapshots"] == 1 and report["history_seq"] == last, report
    assert report["left_out"] == [] and report["log_copies"] == 1, report
    assert report["log_bytes"] == sum(os.path.getsize(os.path.join(out_dir, "log", name))
                                      for name in os.listdir(os.path.join(out_dir, "log")))
    _, verified, _ = tally("verify", "--data", out_dir, "--json", expect_exit=0)
    verified = json.loads(text(verified))
    assert verified["ok"] and verified["torn_tail"] is None, verified
    assert [s["status"] for s in verified["snapshots"]] == ["ok"], verified
    assert verified["history"]["standing"] == "usable", verified
    _, mine, _ = tally("export", "--data", data, expect_exit=0)
    _, theirs, _ = tally("export", "--data", out_dir, expect_exit=0)
    assert mine == theirs
    # Text form; a destination that exists is refused.
    code, out, err = tally("backup", "--data", data, "--out", out_dir)
    assert code == 1 and out == b"" and "exists" in err, (code, err)
    other = os.path.join(os.path.dirname(out_dir), "other")
    _, out, _ = tally("backup", "--data", data, "--out", other, expect_exit=0)
    assert re.fullmatch(r"last_seq=%d segments=\d+ log_bytes=\d+ log_copies=1 snapshots=1 "
                        r"history_seq=%d\n" % (last, last), text(out)), text(out)
    code, _, err = tally("backup", "--data", data)
    assert code == 2 and "--out" in err, (code, err)
    # No store at all: both are `none`.
    bare = f.copy_data("backup-bare")
    shutil.rmtree(os.path.join(bare, "snapshots"))
    shutil.rmtree(os.path.join(bare, "history"))
    _, out, _ = tally("backup", "--data", bare, "--out", bare + "-copy", expect_exit=0)
    assert text(out).endswith(" snapshots=none history_seq=none\n"), text(out)
    # A damaged store is left out, with a warning.
    with open(os.path.join(data, "history", "data.mdb"), "r+b") as damaged:
        damaged.write(b"x" * 8192)
    _, out, err = tally("backup", "--data", data, "--out", data + "-copy", "--json", expect_exit=0)
    report = json.loads(text(out))
    assert report["history_seq"] is None and len(report["left_out"]) == 1, report
    assert report["left_out"][0].startswith("history: corrupt: "), report
    assert err == "tally: left out of the backup (made from the log at open): %s\n" \
        % report["left_out"][0], err


# ---- log -------------------------------------------------------------------------

def test_log_json_lists_every_event():
    f = fixture()
    events = f.events
    by_seq = {e["seq"]: e for e in events}
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    times = [e["time"] for e in events]
    assert times == sorted(times)
    for e in events:
        assert e["type"] in EVENT_TYPES, e
        assert isinstance(e["time_rfc3339"], str) and e["time_rfc3339"].endswith("Z")
        assert re.fullmatch(r"[0-9a-f]{16}", e["fingerprint"]), e
        if e["type"] == "rejected":
            assert e["reason"] in OUTCOMES and isinstance(e["request"], list), e
        elif e["type"] == "transfer":
            assert {"subject", "to", "item", "qty"} <= e.keys(), e
        elif e["type"] == "hold":
            assert e["hold"] == e["seq"] and e["ttl_ns"] == 3600000 * 1000000, e
        elif e["type"] in ("commit", "release"):
            # apply names holds by key; the event also has the resolved id.
            assert {"hold", "hold_key", "subject", "item", "qty"} <= e.keys(), e
            assert by_seq[e["hold"]]["key"] == e["hold_key"], e
    # Every decided key has exactly one event; replays wrote nothing.
    keys = [e["key"] for e in events if e["key"]]
    assert len(keys) == len(set(keys))
    assert set(keys) == {key.decode() for key, _, _, _ in f.first}
    # Hold ids printed by apply are the seqs of hold events.
    for key, outcome, hold, _ in f.first:
        if hold is not None:
            assert by_seq[hold]["type"] == "hold" and by_seq[hold]["key"] == key.decode()


def test_log_text_has_one_line_per_event():
    f = fixture()
    _, out, _ = tally("log", "--data", f.data, expect_exit=0)
    lines = text(out).splitlines()
    assert len(lines) == len(f.events)
    for line, event in zip(lines, f.events):
        seq, time, kind = line.split(" ")[:3]
        assert int(seq) == event["seq"] and time == event["time_rfc3339"] and kind == event["type"]


def test_log_filters():
    f = fixture()

    def log(*args):
        _, out, _ = tally("log", "--data", f.data, "--json", *args, expect_exit=0)
        return [json.loads(line) for line in text(out).splitlines()]

    def ops_of(event):
        if event["type"] == "batch":
            return event["ops"]
        if event["type"] == "rejected":
            return event["request"]
        return [event]

    assert [e["seq"] for e in log("--from-seq", "10", "--to-seq", "19")] == list(range(10, 20))
    assert log("--from-seq", str(len(f.events) + 1)) == []
    key = f.events[len(f.events) // 2]["key"]
    assert [e["key"] for e in log("--key", key)] == [key]
    subject = "s3"
    by_subject = log("--subject", subject)
    assert by_subject and all(any(subject in (op.get("subject"), op.get("to")) for op in ops_of(e))
                              for e in by_subject)
    expected = [e["seq"] for e in f.events
                if any(subject in (op.get("subject"), op.get("to")) for op in ops_of(e))]
    assert [e["seq"] for e in by_subject] == expected
    by_both = log("--subject", subject, "--item", "i2")
    assert all(any(op.get("item") == "i2" for op in ops_of(e)) for e in by_both)
    assert {e["seq"] for e in by_both} <= set(expected)


def test_json_escapes_arbitrary_bytes():
    d = new_dir("escape")
    names = [b'q"uote', b"back\\slash", b"tab\there", b"caf\xc3\xa9", b"raw\xffbyte"]
    content = HEADER.encode()
    for index, name in enumerate(names):
        content += b"acquire,key-%s,%s,item,%d,,,\n" % (name, name, index + 1)
    csv = os.path.join(d, "w.csv")
    with open(csv, "wb") as out:
        out.write(content)
    data = os.path.join(d, "data")
    _, out, _ = tally("apply", "--data", data, "--workload", csv, expect_exit=0)
    assert [key for key, _, _, _ in parse_apply_output(out)] == [b"key-" + n for n in names]
    _, out, _ = tally("log", "--data", data, "--json", expect_exit=0)
    events = [json.loads(line) for line in text(out).splitlines()]
    # Valid UTF-8 comes back as is; a stray byte comes back as the code point
    # of its value.
    decoded = ["q\"uote", "back\\slash", "tab\there", "caf\u00e9", "raw\u00ffbyte"]
    assert [e["subject"] for e in events] == decoded, [e["subject"] for e in events]
    _, out, _ = tally("log", "--data", data, "--json", "--key", b"key-raw\xffbyte", expect_exit=0)
    assert len(out.splitlines()) == 1
    _, out, _ = tally("export", "--data", data, "--json", expect_exit=0)
    assert len([json.loads(line) for line in text(out).splitlines()]) == len(names)
    _, out, _ = tally("log", "--data", data, expect_exit=0)
    assert len(out.splitlines()) == len(names)  # text escaping keeps one line per event


# ---- verify and corruption ------------------------------------------------------------

def test_verify_passes_and_reports():
    f = fixture()
    _, out, _ = tally("verify", "--data", f.data, expect_exit=0)
    assert "events: %d" % len(f.events) in text(out), text(out)
    _, out, _ = tally("verify", "--data", f.data, "--json", expect_exit=0)
    report = json.loads(text(out))
    assert report["ok"] is True
    assert report["events"] == len(f.events) and report["last_seq"] == len(f.events)
    assert report["segments"] == 1 and report["torn_tail"] is None
    assert re.fullmatch(r"[0-9a-f]{16}", report["digest"])
    assert report["balances"] == len(expect_balance_lines(f.expect))
    assert report["keys"] == len(set(f.keys))


def with_stderr_on_a_terminal(*args):
    """Runs tally with stderr on a pseudo-terminal (stdout on a pipe);
    returns (exit code, stdout bytes, what the terminal got, seconds)."""
    master, terminal = pty.openpty()
    started = time.monotonic()
    try:
        proc = subprocess.Popen([TALLY, *args], stdout=subprocess.PIPE, stderr=terminal)
    finally:
        os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the process closed its side
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    out = proc.stdout.read()
    proc.stdout.close()
    proc.wait(timeout=300)
    return proc.returncode, out, shown, time.monotonic() - started


# Flags that leave a ledger without snapshots or a history index: its reads
# replay the whole log.
NO_ARCHIVES = ["--snapshot-every", "0", "--snapshot-seconds", "0", "--history", "off"]


def large_ledger(name, ops):
    """A ledger of a generated workload of `ops` ops over 1,000 subjects,
    applied with NO_ARCHIVES; returns its data directory and how many lines
    the workload had (at least its events: a retry adds none)."""
    d = new_dir(name)
    csv = os.path.join(d, "w.csv")
    tally("workload", "--subjects", "1000", "--items", "10", "--ops", str(ops), "--seed", "1",
          "--out", csv, expect_exit=0)
    data = os.path.join(d, "data")
    tally("bench", "--data", data, "--workload", csv, "--durability", "none", *NO_ARCHIVES,
          expect_exit=0)
    with open(csv, "rb") as lines:
        return data, sum(1 for _ in lines) - 1  # less the header


def test_verify_shows_progress_on_a_terminal_and_erases_it():
    data, _ = large_ledger("progress", 600000)
    _, quiet_out, quiet_err = tally("verify", "--data", data, expect_exit=0)
    assert quiet_err == "", quiet_err
    code, out, shown, seconds = with_stderr_on_a_terminal("verify", "--data", data)
    assert code == 0 and out == quiet_out, (code, out, quiet_out)
    # Lines redrawn in place with \r, counting events, erased at the end:
    # the terminal's line is blank again.
    for line in shown.split(b"\r"):
        assert line == b"" or line.strip() == b"" or re.fullmatch(
            rb"tally: replay: \d+ / \d+ \(\d+%\) events, \d+ s *", line), shown
    assert shown == b"" or shown.endswith(b"\r") and shown.split(b"\r")[-2].strip() == b"", shown
    # A line is drawn a quarter second into the replay, most of a verify's
    # time: one that took this long drew some, however fast the machine.
    if seconds > 1.0:
        assert b"tally: replay: " in shown, (seconds, shown)


def test_verify_finds_a_flipped_byte():
    f = fixture()
    data = f.copy_data("corrupt")
    segment = only_segment(data)
    frames = segment_frames(segment)
    assert len(frames) == len(f.events), (len(frames), len(f.events))
    offset, length = frames[len(frames) // 2]
    flip_byte(segment, offset + FRAME_HEADER_BYTES + length // 2)

    code, out, err = tally("verify", "--data", data)
    assert code == 1, (code, err)
    assert os.path.basename(segment) in err and ("offset %d" % offset) in err, err
    code, out, _ = tally("verify", "--data", data, "--json")
    assert code == 1 and json.loads(text(out))["ok"] is False
    for args in (["export"], ["balance", "s1", "i1"], ["list", "s1"], ["log"]):
        code, _, err = tally(args[0], "--data", data, *args[1:])
        assert code == 1 and "offset %d" % offset in err, (args, code, err)
    # A writer refuses to open it too.
    code, out, err = tally("apply", "--data", data, "--workload", f.csv)
    assert code == 1 and out == b"" and "corrupt" in err, (code, err)


def test_reads_that_stop_before_damage_pass():
    # Seqs run without gaps: a read that stops at seq N neither reads nor checks the record
    # after it, as verify, balance and export with their seq limits do not. (Reads other than
    # `log` also read the last segment, to find the log's end: the damage is in the first.)
    f = fixture()
    data = os.path.join(new_dir("damage-after"), "data")
    tally("apply", "--data", data, "--workload", f.csv, "--segment-bytes", "65536",
          "--history", "off", "--snapshot-every", "0", expect_exit=0)
    segments = sorted(os.listdir(os.path.join(data, "log")))
    assert len(segments) > 2, segments
    segment = os.path.join(data, "log", segments[0])
    frames = segment_frames(segment)
    damaged = len(frames) // 2 + 1  # the seq of frames[len // 2]
    offset, length = frames[damaged - 1]
    flip_byte(segment, offset + FRAME_HEADER_BYTES + length // 2)
    before = str(damaged - 1)
    _, out, _ = tally("log", "--data", data, "--to-seq", before, "--json", expect_exit=0)
    named = lambda events: [(e["seq"], e["type"], e["key"]) for e in events]
    assert named(map(json.loads, text(out).splitlines())) == named(f.events[:damaged - 1])
    subject, item = pair_changed_before(f.events, damaged - 1)
    _, out, _ = tally("history", "--data", data, "--to-seq", before, "--json", subject, item,
                      expect_exit=0)
    assert [json.loads(line)["seq"] for line in text(out).splitlines()] == \
        [c[0] for c in pair_changes(f.events[:damaged - 1], subject, item)]
    _, out, _ = tally("balance", "--data", data, "--at-seq", before, subject, item,
                      expect_exit=0)
    want = balances_at(f.events, [damaged - 1])[damaged - 1]
    available, held = want.get((subject, item), [0, 0])
    assert text(out) == "available=%d held=%d\n" % (available, held), out
    tally("verify", "--data", data, "--to-seq", before, expect_exit=0)
    for args in (["log"], ["history", subject, item]):
        code, _, err = tally(args[0], "--data", data, "--to-seq", str(damaged), *args[1:])
        assert code == 1 and "offset %d" % offset in err, (args, code, err)


def pair_changed_before(events, seq):
    """A (subject, item) that some event at or before seq changed."""
    for e in events[:seq]:
        for s, i, da, dh in op_deltas(e):
            if da != 0 or dh != 0:
                return s, i
    raise AssertionError("no event changed a balance")


def log_only_copy(f, name):
    """A copy of the fixture's data without its snapshots and history index (they hold only
    durable events, so they would count what a damaged end lost), its segment, and the offset
    and payload length of the last frame."""
    data = f.copy_data(name)
    for store in ("snapshots", "history"):
        shutil.rmtree(os.path.join(data, store), ignore_errors=True)
    segment = only_segment(data)
    offset, length = segment_frames(segment)[-1]
    return data, segment, offset, length


def test_verify_accepts_a_torn_tail():
    # A write that did not finish: no snapshot or index holds its events; where they do, the
    # loss is a failure (below).
    f = fixture()
    data, segment, offset, length = log_only_copy(f, "torn")
    flip_byte(segment, offset + FRAME_HEADER_BYTES + length - 1)
    code, out, err = tally("verify", "--data", data, "--json")
    assert code == 0, err
    report = json.loads(text(out))
    assert report["events"] == len(f.events) - 1
    assert report["torn_tail"] == {"segment": os.path.basename(segment), "offset": offset}, report


def test_verify_fails_on_a_last_segment_cut_short():
    # The writer makes a segment at its full size before its header, so a shorter file was cut
    # afterwards: records past its end may be lost, with no store here to count them.
    f = fixture()
    data, segment, offset, _ = log_only_copy(f, "cut-short")
    os.truncate(segment, offset)
    where = "segment %s offset %d: the segment's file is cut short (%d bytes of the " % (
        os.path.basename(segment), offset, offset)
    # A range ending before the cut finds it too: every read scans the last segment.
    for limits in ((), ("--to-seq", str(len(f.events) - 1)), ("--to-seq", "1")):
        code, out, err = tally("verify", "--data", data, *limits)
        assert code == 1 and where in err and "records after seq %d may be lost" % (
            len(f.events) - 1) in err, (limits, code, err)
        assert text(out).startswith("failed: "), (limits, text(out))
    # A read answers what the log holds, and warns; as of a time or a seq too.
    for read in (("export",), ("export", "--at-time", str(2**63 - 1)),
                 ("balance", "--at-seq", "1", "s1", "i1"), ("list", "--at-seq", "1", "s1"),
                 ("history", "s1", "i1"), ("history", "--rebuild"), ("log",)):
        _, out, err = tally(read[0], "--data", data, *read[1:], expect_exit=0)
        assert "tally: warning: " + where in err and "`tally verify` reports it" in err, (read, err)
    # The next writer says so, and gives the file its size back.
    empty = write(os.path.join(new_dir("cut-short-empty"), "empty.csv"),
                  "op,key,subject,item,qty,to,ttl_ms,hold_key\n")
    _, _, err = tally("apply", "--data", data, "--workload", empty, expect_exit=0)
    assert "warning" in err and where in err, err
    tally("verify", "--data", data, expect_exit=0)


def test_verify_tells_a_torn_segment_header_from_one_cut_short():
    # An empty next segment is what a crash as it was made leaves; one of 1 to 63 bytes was cut.
    f = fixture()
    data, _, _, _ = log_only_copy(f, "next-segment")
    name = "%016d.seg" % (len(f.events) + 1)
    # So was one shorter than any segment whose header was written.
    for size, exit_code, what in ((0, 0, "a torn segment header"),
                                  (30, 1, "a segment's file cut short inside its header"),
                                  (100, 1, "a segment's file cut short, its header damaged")):
        with open(os.path.join(data, "log", name), "wb") as segment:
            segment.write(b"\0" * size if size < 64 else b"\1" * size)
        torn = "torn_tail: segment %s offset 0 (%s; the next writer makes the segment again)" % (
            name, what)
        for limits in ((), ("--to-seq", "1")):
            code, out, err = tally("verify", "--data", data, *limits)
            assert code == exit_code and torn in text(out).splitlines(), (size, limits, code, out,
                                                                          err)
            assert (size == 0) == ("may be lost" not in err), (size, limits, err)


def test_a_second_writer_is_refused():
    f = fixture()
    data = f.copy_data("locked")
    with open(os.path.join(data, "LOCK"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, out, err = tally("apply", "--data", data, "--workload", f.csv)
        assert code == 1 and out == b"" and "locked" in err, (code, err)
        code, _, err = tally("bench", "--data", data, "--workload", f.csv)
        assert code == 1 and "locked" in err, (code, err)
        # The audit commands never take the lock.
        tally("verify", "--data", data, expect_exit=0)
        tally("export", "--data", data, expect_exit=0)


# ---- serve ----------------------------------------------------------------------------

class Server:
    """`tally serve` on ephemeral loopback ports, stopped with SIGTERM."""

    def __init__(self, data, *flags, open_files=None):
        # Two I/O threads whatever the machine: connections served
        # concurrently are part of what the tests cover. open_files: the
        # (soft, hard) limit on open files it starts with.
        def limit():
            resource.setrlimit(resource.RLIMIT_NOFILE, open_files)
        self.proc = subprocess.Popen([TALLY, "serve", "--data", data, "--listen", "127.0.0.1:0",
                                      "--http", "127.0.0.1:0", "--io-threads", "2", *flags],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     preexec_fn=limit if open_files else None)
        line = text(self.proc.stdout.readline())
        match = re.match(r"serving binary=(\S+) http=(\S+)", line)
        assert match, line
        self.binary, self.http = match.group(1), match.group(2)

    def get(self, path):
        with urllib.request.urlopen("http://%s%s" % (self.http, path), timeout=30) as response:
            return json.loads(response.read())

    def post(self, path, body, key):
        request = urllib.request.Request("http://%s%s" % (self.http, path), method="POST",
                                         data=json.dumps(body).encode(),
                                         headers={"Idempotency-Key": key})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def metric(self, name):
        with urllib.request.urlopen("http://%s/metrics" % self.http, timeout=30) as response:
            for line in text(response.read()).splitlines():
                if line.startswith(name + " "):
                    return float(line.split(" ")[1])
        raise AssertionError("no metric " + name)

    def stop(self):
        """Stops the server; returns what it wrote to stderr."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        err = text(self.proc.stderr.read())
        assert code == 0, (code, err)
        return err


def test_ledger_flags_set_the_window_the_hold_ttl_limit_and_the_segments():
    d = new_dir("ledger-flags")
    data = os.path.join(d, "data")
    csv = write(os.path.join(d, "one.csv"), HEADER + "acquire,k1,s1,i1,5,,,\n")
    short = ["--idempotency-window", "1"]
    _, out, _ = tally("apply", "--data", data, "--workload", csv, *short, expect_exit=0)
    assert text(out) == "k1,ok\n", out
    time.sleep(1.2)
    # A second of log time later, a one-second window has forgotten the key:
    # it is decided again...
    _, out, _ = tally("apply", "--data", data, "--workload", csv, *short, expect_exit=0)
    assert text(out) == "k1,ok\n", out
    # ...while under the default window (24 h) that decision is remembered.
    _, out, _ = tally("apply", "--data", data, "--workload", csv, expect_exit=0)
    assert text(out) == "k1,ok,replay\n", out
    _, out, _ = tally("balance", "--data", data, "--json", "s1", "i1", expect_exit=0)
    assert json.loads(out)["available"] == 10, out

    # 2,000 ops in segments of 64 KiB: several of them, none larger.
    many = os.path.join(d, "many.csv")
    tally("workload", "--subjects", "20", "--ops", "2000", "--seed", "3", "--out", many,
          expect_exit=0)
    segmented = os.path.join(d, "segmented")
    tally("apply", "--data", segmented, "--workload", many, "--segment-bytes", "65536",
          "--queue-depth", "8", "--durability", "async", "--sync-interval-ms", "5",
          expect_exit=0)
    sizes = [os.path.getsize(os.path.join(segmented, "log", name))
             for name in os.listdir(os.path.join(segmented, "log"))]
    assert len(sizes) > 2 and max(sizes) <= 65536, sizes
    tally("verify", "--data", segmented, expect_exit=0)

    # Snapshots record the ledger's window; the tools replay with it, so
    # they check those snapshots, and `tally snapshot` writes one of it.
    forever = os.path.join(d, "forever")
    tally("apply", "--data", forever, "--workload", many, "--idempotency-window", "0",
          "--snapshot-every", "500", "--snapshot-seconds", "0", expect_exit=0)
    extra = write(os.path.join(d, "extra.csv"), HEADER + "acquire,extra-1,s1,i1,5,,,\n")
    tally("apply", "--data", forever, "--workload", extra, "--idempotency-window", "0",
          "--snapshot-every", "0", "--snapshot-seconds", "0", expect_exit=0)
    tally("snapshot", "--data", forever, expect_exit=0)
    _, out, _ = tally("verify", "--data", forever, "--json", expect_exit=0)
    checked = json.loads(out)["snapshots"]
    assert len(checked) == 2 and all(s["status"] == "ok" for s in checked), checked

    # A server holds for at most --hold-ttl-max, and reads its log again
    # every --scrub-seconds.
    server = Server(os.path.join(d, "served"), "--hold-ttl-max", "60", "--scrub-seconds", "1")
    try:
        deadline = time.monotonic() + 60
        while server.metric("tally_log_scrubs_total") < 2:
            assert time.monotonic() < deadline, "no two scrubs in 60 s"
            time.sleep(0.1)
        server.post("/v1/acquire", {"subject": "s1", "item": "i1", "qty": 5}, "a1")
        held = server.post("/v1/holds", {"subject": "s1", "item": "i1", "qty": 1,
                                         "ttl_ms": 60000}, "h1")
        assert held["outcome"] == "ok", held
        try:
            server.post("/v1/holds", {"subject": "s1", "item": "i1", "qty": 1, "ttl_ms": 60001},
                        "h2")
            raise AssertionError("a ttl over --hold-ttl-max was taken")
        except urllib.error.HTTPError as error:
            assert error.code == 400, error.code
            assert "60000 ms" in text(error.read()), error
    finally:
        server.stop()


def test_bench_over_several_connections_notes_only_keys_decided_before_it():
    # Over several connections a retry line may be decided before its key's
    # first line, which then comes back a replay: not a key decided before.
    f = fixture()
    server = Server(new_dir("serve_notes"))
    try:
        for run in range(2):
            _, out, err = tally("bench", "--connect", server.binary, "--workload", f.csv,
                                "--connections", "4", "--pipeline", "64", expect_exit=0)
            assert BENCH_LINE.match(text(out).strip()), text(out)
            if run == 0:
                assert "note:" not in err, err
            else:
                assert "note: %d of the %d ops named keys the ledger had decided before" % (
                    len(f.keys), len(f.keys)) in err, err
    finally:
        server.stop()


def test_bench_keeps_its_pipeline_on_each_connection():
    # --pipeline 1 on each of 4 connections: up to 4 requests wait for one
    # sync together, so some group commits hold more than one event. With
    # one request in flight in all, every group would hold one.
    f = fixture()
    server = Server(new_dir("serve_pipeline"))
    try:
        tally("bench", "--connect", server.binary, "--workload", f.csv,
              "--connections", "4", "--pipeline", "1", expect_exit=0)
        groups = server.metric("tally_group_commit_events_count")
        alone = server.metric('tally_group_commit_events_bucket{le="1"}')
        assert groups > 0 and alone < groups, (alone, groups)
    finally:
        server.stop()


def test_bench_drives_a_server_and_the_server_keeps_its_state():
    f = fixture()
    data = new_dir("serve")
    server = Server(data)
    try:
        _, out, err = tally("bench", "--connect", server.binary, "--workload", f.csv,
                            "--expect", f.expect, expect_exit=0)
        assert BENCH_LINE.match(text(out).strip()), text(out)
        subject, item, available, held = expect_balance_lines(f.expect)[0].split(",")
        seen = server.get("/v1/balances/%s/%s" % (subject, item))
        assert (seen["available"], seen["held"]) == (int(available), int(held)), seen
    finally:
        server.stop()
    # The log the server wrote is the state: the audit tools agree with it.
    _, out, _ = tally("export", "--data", data, expect_exit=0)
    assert text(out).splitlines() == expect_balance_lines(f.expect)
    tally("verify", "--data", data, expect_exit=0)
    # A restarted server serves the same state.
    server = Server(data)
    try:
        seen = server.get("/v1/balances/%s/%s" % (subject, item))
        assert (seen["available"], seen["held"]) == (int(available), int(held)), seen
    finally:
        server.stop()


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_answers_starting_and_stops_at_a_signal_while_its_log_opens():
    # No snapshot: the open replays all 300,000 events.
    data, lines = large_ledger("serve-opening", 300000)
    http = "127.0.0.1:%d" % free_port()
    proc = subprocess.Popen([TALLY, "serve", "--data", data, "--listen", "127.0.0.1:0",
                             "--http", http, *NO_ARCHIVES],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while True:
            assert time.time() < deadline and proc.poll() is None
            try:
                with urllib.request.urlopen("http://%s/health" % http, timeout=10):
                    raise AssertionError("ready before /health answered starting")
            except urllib.error.HTTPError as error:
                body = json.loads(error.read())
                assert error.code == 503 and body["code"] == "starting", (error.code, body)
                assert 0 <= body["replayed_events"] <= lines, body
                assert error.headers["Retry-After"] == "1"
                break
            except urllib.error.URLError:
                time.sleep(0.005)  # not bound yet
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, (proc.returncode, err)
    assert b"serving" not in out, out
    assert "SIGTERM: shutting down while the log opened" in text(err), err


def test_serve_warns_of_a_token_file_others_can_read():
    d = new_dir("token")
    token = write(os.path.join(d, "token"), "a-token-of-this-test\n")
    for mode, warned in ((0o644, True), (0o600, False)):
        os.chmod(token, mode)
        server = Server(os.path.join(d, "data"), "--token-file", token)
        request = urllib.request.Request("http://%s/v1/balances/s/i" % server.http,
                                         headers={"Authorization": "Bearer a-token-of-this-test"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.loads(response.read())["available"] == 0
        err = server.stop()
        assert ("other users can read or write the token file" in err) == warned, (mode, err)


def open_files_limit(pid):
    """The (soft, hard) limit on open files of a running process."""
    for line in text(open("/proc/%d/limits" % pid, "rb").read()).splitlines():
        if line.startswith("Max open files"):
            return tuple(int(value) if value != "unlimited" else resource.RLIM_INFINITY
                         for value in line.split()[3:5])
    raise AssertionError("no open-file limit for %d" % pid)


def test_serve_raises_its_open_file_limit_to_what_its_connections_need():
    data = os.path.join(new_dir("open-files"), "data")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    # Both protocols' connections, the 4 probes, 128 for the ledger.
    needed = 2 * 1000 + 4 + 128
    for start in ((256, hard), (300, min(hard, 600))):
        server = Server(data, "--connections-max", "1000", open_files=start)
        soft, _ = open_files_limit(server.proc.pid)
        reachable = needed if start[1] == resource.RLIM_INFINITY else min(start[1], needed)
        assert soft == reachable, (start, soft)
        err = server.stop()
        warning = ("--connections-max 1000 needs about %d open files, but the limit is %d"
                   % (needed, soft))
        assert (warning in err) == (soft < needed), (start, err)
    # Within the limit already: left as it is.
    server = Server(data, open_files=(1000, hard))
    assert open_files_limit(server.proc.pid)[0] == 1000
    assert "open files" not in server.stop()


def test_serve_event_feed_matches_tally_log():
    data = new_dir("feed")
    server = Server(data)
    try:
        server.post("/v1/acquire", {"subject": "berlin", "item": "sku", "qty": 5,
                                    "reason": "restock"}, "a1")
        server.post("/v1/transfer", {"from": "berlin", "to": "paris", "item": "sku", "qty": 2}, "t1")
        hold = server.post("/v1/holds", {"subject": "paris", "item": "sku", "qty": 1,
                                         "ttl_ms": 60000}, "h1")
        server.post("/v1/holds/%d/commit" % hold["hold_id"], {}, "c1")
        first = server.get("/v1/events?from_seq=1&limit=3")
        rest = server.get("/v1/events?from_seq=%d&wait_ms=0" % first["next_seq"])
        assert first["next_seq"] == 4 and rest["next_seq"] == 5, (first, rest)
        events = first["events"] + rest["events"]
    finally:
        server.stop()
    _, out, _ = tally("log", "--data", data, "--json", expect_exit=0)
    assert events == [json.loads(line) for line in text(out).splitlines()], events


def test_log_subject_and_item_match_one_op():
    data = new_dir("log-pair")
    server = Server(data)
    try:
        server.post("/v1/acquire", {"subject": "berlin", "item": "sku", "qty": 5}, "a1")
        # berlin's gold and paris's sku: no op of this batch is berlin's sku.
        server.post("/v1/batch", {"ops": [
            {"op": "acquire", "subject": "berlin", "item": "gold", "qty": 1},
            {"op": "acquire", "subject": "paris", "item": "sku", "qty": 1}]}, "b1")
        server.post("/v1/batch", {"ops": [
            {"op": "transfer", "from": "berlin", "to": "paris", "item": "sku", "qty": 2}]}, "b2")
    finally:
        server.stop()
    _, out, _ = tally("log", "--data", data, "--json", "--subject", "berlin", "--item", "sku",
                      expect_exit=0)
    assert [json.loads(line)["key"] for line in text(out).splitlines()] == ["a1", "b2"], out
    _, out, _ = tally("log", "--data", data, "--json", "--subject", "paris", "--item", "sku",
                      expect_exit=0)
    assert [json.loads(line)["key"] for line in text(out).splitlines()] == ["b1", "b2"], out


def test_bench_connect_usage():
    f = fixture()
    tally("bench", "--connect", "127.0.0.1:1", "--data", "x", "--workload", f.csv, expect_exit=2)
    tally("bench", "--data", "x", "--workload", f.csv, "--connections", "2", expect_exit=2)
    code, _, err = tally("bench", "--connect", "127.0.0.1:1", "--workload", f.csv)
    assert code == 1 and err, (code, err)
    # A malformed address is a usage error, as for serve --listen, found
    # before anything else: the workload named here does not exist.
    missing = os.path.join(SCRATCH, "missing.csv")
    for address in ("nohost", "127.0.0.1:99999", "127.0.0.1:abc", "[::1", "[]:7420", ":7420", ""):
        code, out, err = tally("bench", "--connect", address, "--workload", missing)
        assert code == 2 and out == b"", (address, code, err)
        assert err.startswith("tally: --connect: "), (address, err)
        assert err.endswith("tally: see 'tally bench --help'\n"), (address, err)


def test_bench_reads_back_around_names_the_server_refuses():
    d = new_dir("bench-invalid")
    # A subject longer than 255 bytes and one with a NUL: answered invalid,
    # they hold nothing, and the comparison still comes.
    long_name = "x" * 300
    csv = write(os.path.join(d, "w.csv"), HEADER + "acquire,k1,s1,i1,5,,,\n"
                "acquire,k2,%s,i1,5,,,\nacquire,k3,a\0b,i1,5,,,\n"
                "transfer,k4,s1,i1,2,%s,,\n" % (long_name, long_name))
    expect = write(os.path.join(d, "w.expect"),
                   "s1,i1,5,0\n#outcomes ok=1 insufficient=0 hold_unknown=0 retry=0\n")
    code, _, embedded = tally("bench", "--data", os.path.join(d, "embedded"), "--workload", csv,
                              "--expect", expect)
    assert code == 1 and "got ok=1 insufficient=0 hold_unknown=0 retry=0 other=3" in embedded, \
        (code, embedded)
    server = Server(os.path.join(d, "served"))
    try:
        code, _, served = tally("bench", "--connect", server.binary, "--workload", csv,
                                "--expect", expect)
    finally:
        server.stop()
    assert code == 1 and served == embedded, (code, served)


# ---- workload -----------------------------------------------------------------------

def test_workload_is_deterministic():
    d = new_dir("workload")

    def generate(seed, name):
        csv, expect = os.path.join(d, name + ".csv"), os.path.join(d, name + ".expect")
        tally("workload", "--subjects", "30", "--ops", "2000", "--seed", str(seed), "--out", csv,
              "--expect", expect, expect_exit=0)
        with open(csv) as a, open(expect) as b:
            return a.read(), b.read()

    first = generate(9, "a")
    assert generate(9, "b") == first
    assert generate(10, "c") != first
    assert first[0].startswith(HEADER)
    _, out, _ = tally("workload", "--subjects", "30", "--ops", "2000", "--seed", "9", "--out", "-",
                      expect_exit=0)
    assert text(out) == first[0]
    ops = {line.split(",")[0] for line in first[0].splitlines()[1:]}
    assert ops == {"acquire", "consume", "transfer", "hold", "commit", "release"}, ops


def test_workload_opens_both_outputs_before_it_writes_either():
    d = new_dir("workload-unwritable")
    code, _, err = tally("workload", "--subjects", "3", "--ops", "100000", "--out", "w.csv",
                         "--expect", "missing/w.expect", cwd=d)
    assert code == 1 and "missing/w.expect" in err, (code, err)
    assert os.path.getsize(os.path.join(d, "w.csv")) == 0
    # A file --out names already is left as it was.
    with open(os.path.join(d, "w.csv"), "w") as f:
        f.write("kept\n")
    code, _, err = tally("workload", "--subjects", "3", "--ops", "100", "--out", "w.csv",
                         "--expect", "missing/w.expect", cwd=d)
    assert code == 1 and "missing/w.expect" in err, (code, err)
    assert open(os.path.join(d, "w.csv")).read() == "kept\n"
    # Written over whole once both open: a shorter output leaves no old tail.
    with open(os.path.join(d, "w.csv"), "w") as f:
        f.write("x" * 100000)
    tally("workload", "--subjects", "3", "--ops", "10", "--out", "w.csv", "--expect", "w.expect",
          cwd=d, expect_exit=0)
    assert "x" not in open(os.path.join(d, "w.csv")).read()


def test_workload_refuses_one_file_for_out_and_expect():
    d = new_dir("workload-same")
    flags = ["workload", "--subjects", "3", "--ops", "10"]
    tally(*flags, "--out", "a.csv", "--expect", "a.expect", cwd=d, expect_exit=0)
    os.link(os.path.join(d, "a.csv"), os.path.join(d, "hard.csv"))
    os.symlink("a.csv", os.path.join(d, "soft.csv"))
    # Symlinks to files not there yet, which writing through them creates.
    os.symlink("y.csv", os.path.join(d, "to-y.expect"))
    os.symlink(os.path.join(d, "y.expect"), os.path.join(d, "to-y.csv"))
    # Two spellings of a file not there yet, a hard link, a symlink, a
    # symlink to a file not there yet either way round, and standard output
    # by another name.
    for out, expect in (("y.csv", "./y.csv"), ("y.csv", os.path.join(d, "y.csv")),
                        ("a.csv", "hard.csv"), ("soft.csv", "a.csv"),
                        ("y.csv", "to-y.expect"), ("to-y.csv", "y.expect"),
                        ("-", "/dev/stdout"), ("/dev/stdout", "-")):
        code, _, err = tally(*flags, "--out", out, "--expect", expect, cwd=d)
        assert code == 2 and "name the same file" in err, (out, expect, code, err)
        assert err.endswith("tally: see 'tally workload --help'\n"), err
        assert not os.path.exists(os.path.join(d, "y.csv")), (out, expect)
        assert not os.path.exists(os.path.join(d, "y.expect")), (out, expect)
    # A device both can go to, as a check of the generator alone does; standard output too.
    tally(*flags, "--out", "/dev/null", "--expect", "/dev/null", cwd=d, expect_exit=0)
    for out, expect in (("-", "/dev/null"), ("/dev/null", "-")):
        run = subprocess.run([TALLY, *flags, "--out", out, "--expect", expect], cwd=d,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
        assert run.returncode == 0, (out, expect, run.stderr)


# ---- snapshots, point-in-time reads, history ------------------------------------------

def op_deltas(event):
    """[(subject, item, d_available, d_held)] per op of an event of `tally log --json`."""
    if event["type"] == "rejected":
        return []
    out = []
    for op in event["ops"] if event["type"] == "batch" else [event]:
        kind, subject, item, qty = op["type"], op.get("subject"), op.get("item"), op.get("qty")
        if kind == "acquire":
            out.append((subject, item, qty, 0))
        elif kind == "consume":
            out.append((subject, item, -qty, 0))
        elif kind == "transfer":
            out += [(subject, item, -qty, 0), (op["to"], item, qty, 0)]
        elif kind == "hold":
            out.append((subject, item, -qty, qty))
        elif kind == "commit":
            out.append((subject, item, op["released"], -(qty + op["released"])))
        else:  # release, expire
            out.append((subject, item, qty, -qty))
    return out


def pair_changes(events, subject, item):
    """The (seq, time, key, op, d_available, d_held) of every event that changed the pair."""
    changes = []
    for e in events:
        total = [0, 0]
        for s, i, da, dh in op_deltas(e):
            if (s, i) == (subject, item):
                total[0] += da
                total[1] += dh
        if total != [0, 0]:
            op = e["type"]
            changes.append((e["seq"], e["time"], e["key"], op, total[0], total[1]))
    return changes


def balances_at(events, seqs):
    """{seq: {(subject, item): [available, held]}} after each of `seqs`, non-zero pairs only: a
    brute force from the log's events, independent of the engine."""
    wanted = sorted(set(seqs))
    result = {}
    balances = {}
    index = 0
    for seq in wanted:
        while index < len(events) and events[index]["seq"] <= seq:
            for s, i, da, dh in op_deltas(events[index]):
                b = balances.setdefault((s, i), [0, 0])
                b[0] += da
                b[1] += dh
            index += 1
        result[seq] = {pair: list(b) for pair, b in balances.items() if b != [0, 0]}
    return result


def export_lines(balances):
    return ["%s,%s,%d,%d" % (s, i, a, h) for (s, i), (a, h) in sorted(balances.items())]


def seq_at_time(events, time_ns):
    """The last seq stamped at or before time_ns, 0 if none."""
    return max([e["seq"] for e in events if e["time"] <= time_ns], default=0)


def log_events(data):
    _, out, _ = tally("log", "--data", data, "--json", expect_exit=0)
    return [json.loads(line) for line in text(out).splitlines()]


class History:
    """One generated workload applied in two steps, giving data directories whose history
    index is absent, behind the log, or complete, and snapshots in the middle and at the end."""

    def __init__(self):
        self.dir = new_dir("history")
        csv = os.path.join(self.dir, "w.csv")
        tally("workload", "--subjects", "12", "--items", "3", "--ops", "1500", "--seed", "11",
              "--out", csv, expect_exit=0)
        with open(csv) as f:
            lines = f.read().splitlines()
        half = write(os.path.join(self.dir, "half.csv"), "\n".join(lines[:len(lines) // 2]) + "\n")
        first = os.path.join(self.dir, "first")
        tally("apply", "--data", first, "--workload", half, "--durability", "none", expect_exit=0)
        tally("snapshot", "--data", first, expect_exit=0)
        tally("history", "--data", first, "--rebuild", expect_exit=0)
        self.half_seq = len(log_events(first))
        # behind: the whole workload, its index still that of the first half (a prefix of the
        # same log, so it is usable, and behind).
        self.behind = os.path.join(self.dir, "behind")
        shutil.copytree(first, self.behind)
        tally("apply", "--data", self.behind, "--workload", csv, "--durability", "none",
              expect_exit=0)
        tally("snapshot", "--data", self.behind, "--retain", "5", expect_exit=0)
        shutil.rmtree(os.path.join(self.behind, "history"))
        shutil.copytree(os.path.join(first, "history"), os.path.join(self.behind, "history"))
        self.absent = os.path.join(self.dir, "absent")
        shutil.copytree(self.behind, self.absent)
        shutil.rmtree(os.path.join(self.absent, "history"))
        self.complete = os.path.join(self.dir, "complete")
        shutil.copytree(self.behind, self.complete)
        _, out, _ = tally("history", "--data", self.complete, "--rebuild", expect_exit=0)
        self.events = log_events(self.behind)
        self.last_seq = len(self.events)
        assert text(out) == "indexed %d events (last seq %d)\n" % (self.last_seq, self.last_seq)
        assert self.half_seq < self.last_seq

    def dirs(self):
        return [self.absent, self.behind, self.complete]


HISTORY = None


def history_fixture():
    global HISTORY
    if HISTORY is None:
        HISTORY = History()
    return HISTORY


def test_snapshot_takes_lists_and_prunes():
    f = fixture()
    data = f.copy_data("snapshot")
    code, out, err = tally("snapshot", "--data", data, "--list", expect_exit=0)
    assert out == b""
    _, out, err = tally("snapshot", "--data", data, expect_exit=0)
    assert err == "", err  # no progress line when stderr is not a terminal
    words = text(out).split()
    assert SNAPSHOT_LINE.match(" ".join(words[:4])), text(out)
    assert words[4:] == ["replayed=%d" % len(f.events), "pruned=0"], text(out)
    last = f.events[-1]
    assert words[0] == "seq=%d" % last["seq"] and words[1] == "time=" + last["time_rfc3339"]
    _, out, _ = tally("verify", "--data", data, "--json", expect_exit=0)
    report = json.loads(text(out))
    assert words[3] == "digest=" + report["digest"], (words, report)
    assert [(s["seq"], s["status"]) for s in report["snapshots"]] == [(last["seq"], "ok")], report
    # A second one at the same seq replaces it and replays nothing.
    _, out, _ = tally("snapshot", "--data", data, "--json", expect_exit=0)
    taken = json.loads(text(out))
    assert taken["seq"] == last["seq"] and taken["replayed"] == 0 and taken["pruned"] == 0, taken
    assert taken["time"] == last["time"] and taken["time_rfc3339"] == last["time_rfc3339"]
    _, out, _ = tally("snapshot", "--data", data, "--list", expect_exit=0)
    assert text(out) == " ".join(words[:4]) + "\n", text(out)
    _, out, _ = tally("snapshot", "--data", data, "--list", "--json", expect_exit=0)
    listed = [json.loads(line) for line in text(out).splitlines()]
    assert listed == [{k: v for k, v in taken.items() if k not in ("replayed", "pruned")}
                      | {"metadata_ok": True}], (listed, taken)
    # Three more, each after more events, keeping two.
    for round_index in range(3):
        csv = write(os.path.join(os.path.dirname(data), "more%d.csv" % round_index),
                    HEADER + "acquire,more-%d,s0,i0,5,,,\n" % round_index)
        tally("apply", "--data", data, "--workload", csv, expect_exit=0)
        _, out, _ = tally("snapshot", "--data", data, "--retain", "2", "--json", expect_exit=0)
        taken = json.loads(text(out))
        assert taken["seq"] == last["seq"] + round_index + 1 and taken["replayed"] == 1, taken
    assert taken["pruned"] == 1, taken
    _, out, _ = tally("snapshot", "--data", data, "--list", expect_exit=0)
    seqs = [int(SNAPSHOT_LINE.match(line).group(1)) for line in text(out).splitlines()]
    assert seqs == [last["seq"] + 2, last["seq"] + 3], seqs
    _, out, _ = tally("verify", "--data", data, "--json", expect_exit=0)
    report = json.loads(text(out))
    assert [s["status"] for s in report["snapshots"]] == ["ok", "ok"], report
    # A ledger opens from it, and the tools read the same state.
    _, out, _ = tally("export", "--data", data, expect_exit=0)
    assert "s0,i0," in text(out)


def flip_every_copy(content, marker, offset):
    """Flips the low bit of the byte `offset` bytes into every copy of `marker`
    in `content`: copy-on-write may leave stale copies of a snapshot's image in
    the store's free pages (snapshots/store_test.cc does the same)."""
    at = content.find(marker)
    assert at >= 0
    while at >= 0:
        content[at + offset] ^= 0x01
        at = content.find(marker, at + 1)


def test_verify_finds_a_damaged_snapshot():
    # The last name of the export is in the snapshot's image.
    def flip_a_name(content, seq, before):
        marker = text(before).splitlines()[-1].split(",")[0].encode()
        flip_every_copy(content, marker, len(marker) - 1)
    verify_finds_a_damaged_snapshot("bad-snapshot", flip_a_name)


def test_verify_finds_a_snapshot_damaged_in_its_idempotency_window():
    # The image starts "TSTA", u32 version, u64 last seq, i64 last time, i64 window.
    def flip_the_window(content, seq, before):
        version = content[content.find(b"TSTA") + 4:][:4]
        flip_every_copy(content, b"TSTA" + version + struct.pack("<Q", seq), 26)
    verify_finds_a_damaged_snapshot("bad-snapshot-window", flip_the_window)


def verify_finds_a_damaged_snapshot(name, damage):
    """Snapshots the fixture's ledger, damages the image with
    damage(content, seq, export before), and checks verify and the reads."""
    f = fixture()
    data = f.copy_data(name)
    tally("snapshot", "--data", data, expect_exit=0)
    _, before, _ = tally("export", "--data", data, expect_exit=0)
    seq = f.events[-1]["seq"]
    path = os.path.join(data, "snapshots", "data.mdb")
    with open(path, "rb") as file:
        content = bytearray(file.read())
    damage(content, seq, before)
    with open(path, "wb") as file:
        file.write(content)
    code, out, err = tally("verify", "--data", data)
    assert code == 1 and ("snapshot at seq %d" % seq) in err, (code, err)
    assert text(out).startswith("failed: snapshot at seq %d" % seq), text(out)
    assert re.search(r"^snapshot %d: bad " % seq, text(out), re.M), text(out)
    code, out, _ = tally("verify", "--data", data, "--json")
    report = json.loads(text(out))
    assert code == 1 and report["ok"] is False and "snapshot at seq %d" % seq in report["error"]
    assert [s["status"] for s in report["snapshots"]] == ["bad"], report
    assert report["events"] == len(f.events)  # the log itself verified
    # Reads skip the damaged snapshot, say so, and replay the whole log.
    skipped = "tally: skipped the snapshot at seq %d: corrupt: " % seq
    _, after, err = tally("export", "--data", data, expect_exit=0)
    assert after == before and skipped in err, err
    shutil.rmtree(os.path.join(data, "history"), ignore_errors=True)
    _, after, err = tally("export", "--data", data, "--at-seq", str(seq), expect_exit=0)
    assert after == before and skipped in err, err
    # So does a server: at its open, and at the first point-in-time read
    # that replays past it, not at every one.
    server = Server(data, "--history", "off")
    subject, item = text(before).splitlines()[0].split(",")[:2]
    for _ in range(2):
        server.get("/v1/balances/%s/%s?at_seq=%d" % (subject, item, seq))
    assert server.stop().count(skipped) == 2


def verify_an_unreadable_store(name, make, failed):
    """Makes DATA/<name> with the command `make`, overwrites its data.mdb with
    garbage, and checks that verify prints the whole report, says the store is
    unreadable, fails naming it (`failed` starts the report) and says where a
    ledger moves it. Returns the data directory and the JSON report."""
    f = fixture()
    data = f.copy_data("unreadable-" + name)
    tally(*make, "--data", data, expect_exit=0)
    with open(os.path.join(data, name, "data.mdb"), "wb") as file:
        file.write(b"not an LMDB file" * 1024)
    code, out, err = tally("verify", "--data", data)
    assert code == 1 and "MDB_INVALID" in err and name + ".damaged" in err, (code, err)
    # The whole report still comes, the log's checks first.
    assert text(out).startswith(failed), text(out)
    assert re.search(r"^%s: unreadable: corrupt: " % name, text(out), re.M), text(out)
    assert re.search(r"^events: %d$" % len(f.events), text(out), re.M), text(out)
    code, out, _ = tally("verify", "--data", data, "--json")
    report = json.loads(text(out))
    assert code == 1 and report["ok"] is False and "MDB_INVALID" in report["error"], report
    assert report["events"] == len(f.events), report
    return data, report


def test_verify_reports_a_snapshot_store_that_does_not_open():
    _, before, _ = tally("export", "--data", fixture().data, expect_exit=0)
    data, report = verify_an_unreadable_store("snapshots", ["snapshot"], "failed: snapshots: ")
    assert report["snapshots"] == [], report
    # Reads replay the whole log instead, and name the store they skipped.
    _, after, err = tally("export", "--data", data, expect_exit=0)
    assert after == before
    assert "tally: skipped the snapshot store: corrupt: " in err and "at seq" not in err, err


def test_a_file_in_a_stores_place_fails_verify_and_the_writer():
    # Not a store, and not damage a writer may set aside: verify fails, a writer refuses to
    # open, and reads go on without it.
    f = fixture()
    for name, failed in (("snapshots", "failed: snapshots: "), ("history", "failed: history ")):
        data = f.copy_data("file-for-" + name)
        shutil.rmtree(os.path.join(data, name), ignore_errors=True)
        write(os.path.join(data, name), "not a directory")
        why = "%s: %s is not a directory" % (name, os.path.join(data, name))
        code, out, err = tally("verify", "--data", data)
        assert code == 1 and why in err, (name, code, err)
        assert text(out).startswith(failed), (name, text(out))
        assert re.search(r"^%s: unreadable: io_error: " % name, text(out), re.M), text(out)
        code, _, err = tally("apply", "--data", data, "--workload", f.csv)
        assert code == 1 and "io_error" in err and "is not a directory" in err, (name, code, err)
        tally("export", "--data", data, expect_exit=0)


def test_reads_change_nothing_in_the_data_directory():
    f = fixture()
    data = f.copy_data("reads-write-nothing")
    tally("snapshot", "--data", data, expect_exit=0)
    tally("history", "--data", data, "--rebuild", expect_exit=0)

    def files():
        found = {}
        for root, _, names in os.walk(data):
            for name in names:
                path = os.path.join(root, name)
                with open(path, "rb") as file:
                    found[os.path.relpath(path, data)] = file.read()
        return found

    reads = [["verify"], ["export"], ["export", "--at-seq", "5"], ["balance", "s1", "i1"],
             ["list", "s1"], ["snapshot", "--list"], ["log", "--to-seq", "3"]]
    # lock.mdb holds readers' slots, which LMDB writes as they come and go.
    before = {name: content for name, content in files().items() if name.endswith("data.mdb")}
    for args in reads:
        tally(args[0], "--data", data, *args[1:], expect_exit=0)
    after = {name: content for name, content in files().items() if name.endswith("data.mdb")}
    assert before == after
    # A store a writer never finished making (an empty file) stays as it is.
    with open(os.path.join(data, "snapshots", "data.mdb"), "wb"):
        pass
    os.remove(os.path.join(data, "snapshots", "lock.mdb"))
    for args in reads:
        tally(args[0], "--data", data, *args[1:], expect_exit=0)
    assert os.path.getsize(os.path.join(data, "snapshots", "data.mdb")) == 0
    assert not os.path.exists(os.path.join(data, "snapshots", "lock.mdb"))


def test_snapshots_taken_at_once_are_written_one_after_the_other():
    # Each holds the store alone while it writes; the others wait for it
    # rather than blame a reader without write access.
    data = fixture().copy_data("snapshots-at-once")
    for _ in range(3):
        procs = [subprocess.Popen([TALLY, "snapshot", "--data", data, "--retain", str(retain)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for retain in (1, 2, 1)]
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0 and err == b"", (proc.returncode, err)
    _, out, _ = tally("verify", "--data", data, "--json", expect_exit=0)
    assert json.loads(text(out))["ok"] is True, out


def test_snapshot_beside_a_running_server():
    f = fixture()
    data = f.copy_data("snapshot-serve")
    server = Server(data)
    try:
        _, out, err = tally("snapshot", "--data", data, "--json", expect_exit=0)
        assert json.loads(text(out))["seq"] == len(f.events), text(out)
        _, out, _ = tally("snapshot", "--data", data, "--list", expect_exit=0)
        assert len(text(out).splitlines()) == 1
        # The index belongs to the running ledger: no rebuild beside it.
        code, _, err = tally("history", "--data", data, "--rebuild")
        assert code == 1 and "locked" in err and data in err, (code, err)
        tally("balance", "--data", data, "--at-seq", "10", "s1", "i1", expect_exit=0)
    finally:
        server.stop()
    tally("verify", "--data", data, expect_exit=0)


def test_history_rebuild_is_refused_while_locked():
    f = fixture()
    data = f.copy_data("history-locked")
    with open(os.path.join(data, "LOCK"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, out, err = tally("history", "--data", data, "--rebuild")
        assert code == 1 and out == b"" and "locked" in err and data in err, (code, err)
        tally("snapshot", "--data", data, expect_exit=0)  # takes no lock
    _, out, _ = tally("history", "--data", data, "--rebuild", "--json", expect_exit=0)
    assert json.loads(text(out)) == {"events": len(f.events), "last_seq": len(f.events)}


def test_reads_beside_a_history_rebuild_answer_whole():
    # A rebuild clears the index and fills it again, while a read beside it reads the index a
    # transaction at a time: where the index went back, the log answers the rest.
    data = os.path.join(new_dir("rebuilt-beside"), "d")
    acquires = write(os.path.join(new_dir("rebuilt-beside-csv"), "w.csv"),
                     "op,key,subject,item,qty,to,ttl_ms,hold_key\n" +
                     "".join("acquire,k%d,s0,i0,1,,,\n" % n for n in range(20000)))
    tally("bench", "--data", data, "--workload", acquires, "--durability", "none",
          expect_exit=0)
    stop = False

    def rebuild():
        while not stop:
            tally("history", "--data", data, "--rebuild", expect_exit=0)

    rebuilder = threading.Thread(target=rebuild)
    rebuilder.start()
    try:
        for _ in range(30):
            _, out, err = tally("history", "--data", data, "--json", "s0", "i0", expect_exit=0)
            assert len(text(out).splitlines()) == 20000, (len(text(out).splitlines()), err)
            _, out, _ = tally("balance", "--data", data, "--at-seq", "15000", "s0", "i0",
                              expect_exit=0)
            assert text(out) == "available=15000 held=0\n", text(out)
    finally:
        stop = True
        rebuilder.join()


def test_point_in_time_reads_match_a_brute_force():
    h = history_fixture()
    rng = random.Random(7)
    # Around the index's end and the middle snapshot, the ends, and a few at random.
    seqs = sorted({0, h.half_seq - 1, h.half_seq, h.half_seq + 1, h.last_seq} |
                  set(rng.sample(range(1, h.last_seq), 2)))
    expected = balances_at(h.events, seqs)
    subjects = sorted({s for s, _ in expected[h.last_seq]})
    for data in h.dirs():
        for seq in seqs:
            want = expected[seq]
            _, out, _ = tally("export", "--data", data, "--at-seq", str(seq), expect_exit=0)
            assert text(out).splitlines() == export_lines(want), (data, seq)
            if seq == h.half_seq + 1:
                _, out, _ = tally("export", "--data", data, "--at-seq", str(seq), "--json",
                                  expect_exit=0)
                rows = [json.loads(line) for line in text(out).splitlines()]
                assert {(r["subject"], r["item"]): [r["available"], r["held"]]
                        for r in rows} == want
            if seq not in (0, h.half_seq - 1, h.half_seq + 1):
                continue  # list and balance take the same paths as export
            subject = rng.choice(subjects)
            _, out, _ = tally("list", "--data", data, "--at-seq", str(seq), subject, expect_exit=0)
            assert text(out).splitlines() == [line.split(",", 1)[1] for line in export_lines(want)
                                              if line.split(",")[0] == subject], (data, seq)
            pair = rng.choice(sorted(expected[h.last_seq]))
            _, out, _ = tally("balance", "--data", data, "--at-seq", str(seq), "--json", *pair,
                              expect_exit=0)
            available, held = want.get(pair, [0, 0])
            assert json.loads(text(out)) == {"subject": pair[0], "item": pair[1],
                                             "available": available, "held": held}, (data, seq)
        # Past the end: a valid command about a state that does not exist.
        code, out, err = tally("balance", "--data", data, "--at-seq", str(h.last_seq + 1),
                               "s1", "i1")
        assert code == 1 and out == b"" and "past the end of the log" in err, (code, err)


def rfc3339_with_offset(stamp, hours):
    """The same instant as a "...Z" stamp, written with a +HH:00 offset."""
    import datetime
    whole, fraction = stamp[:-1].split(".")
    moment = datetime.datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S") + datetime.timedelta(hours=hours)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + "." + fraction + "+%02d:00" % hours


def test_at_time_includes_an_event_stamped_exactly_then():
    h = history_fixture()
    picks = [h.events[0], h.events[h.half_seq - 1], h.events[h.half_seq],
             random.Random(3).choice(h.events)]
    for data in h.dirs():
        for event in picks:
            t = event["time"]
            spellings = [(str(t), t), (str(t - 1), t - 1)]
            if event is picks[-1] or data == h.complete:
                spellings += [(event["time_rfc3339"], t),
                              (rfc3339_with_offset(event["time_rfc3339"], 2), t)]
            for spelling, point in spellings:
                seq = seq_at_time(h.events, point)
                assert point != t or seq >= event["seq"]
                want = export_lines(balances_at(h.events, [seq])[seq])
                _, out, _ = tally("export", "--data", data, "--at-time", spelling, expect_exit=0)
                assert text(out).splitlines() == want, (data, spelling, seq)
        _, out, _ = tally("export", "--data", data, "--at-time", "1970-01-01T00:00:00Z",
                          expect_exit=0)
        assert out == b""


def test_export_at_the_last_seq_is_export():
    f = fixture()
    last = str(len(f.events))
    for flags in ([], ["--json"]):
        _, now, _ = tally("export", "--data", f.data, *flags, expect_exit=0)
        _, at, err = tally("export", "--data", f.data, "--at-seq", last, *flags, expect_exit=0)
        assert at == now, flags
    h = history_fixture()
    for data in h.dirs():
        _, now, _ = tally("export", "--data", data, expect_exit=0)
        _, at, _ = tally("export", "--data", data, "--at-seq", str(h.last_seq), expect_exit=0)
        assert at == now, data


def parse_history(out):
    rows = []
    for line in text(out).splitlines():
        match = HISTORY_LINE.match(line)
        assert match, line
        seq, time, op, key, da, dh, available, held = match.groups()
        rows.append((int(seq), time, key, op, int(da), int(dh), int(available), int(held)))
    return rows


def test_history_lists_every_change_of_a_pair():
    h = history_fixture()
    final = balances_at(h.events, [h.last_seq])[h.last_seq]
    time_text = {e["seq"]: e["time_rfc3339"] for e in h.events}
    pairs = sorted(final)[:3] + [("s0", "no-such-item")]
    for pair in pairs:
        changes = pair_changes(h.events, *pair)
        outputs = []
        for data in h.dirs():
            _, out, err = tally("history", "--data", data, "--json", *pair, expect_exit=0)
            rows = [json.loads(line) for line in text(out).splitlines()]
            assert [(r["seq"], r["time"], r["key"], r["op"], r["delta_available"], r["delta_held"])
                    for r in rows] == changes, (data, pair)
            available = held = 0
            for r in rows:
                available += r["delta_available"]
                held += r["delta_held"]
                assert (r["available"], r["held"]) == (available, held), r
            assert [available, held] == final.get(pair, [0, 0]), pair
            outputs.append(out)
            if data != h.complete:
                continue  # the text form is printed by the same code
            _, out, _ = tally("history", "--data", data, *pair, expect_exit=0)
            assert [(seq, time, key, op, da, dh, a, hd) for seq, time, key, op, da, dh, a, hd
                    in parse_history(out)] == [
                (r["seq"], time_text[r["seq"]], r["key"], r["op"], r["delta_available"],
                 r["delta_held"], r["available"], r["held"]) for r in rows], (data, pair)
        assert outputs[0] == outputs[1] == outputs[2], pair


def test_history_seq_bounds():
    h = history_fixture()
    pair = max(balances_at(h.events, [h.last_seq])[h.last_seq])
    _, out, _ = tally("history", "--data", h.complete, "--json", *pair, expect_exit=0)
    full = [json.loads(line) for line in text(out).splitlines()]
    assert len(full) > 4, full
    bounds = [(1, h.last_seq), (full[1]["seq"], full[-2]["seq"]), (full[1]["seq"] + 1, h.half_seq),
              (h.half_seq, h.half_seq + 40), (h.half_seq + 1, h.last_seq + 100)]
    for from_seq, to_seq in bounds:
        want = [r for r in full if from_seq <= r["seq"] <= to_seq]
        for data in h.dirs():
            _, out, _ = tally("history", "--data", data, "--json", "--from-seq", str(from_seq),
                              "--to-seq", str(to_seq), *pair, expect_exit=0)
            assert [json.loads(line) for line in text(out).splitlines()] == want, \
                (data, from_seq, to_seq)


def test_verify_reports_snapshots_and_the_history_index():
    h = history_fixture()
    for data, standing, history_seq in ((h.behind, "usable", h.half_seq),
                                        (h.complete, "usable", h.last_seq)):
        _, out, err = tally("verify", "--data", data, "--json", expect_exit=0)
        assert err == "", err
        report = json.loads(text(out))
        assert report["ok"] and report["flows"] == "ok" and report["from_seq"] == 1
        assert report["to_seq"] == report["log_last_seq"] == h.last_seq, report
        assert [(s["seq"], s["status"]) for s in report["snapshots"]] == \
            [(h.half_seq, "ok"), (h.last_seq, "ok")], report
        history = report["history"]
        assert (history["standing"], history["seq"], history["log_last_seq"], history["balances"]) \
            == (standing, history_seq, h.last_seq, "match"), history
    _, out, _ = tally("verify", "--data", h.absent, "--json", expect_exit=0)
    assert json.loads(text(out))["history"] is None
    _, out, _ = tally("verify", "--data", h.absent, expect_exit=0)
    lines = text(out).splitlines()
    assert lines[0] == "ok: checksums, chain, invariants and flows verify", lines
    assert "history: none" in lines and "flows: ok" in lines, lines
    assert "snapshot %d: ok" % h.half_seq in " ".join(lines), lines
    # From the middle: the replay starts at the snapshot, flows cannot be checked.
    _, out, _ = tally("verify", "--data", h.complete, "--from-seq", str(h.half_seq + 10),
                      "--to-seq", str(h.last_seq - 5), "--json", expect_exit=0)
    report = json.loads(text(out))
    assert report["ok"] and report["flows"] == "skipped", report
    assert report["snapshot_start"] == h.half_seq and report["from_seq"] == h.half_seq + 1
    assert report["to_seq"] == h.last_seq - 5 and report["events"] == h.last_seq - 5 - h.half_seq
    assert [s["status"] for s in report["snapshots"]] == ["unchecked", "unchecked"], report
    assert report["history"]["balances"] == "unchecked", report
    _, out, _ = tally("verify", "--data", h.complete, "--from-seq", str(h.half_seq + 10),
                      expect_exit=0)
    assert text(out).splitlines()[0].startswith("ok: checksums, chain and invariants verify")
    assert "flows: skipped" in text(out).splitlines()
    # From the last seq, one event is checked; past it, none could be: that is no pass.
    _, out, _ = tally("verify", "--data", h.complete, "--from-seq", str(h.last_seq), "--json",
                      expect_exit=0)
    assert json.loads(text(out))["from_seq"] <= h.last_seq
    code, out, err = tally("verify", "--data", h.complete, "--from-seq", str(h.last_seq + 1))
    assert code == 1 and out == b"" and \
        "--from-seq %d is past the end of the log (last seq %d)" % (h.last_seq + 1, h.last_seq) \
        in err, (code, err)


def test_verify_fails_on_a_history_index_that_does_not_open():
    data, report = verify_an_unreadable_store("history", ["history", "--rebuild"],
                                              "failed: history index (")
    assert report["history"]["standing"] == "unreadable", report
    # A ledger with its history off leaves the index where it is, as verify says.
    Server(data, "--history", "off").stop()
    assert not os.path.exists(os.path.join(data, "history.damaged")), os.listdir(data)
    code, _, err = tally("verify", "--data", data)
    assert code == 1 and "MDB_INVALID" in err and "with its history on" in err, (code, err)
    # A rebuild moves it aside and makes a new one.
    tally("history", "--data", data, "--rebuild", expect_exit=0)
    assert os.path.isdir(os.path.join(data, "history.damaged")), os.listdir(data)
    tally("verify", "--data", data, expect_exit=0)


def test_verify_finds_a_history_entry_moved_by_a_flipped_key_bit():
    # The index's first entry — epoch 1, pair 1, seq 1 — moved to seq 0 by one
    # flipped bit of its key: no read that seeks it finds it.
    f = fixture()
    data = f.copy_data("moved-history-entry")
    tally("history", "--data", data, "--rebuild", expect_exit=0)
    _, before, _ = tally("export", "--data", data, "--at-seq", "1", expect_exit=0)
    path = os.path.join(data, "history", "data.mdb")
    with open(path, "rb") as file:
        image = bytearray(file.read())
    key = struct.pack(">QQQ", 1, 1, 1)
    at = image.find(key)
    assert at >= 0
    while at >= 0:  # stale copies in free pages too
        image[at + 23] ^= 0x01
        at = image.find(key, at + 1)
    with open(path, "wb") as file:
        file.write(image)
    code, out, err = tally("verify", "--data", data)
    assert code == 1 and "history index (" in err, (code, err)
    assert re.search(r"^history: seq \d+ of \d+, chain matches, balances differ: corrupt: ",
                     text(out), re.M), text(out)
    # Reads answer from the log.
    _, after, _ = tally("export", "--data", data, "--at-seq", "1", expect_exit=0)
    assert after == before


def lmdb_free_pages(image, page_bytes=4096):
    """The pages on an LMDB file's free list (free for reuse: what they hold
    is read by nobody), as the newer meta page has it; None where the list is
    more than one leaf page of inline records."""
    metas = []
    for meta in (0, 1):
        # After the page header: magic, version, address, map size (24
        # bytes), then the free list's MDB_db (48 bytes: its root last), the
        # main one's, the last page number and the txnid.
        at = meta * page_bytes + 16 + 24
        root = struct.unpack_from("<Q", image, at + 40)[0]
        txnid = struct.unpack_from("<Q", image, at + 96 + 8)[0]
        metas.append((txnid, root))
    root = max(metas)[1]
    if root == 2**64 - 1:
        return set()
    page = image[root * page_bytes:(root + 1) * page_bytes]
    flags, lower = struct.unpack_from("<HH", page, 10)
    if flags != 0x02:  # P_LEAF alone
        return None
    free = set()
    for index in range((lower - 16) // 2):
        node = struct.unpack_from("<H", page, 16 + 2 * index)[0]
        low, high, node_flags, key_bytes = struct.unpack_from("<HHHH", page, node)
        if node_flags != 0:
            return None
        record = page[node + 8 + key_bytes:node + 8 + key_bytes + (low | high << 16)]
        count = struct.unpack_from("<Q", record, 0)[0]
        free.update(struct.unpack_from("<%dQ" % count, record, 8))
    return free


def test_a_history_page_that_aborts_lmdb_is_named():
    # LMDB asserts on some damaged pages (where it is built with assertions)
    # and the process ends; before it does, tally names the store and what
    # to do. Zero one page in use after another until a read aborts.
    f = fixture()
    data = f.copy_data("aborting-history")
    tally("history", "--data", data, "--rebuild", expect_exit=0)
    path = os.path.join(data, "history", "data.mdb")
    with open(path, "rb") as file:
        image = file.read()
    free = lmdb_free_pages(image)
    assert free is not None
    aborted = None
    for page in range(2, len(image) // 4096):
        if page in free:
            continue
        damaged = image[:page * 4096] + bytes(4096) + image[(page + 1) * 4096:]
        with open(path, "wb") as file:
            file.write(damaged)
        code, _, err = tally("verify", "--data", data)
        assert code in (1, -signal.SIGABRT), (page, code, err)
        if code == -signal.SIGABRT:
            aborted = err
            break
    if aborted is None:
        return  # this LMDB has no assertions (built with NDEBUG)
    assert "tally: %s is damaged (LMDB: " % os.path.join(data, "history") in aborted, aborted
    with open(path, "wb") as file:
        file.write(image)


def test_point_in_time_reads_over_a_damaged_history_page_answer_from_the_log():
    # LMDB follows a page's node offsets unchecked: the high bit of a page's
    # lower bound flipped would send it past the page. A small index is
    # walked before any read, so every such read answers, from the log.
    h = history_fixture()
    data = os.path.join(new_dir("damaged-history-reads"), "data")
    shutil.copytree(h.complete, data)
    path = os.path.join(data, "history", "data.mdb")
    with open(path, "rb") as file:
        image = file.read()
    acquired = next(event for event in h.events if event["type"] == "acquire")
    subject, item = acquired["subject"], acquired["item"]
    seq = str(h.last_seq // 2)
    reads = [("balance", "--data", data, subject, item, "--at-seq", seq),
             ("list", "--data", data, subject, "--at-seq", seq),
             ("history", "--data", data, subject, item)]
    expected = [tally(*read, expect_exit=0)[1] for read in reads]
    free = lmdb_free_pages(image)
    assert free is not None
    damaged_pages = 0
    for page in range(2, len(image) // 4096):
        if page in free:
            continue
        damaged = bytearray(image)
        damaged[page * 4096 + 13] ^= 0x80
        with open(path, "wb") as file:
            file.write(damaged)
        for read, want in zip(reads, expected):
            code, out, err = tally(*read)
            assert code == 0 and out == want, (page, read[0], code, err)
            damaged_pages += "damaged" in err or "not using the history index" in err
    assert damaged_pages > 0


def test_a_history_index_found_damaged_stops_alone():
    # Zero one page of the index after another until a ledger finds it
    # corrupt: the history stops and moves aside, snapshots go on, and the
    # ledger's answers stay right.
    f = fixture()
    base = f.copy_data("damaged-history-base")
    tally("history", "--data", base, "--rebuild", expect_exit=0)
    with open(os.path.join(base, "history", "data.mdb"), "rb") as file:
        image = file.read()
    csv = write(os.path.join(SCRATCH, "more.csv"), HEADER + "".join(
        "acquire,more-%d,s%d,i1,5,,,\n" % (n, n % 13) for n in range(300)))
    found = False
    for page in range(2, len(image) // 4096):
        data = os.path.join(SCRATCH, "damaged-history-%d" % page)
        shutil.copytree(base, data)
        with open(os.path.join(data, "history", "data.mdb"), "r+b") as file:
            file.seek(page * 4096)
            file.write(bytes(4096))
        code, _, err = tally("apply", "--data", data, "--workload", csv, "--snapshot-every", "100")
        if code == 0 and "tally: the history index stopped: corrupt: " in err:
            found = True
            break
        shutil.rmtree(data)
    assert found
    assert "snapshots and history stopped" not in err, err
    assert os.path.isdir(os.path.join(data, "history.damaged")), os.listdir(data)
    assert not os.path.exists(os.path.join(data, "history"))  # the next open makes it anew
    clean = f.copy_data("damaged-history-clean")
    tally("apply", "--data", clean, "--workload", csv, expect_exit=0)
    for at in ([], ["--at-seq", str(len(f.events) + 1)]):
        _, out, _ = tally("export", "--data", data, *at, expect_exit=0)
        _, expected, _ = tally("export", "--data", clean, *at, expect_exit=0)
        assert out == expected, at
    tally("verify", "--data", data, expect_exit=0)


def test_a_snapshot_store_found_damaged_stops_alone():
    # Every open reads the store's pages before LMDB does, so the damage comes
    # under a running server: zero one page of the store after another until
    # the server, writing a snapshot, finds it corrupt: the snapshots stop and
    # move aside, the history goes on, and the server serves on.
    f = fixture()
    base = f.copy_data("damaged-snapshots-base")
    csv = write(os.path.join(SCRATCH, "later.csv"), HEADER + "".join(
        "acquire,later-%d,s%d,i1,5,,,\n" % (n, n % 13) for n in range(300)))
    tally("apply", "--data", base, "--workload", csv, "--snapshot-every", "0",
          "--snapshot-seconds", "0", expect_exit=0)
    # A snapshot of the last event: none is due when a server opens.
    tally("snapshot", "--data", base, expect_exit=0)
    with open(os.path.join(base, "snapshots", "data.mdb"), "rb") as file:
        pages = len(file.read()) // 4096
    found = None
    for page in range(2, pages):
        data = os.path.join(SCRATCH, "damaged-snapshots-%d" % page)
        shutil.copytree(base, data)
        server = Server(data, "--snapshot-every", "100", "--snapshot-seconds", "0")
        try:
            with open(os.path.join(data, "snapshots", "data.mdb"), "r+b") as file:
                file.seek(page * 4096)
                file.write(bytes(4096))
            for n in range(100):  # a snapshot falls due
                server.post("/v1/acquire", {"subject": "s2", "item": "i1", "qty": 1}, "due-%d" % n)
            for _ in range(1000):
                if (server.metric("tally_snapshots_failed") or
                        server.metric("tally_last_snapshot_seq") > len(f.events) + 300):
                    break
                time.sleep(0.01)
            if server.metric("tally_snapshots_failed") == 1:
                found = server
                assert server.metric("tally_archivist_failed") == 0
                assert server.get("/v1/balances/s1/i1?at_seq=%d" % len(f.events)) is not None
                server.post("/v1/acquire", {"subject": "s1", "item": "i1", "qty": 1},
                            "after-damage")
                break
        except OSError:  # LMDB died on the page (SIGABRT, SIGSEGV)
            assert server.proc.poll() is not None
        finally:
            if found is None:
                server.proc.kill()
                server.proc.wait()
        shutil.rmtree(data)
    assert found is not None
    assert "tally: snapshots stopped: corrupt: " in found.stop()
    assert os.path.isdir(os.path.join(data, "snapshots.damaged")), os.listdir(data)
    tally("verify", "--data", data, expect_exit=0)
    _, out, _ = tally("balance", "--data", data, "s1", "i1", expect_exit=0)
    _, before, _ = tally("balance", "--data", base, "s1", "i1", expect_exit=0)
    available = lambda line: int(text(line).split()[0].split("=")[1])
    assert available(out) == available(before) + 1


def test_a_stale_history_index_is_not_used():
    # An index of another, longer log is not used by the reads. verify cannot tell it from an
    # index of events this log lost, and fails.
    h = history_fixture()
    f = fixture()
    index_source = f.copy_data("other-index")
    tally("history", "--data", index_source, "--rebuild", expect_exit=0)
    assert len(f.events) > h.last_seq
    data = os.path.join(new_dir("stale-index"), "data")
    shutil.copytree(h.absent, data)
    shutil.copytree(os.path.join(index_source, "history"), os.path.join(data, "history"))
    _, out, err = tally("verify", "--data", data, "--json", expect_exit=1)
    history = json.loads(text(out))["history"]
    assert history["standing"] == "ahead", history
    assert "events after it are lost" in err, err
    seq = h.half_seq + 3
    want = export_lines(balances_at(h.events, [seq])[seq])
    _, out, err = tally("export", "--data", data, "--at-seq", str(seq), expect_exit=0)
    assert text(out).splitlines() == want and "not using the history index" in err, err
    pair = sorted(balances_at(h.events, [h.last_seq])[h.last_seq])[0]
    _, out, _ = tally("history", "--data", data, "--json", *pair, expect_exit=0)
    assert [(r["seq"], r["delta_available"], r["delta_held"])
            for r in map(json.loads, text(out).splitlines())] == \
        [(c[0], c[4], c[5]) for c in pair_changes(h.events, *pair)]


def test_verify_fails_when_a_snapshot_or_the_index_holds_events_the_log_lost():
    # Both describe only durable events, so a log that ends before them lost events: its last
    # record damaged (a torn tail to the reader) or the file cut at a frame boundary (a clean
    # end). Either way verify names where the log ends and exits 1.
    h = history_fixture()
    for how in ("damaged", "cut"):
        for kept in ("snapshots", "history"):
            data = os.path.join(new_dir("lost-%s-%s" % (how, kept)), "data")
            shutil.copytree(h.complete, data)
            shutil.rmtree(os.path.join(data, "history" if kept == "snapshots" else "snapshots"))
            segment = only_segment(data)
            offset, length = segment_frames(segment)[-1]
            if how == "damaged":
                flip_byte(segment, offset + FRAME_HEADER_BYTES + length - 1)
            else:
                os.truncate(segment, offset)
            code, out, err = tally("verify", "--data", data)
            where = ("the log ends at seq %d (segment %s offset %d): the 1 event after it is lost"
                     % (h.last_seq - 1, os.path.basename(segment), offset))
            assert code == 1 and where in err, (how, kept, code, err)
            assert text(out).startswith("failed: "), (how, kept, text(out))
            assert ("torn_tail: none" in text(out)) == (how == "cut"), text(out)
            # The reads of today's balances answer from the log, and say what it lost.
            lost = "the 1 event after seq %d is lost" % (h.last_seq - 1)
            for read in (("balance", "s1", "i1"), ("list", "s1"), ("export",)):
                code, _, err = tally(read[0], "--data", data, *read[1:])
                assert code == 0 and lost in err, (how, kept, read, code, err)
            # The log's listing says so when it reads to the log's end and a snapshot knows
            # more (it does not look at the index), not when it stops before.
            code, _, err = tally("log", "--data", data)
            assert code == 0 and (lost in err) == (kept == "snapshots"), (how, kept, code, err)
            code, _, err = tally("log", "--data", data, "--to-seq", "2")
            assert code == 0 and lost not in err, (how, kept, code, err)
            # So do the reads as of a seq or a time; those that would have used the index
            # pass it by.
            reads = [("balance", "--at-seq", "5", "s1", "i1"), ("export", "--at-seq", "5"),
                     ("list", "--at-time", str(2**63 - 1), "s1"), ("history", "s1", "i1")]
            for read in reads:
                code, _, err = tally(read[0], "--data", data, *read[1:])
                assert code == 0 and lost in err, (how, kept, read, code, err)
                assert ("not using the history index" in err) == (kept == "history"), \
                    (how, kept, read, err)
            if kept == "snapshots":
                # An index rebuilt from such a log is the log's, and says so.
                _, _, err = tally("history", "--data", data, "--rebuild", expect_exit=0)
                assert lost in err and "the index is the log's" in err, (how, err)


def test_log_time_and_type_filters():
    f = fixture()
    events = f.events

    def log(*args):
        _, out, _ = tally("log", "--data", f.data, "--json", *args, expect_exit=0)
        return [json.loads(line)["seq"] for line in text(out).splitlines()]

    lo, hi = events[len(events) // 3], events[2 * len(events) // 3]
    # Inclusive at both ends, in every spelling of a time.
    for since, until in ((str(lo["time"]), str(hi["time"])),
                         (lo["time_rfc3339"], hi["time_rfc3339"]),
                         (rfc3339_with_offset(lo["time_rfc3339"], 3), hi["time_rfc3339"])):
        assert log("--since", since, "--until", until) == \
            [e["seq"] for e in events if lo["time"] <= e["time"] <= hi["time"]]
    assert log("--since", str(lo["time"] + 1), "--until", str(hi["time"] - 1)) == \
        [e["seq"] for e in events if lo["time"] < e["time"] < hi["time"]]
    assert log("--until", str(events[0]["time"] - 1)) == []
    for types in ("hold", "commit,release", "rejected", "batch", "acquire,transfer,consume"):
        wanted = types.split(",")
        assert log("--type", types) == [e["seq"] for e in events if e["type"] in wanted], types
    assert log("--type", "hold")  # the workload has holds
    # Filters combine with AND.
    assert log("--type", "hold", "--subject", "s3", "--since", lo["time_rfc3339"]) == \
        [e["seq"] for e in events
         if e["type"] == "hold" and e["subject"] == "s3" and e["time"] >= lo["time"]]


def main():
    global SCRATCH
    os.makedirs(SCRATCH_ROOT, exist_ok=True)
    SCRATCH = tempfile.mkdtemp(prefix="run-", dir=SCRATCH_ROOT)
    tests = [(name, fn) for name, fn in sorted(globals().items())
             if name.startswith("test_") and callable(fn)]
    failed = 0
    for name, fn in tests:
        try:
            fn()
            print("PASS", name, flush=True)
        except Exception:  # every failure is reported, then the next test runs
            failed += 1
            print("FAIL", name, flush=True)
            traceback.print_exc()
    if failed:
        print("kept the scratch files of this run in", SCRATCH)
    else:
        shutil.rmtree(SCRATCH)
    print("%d passed, %d failed" % (len(tests) - failed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
