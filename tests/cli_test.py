#!/usr/bin/env python3
"""End-to-end checks of the tally command line's contract (docs/cli.md).

usage: cli_test.py TALLY SCRATCH_DIR

Every command is run as a user would run it: a generated workload is applied,
exported, logged, verified, corrupted and verified again. Each check is a
function named test_*; the last line printed is "N passed, N failed".
"""
import fcntl
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import traceback
import urllib.request

TALLY = os.path.abspath(sys.argv[1])
SCRATCH = os.path.abspath(sys.argv[2])

COMMANDS = ["apply", "bench", "export", "balance", "list", "log", "verify", "workload"]
OUTCOMES = ["ok", "insufficient", "overflow", "hold_unknown", "hold_expired", "hold_finalized",
            "invalid", "idempotency_conflict"]
APPLY_LINE = re.compile(rb"^([^,\n]+),(" + "|".join(OUTCOMES).encode() + rb")(,[0-9]+)?(,replay)?$")
BENCH_LINE = re.compile(r"^ops=\d+ seconds=\d+\.\d{3} ops_per_s=\d+ p50_us=\d+ p99_us=\d+$")
EVENT_TYPES = {"acquire", "consume", "transfer", "hold", "commit", "release", "expire", "batch",
               "rejected"}
HEADER = "op,key,subject,item,qty,to,ttl_ms,hold_key\n"

# The log's byte layout (docs/log-format.md, log/format.h).
SEGMENT_HEADER_BYTES = 64
FRAME_HEADER_BYTES = 32
FRAME_LENGTH_OFFSET = 8


def tally(*args, expect_exit=None, stdin=None):
    """Runs tally; returns (exit code, stdout bytes, stderr text)."""
    proc = subprocess.run([TALLY, *args], input=stdin, capture_output=True, timeout=300)
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
    _, out, _ = tally("help", "apply", expect_exit=0)
    assert text(out).startswith("usage: tally apply")
    # Help wins even over a missing required flag.
    tally("apply", "--help", "--data", expect_exit=0)


def test_usage_errors_exit_2():
    f = fixture()
    cases = [
        [],
        ["frobnicate"],
        ["serve"],
        ["apply", "--workload", f.csv],
        ["apply", "--data", f.data],
        ["apply", "--data", f.data, "--workload", f.csv, "--pipeline", "0"],
        ["apply", "--data", f.data, "--workload", f.csv, "--pipeline", "many"],
        ["apply", "--data", f.data, "--workload", f.csv, "--durability", "eventually"],
        ["apply", "--data", f.data, "--workload", f.csv, "--bogus"],
        ["apply", "--data", f.data, "--workload", f.csv, "extra"],
        ["apply", "--data", f.data, "--workload", os.path.join(SCRATCH, "missing.csv")],
        ["bench", "--data", f.data, "--workload", f.csv, "--expect", os.path.join(SCRATCH, "no")],
        ["export"],
        ["export", "--data", f.data, "--json=yes"],
        ["balance", "--data", f.data, "s1"],
        ["list", "--data", f.data],
        ["log", "--data", f.data, "--from-seq", "-3"],
        ["log", "--data", f.data, "--to-seq", "1.5"],
        ["verify", "--data"],
        ["workload", "--subjects", "10", "--ops", "10"],
        ["workload", "--subjects", "x", "--ops", "10", "--out", "-"],
        ["workload", "--subjects", "10", "--ops", "10", "--out", "-", "--retry-rate", "2"],
    ]
    for args in cases:
        code, out, err = tally(*args)
        assert code == 2, "%s: exit %d, stderr %s" % (args, code, err)
        assert err.startswith("tally: "), "%s: stderr %r" % (args, err)
        assert out == b"", args


def test_malformed_csv_names_the_line():
    d = new_dir("malformed")
    cases = {
        "op,key\n": "line 1",
        HEADER + "acquire,k1,s1,i1,5,,,\nacquire,k2,s1,i1,5,,\n": "line 3",
        HEADER + "acquire,k1,s1,i1,lots,,,\n": "line 2",
        HEADER + "steal,k1,s1,i1,5,,,\n": "line 2",
        HEADER + "commit,k1,,,,,,\n": "line 2",
        HEADER + "hold,k1,s1,i1,5,,soon,\n": "line 2",
    }
    for content, where in cases.items():
        csv = write(os.path.join(d, "bad.csv"), content)
        for command in ("apply", "bench"):
            code, out, err = tally(command, "--data", os.path.join(d, "data"), "--workload", csv)
            assert code == 2, (content, code, err)
            assert where in err and err.startswith("tally: "), (content, err)
            assert out == b""


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
    for args in (["export"], ["balance", "a", "b"], ["list", "a"], ["log"], ["verify"]):
        code, out, err = tally(args[0], "--data", missing, *args[1:])
        assert code == 1 and err.startswith("tally: ") and missing in err, (args, code, err)


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


def test_verify_accepts_a_torn_tail():
    f = fixture()
    data = f.copy_data("torn")
    segment = only_segment(data)
    offset, length = segment_frames(segment)[-1]
    flip_byte(segment, offset + FRAME_HEADER_BYTES + length - 1)
    code, out, err = tally("verify", "--data", data, "--json")
    assert code == 0, err
    report = json.loads(text(out))
    assert report["events"] == len(f.events) - 1
    assert report["torn_tail"] == {"segment": os.path.basename(segment), "offset": offset}, report


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

    def __init__(self, data):
        self.proc = subprocess.Popen([TALLY, "serve", "--data", data, "--listen", "127.0.0.1:0",
                                      "--http", "127.0.0.1:0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
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

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        assert code == 0, (code, text(self.proc.stderr.read()))


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


def test_bench_connect_usage():
    f = fixture()
    tally("bench", "--connect", "127.0.0.1:1", "--data", "x", "--workload", f.csv, expect_exit=2)
    tally("bench", "--data", "x", "--workload", f.csv, "--connections", "2", expect_exit=2)
    code, _, err = tally("bench", "--connect", "127.0.0.1:1", "--workload", f.csv)
    assert code == 1 and err, (code, err)


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


def main():
    os.makedirs(SCRATCH, exist_ok=True)
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
    print("%d passed, %d failed" % (len(tests) - failed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
