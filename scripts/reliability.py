#!/usr/bin/env python3
"""Measure how members ride out conductor restarts and failures (issue 12), on 127.0.0.1.

    scripts/reliability.py [--size 96M] [--runs 3] [--down 3] [--no-build]

Three scenarios, each --runs times, with the release binaries (target/release, built first
unless --no-build) and a file of --size pseudo-random bytes in a temp folder (/dev/shm if
there is one):

1. "state": two seeders running, the conductor (`--state FILE`) stopped, a new member started,
   the conductor back --down seconds later on the same port: the time from its return (its
   `listening on` line) to the new member's verified exit. Target: 2 s.
2. "no state": the same without `--state`. Target: 5 s.
3. "two conductors": a .orch naming two conductors, two seeders; a member fetches with both up,
   then one conductor is killed (kill -9) and another member fetches: both times from start to
   verified exit, and the log lines the second member wrote. Target: no member notices beyond
   a log line (it completes as fast, exit 0).

Prints a markdown table (medians, and every run) on stdout, progress on stderr. Every process
it starts is killed by PID on exit, every wait is bounded, the temp folder is removed. Python
3.8+, stdlib only.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
MIB = 1 << 20
LIMIT = 60.0
TARGET_STATE = 2.0
TARGET_NO_STATE = 5.0

PROCS = []


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(args, **kw):
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, **kw)
    PROCS.append(p)
    return p


def stop(p, sig=signal.SIGTERM):
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_for(pred, what, timeout=LIMIT, step=0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise SystemExit(f"timed out waiting for {what}")


def start_conductor(port, state=None):
    """Starts a conductor on `port` and returns it with the moment it printed `listening on`."""
    args = [os.path.join(BIN, "conductor"), "--listen", f"127.0.0.1:{port}"]
    if state:
        args += ["--state", state]
    deadline = time.monotonic() + 20
    while True:
        p = spawn(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        line = p.stdout.readline().decode()
        if line.startswith("listening on"):
            return p, time.monotonic()
        # The port may serve for a moment as the local end of an outgoing connection.
        stop(p)
        if time.monotonic() > deadline:
            raise SystemExit(f"cannot start a conductor on port {port}: {line!r}")
        time.sleep(0.05)


def members_listed(port):
    out = subprocess.run(
        [os.path.join(BIN, "conductor"), "--stats", f"127.0.0.1:{port}", "--json"],
        capture_output=True, timeout=10,
    )
    if out.returncode != 0:
        return 0
    return json.loads(out.stdout)["members"]


def start_member(orch, folder, extra=()):
    os.makedirs(folder, exist_ok=True)
    out = open(folder + ".jsonl", "w")
    err = open(folder + ".log", "w")
    p = spawn(
        [os.path.join(BIN, "member"), orch, "--dir", folder, "--listen", "127.0.0.1:0",
         "--json", *extra],
        stdout=out, stderr=err,
    )
    return p, time.monotonic()


def wait_exit(p, what):
    wait_for(lambda: p.poll() is not None, what)
    t = time.monotonic()
    if p.returncode != 0:
        raise SystemExit(f"{what} exited {p.returncode}")
    return t


def seeders(work, orch, ports):
    """Two seeders of the sample, listed on every conductor in `ports`."""
    procs = []
    for name in ["seed1", "seed2"]:
        p, _ = start_member(orch, os.path.join(work, name))
        procs.append(p)
    for port in ports:
        wait_for(lambda: members_listed(port) >= 2, "the seeders to be listed", step=0.1)
    return procs


def restart_run(work, orch, port, down, state):
    """One run of scenarios 1 and 2: seconds from the conductor's return to the member's exit."""
    state_file = os.path.join(work, "state.json") if state else None
    if state_file and os.path.exists(state_file):
        os.remove(state_file)
    conductor, _ = start_conductor(port, state_file)
    seeds = seeders(work, orch, [port])
    stop(conductor)
    newcomer, _ = start_member(orch, os.path.join(work, "new"), ["--exit-when-done"])
    time.sleep(down)
    conductor, back = start_conductor(port, state_file)
    done = wait_exit(newcomer, "the new member")
    for p in [newcomer, *seeds, conductor]:
        stop(p)
    shutil.rmtree(os.path.join(work, "new"))
    return done - back


def two_conductors_run(work, sample, orch_text):
    """One run of scenario 3: (seconds with both up, seconds with one killed, its log lines)."""
    ports = [free_port(), free_port()]
    orch = os.path.join(work, "two.orch")
    with open(orch, "w") as f:
        f.write(f"127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}\n" + orch_text.split("\n", 1)[1])
    conductors = [start_conductor(port)[0] for port in ports]
    seeds = seeders(work, orch, ports)
    both, started = start_member(orch, os.path.join(work, "both"), ["--exit-when-done"])
    both_time = wait_exit(both, "the member with both conductors") - started
    stop(conductors[0], signal.SIGKILL)
    one, started = start_member(orch, os.path.join(work, "one"), ["--exit-when-done"])
    one_time = wait_exit(one, "the member with one conductor killed") - started
    with open(os.path.join(work, "one.log")) as f:
        # Everything but the summary line every member ends with.
        lines = [line for line in f if line.strip() and not line.startswith("done:")]
    for p in [*seeds, *conductors]:
        stop(p)
    for name in ["both", "one"]:
        shutil.rmtree(os.path.join(work, name))
    return both_time, one_time, lines


def parse_size(text):
    units = {"": 1, "K": 1 << 10, "M": MIB, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = text[-1] if text[-1] in units else ""
    return int(text[: len(text) - len(unit)]) * units[unit]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=parse_size, default=96 * MIB)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--down", type=float, default=3.0, help="seconds the conductor stays down")
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "--bins"], cwd=ROOT, check=True)
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    work = tempfile.mkdtemp(prefix="tnc-reliability-", dir=base)
    try:
        sample = os.path.join(work, "seed1", "sample.bin")
        os.makedirs(os.path.dirname(sample))
        with open(sample, "wb") as f:
            left = a.size
            while left:
                n = min(left, 8 * MIB)
                f.write(os.urandom(n))
                left -= n
        os.makedirs(os.path.join(work, "seed2"))
        os.link(sample, os.path.join(work, "seed2", "sample.bin"))
        port = free_port()
        orch = os.path.join(work, "sample.orch")
        subprocess.run(
            [os.path.join(BIN, "composer"), sample, f"127.0.0.1:{port}", "-o", orch, "-q"],
            check=True,
        )
        with open(orch) as f:
            orch_text = f.read()
        results = {"state": [], "no state": [], "two": []}
        for run in range(a.runs):
            for name, state in [("state", True), ("no state", False)]:
                t = restart_run(work, orch, port, a.down, state)
                log(f"run {run + 1}, {name}: done {t:.2f} s after the conductor came back")
                results[name].append(t)
            both, one, lines = two_conductors_run(work, sample, orch_text)
            log(f"run {run + 1}, two conductors: {both:.2f} s both up, {one:.2f} s one killed, "
                f"{len(lines)} log lines: {[l.strip()[:100] for l in lines]}")
            results["two"].append((both, one, len(lines)))
        print_table(a, results)
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)


def print_table(a, results):
    med = statistics.median
    runs = lambda xs: " / ".join(f"{x:.2f}" for x in xs)
    state, no_state, two = results["state"], results["no state"], results["two"]
    both = [t[0] for t in two]
    one = [t[1] for t in two]
    lines = [t[2] for t in two]
    size = f"{a.size // MIB} MiB"
    print(f"| Scenario ({size}, 127.0.0.1, conductor down {a.down:g} s) | median | runs | target |")
    print("|---|---|---|---|")
    print(f"| with `--state`: new member done after the conductor's return | {med(state):.2f} s "
          f"| {runs(state)} | ≤ {TARGET_STATE:g} s: {'met' if med(state) <= TARGET_STATE else 'MISSED'} |")
    print(f"| without `--state`: new member done after the conductor's return | {med(no_state):.2f} s "
          f"| {runs(no_state)} | ≤ {TARGET_NO_STATE:g} s: "
          f"{'met' if med(no_state) <= TARGET_NO_STATE else 'MISSED'} |")
    print(f"| two conductors, both up: member start to verified exit | {med(both):.2f} s "
          f"| {runs(both)} | |")
    print(f"| two conductors, one killed: member start to verified exit (log lines) | "
          f"{med(one):.2f} s ({med(lines):g}) | {runs(one)} | completes, a log line: "
          f"{'met' if max(lines) <= 1 else 'MISSED'} |")


if __name__ == "__main__":
    main()
