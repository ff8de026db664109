#!/usr/bin/env python3
"""Times a loopback transfer (S seeders -> N members, from the members' start to their verified
exit) with two builds of torrentnchill, run in turn (A B A B ...) so that a drifting machine
affects both alike. Prints each run, the medians and the ratio A/B.

    scripts/ab_transfer.py --a target/release --b /tmp/base/target/release --size 1G --runs 3
    scripts/ab_transfer.py --a target/release --private --size 1G --runs 3
    scripts/ab_transfer.py --a target/release --b /tmp/base --size 128M --part-size 64K --members 7

Besides the time, it reports the members' CPU seconds and context switches (from wait4).

With --private, A is a private swarm (composer --private: its key file beside the .orch, every
link encrypted) and B the public swarm of the same file, both run with --a's binaries.

Only 127.0.0.1 is used; every process it starts is stopped before it returns."""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def size_of(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def wait_line(proc, want, limit):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"process ended before printing {want!r}")
        if want in line:
            return line
    raise SystemExit(f"no {want!r} within {limit} s")


def seed_dir(work, i):
    return os.path.join(work, "seed" if i == 0 else f"seed{i}")


def run_once(bins, work, orch_text, members, seeder_count, limit, key_text=None):
    conductor = subprocess.Popen(
        [os.path.join(bins, "conductor"), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    procs = [conductor]
    try:
        addr = wait_line(conductor, "listening on", 10).split()[-1]
        orch = os.path.join(work, "f.bin.orch")
        with open(orch, "w") as out:
            out.write(addr + "\n" + orch_text.split("\n", 1)[1])
        key = orch + ".key"
        if os.path.exists(key):
            os.remove(key)
        if key_text is not None:
            with os.fdopen(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
                out.write(key_text)
        seeders = [subprocess.Popen(
            [os.path.join(bins, "member"), orch, "--dir", seed_dir(work, i), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            for i in range(seeder_count)]
        procs.extend(seeders)
        for seeder in seeders:
            wait_line(seeder, '"complete"', limit)
        dirs = []
        for i in range(members):
            d = os.path.join(work, f"m{i}")
            shutil.rmtree(d, ignore_errors=True)
            dirs.append(d)
        start = time.monotonic()
        fetchers = [subprocess.Popen(
            [os.path.join(bins, "member"), orch, "--dir", d, "--exit-when-done", "--json"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for d in dirs]
        procs.extend(fetchers)
        cpu, switches = 0.0, 0
        deadline = start + limit
        waiting = {f.pid: f for f in fetchers}
        while waiting:
            if time.monotonic() > deadline:
                raise SystemExit(f"members still running after {limit} s")
            pid, status, usage = os.wait4(-1, os.WNOHANG)
            if pid == 0:
                time.sleep(0.01)
                continue
            fetcher = waiting.pop(pid, None)
            if fetcher is None:
                continue
            fetcher.returncode = os.waitstatus_to_exitcode(status)
            if fetcher.returncode != 0:
                raise SystemExit(f"a member failed with exit code {fetcher.returncode}")
            cpu += usage.ru_utime + usage.ru_stime
            switches += usage.ru_nvcsw + usage.ru_nivcsw
        return time.monotonic() - start, cpu, switches
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="folder with build A's binaries")
    ap.add_argument("--b", help="folder with build B's binaries (the baseline)")
    ap.add_argument("--private", action="store_true",
                    help="A: a private swarm, B: the public swarm of the same file, both with --a")
    ap.add_argument("--size", default="1G")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--members", type=int, default=1)
    ap.add_argument("--seeders", type=int, default=1,
                    help="seeders, each with a hard link to the file (default 1)")
    ap.add_argument("--part-size", help="the composer's part size, e.g. 64K (default: its own)")
    ap.add_argument("--timeout", type=int, default=600)
    args = ap.parse_args()
    if args.private:
        args.b = args.b or args.a
    elif not args.b:
        ap.error("--b is needed (or --private)")
    work = tempfile.mkdtemp(prefix="ab-transfer-")
    try:
        os.makedirs(os.path.join(work, "seed"))
        data = os.path.join(work, "seed", "f.bin")
        with open(data, "wb") as out:
            left = size_of(args.size)
            while left > 0:
                chunk = os.urandom(min(left, 8 << 20))
                out.write(chunk)
                left -= len(chunk)
        for i in range(1, args.seeders):
            os.makedirs(seed_dir(work, i))
            os.link(data, os.path.join(seed_dir(work, i), "f.bin"))
        part_size = [args.part_size] if args.part_size else []
        subprocess.run([os.path.join(args.b, "composer"), data, "127.0.0.1:1"] + part_size +
                       ["-o", os.path.join(work, "f.bin.orch"), "-q"], check=True)
        orch_text = open(os.path.join(work, "f.bin.orch")).read()
        key_text = None
        if args.private:
            os.makedirs(os.path.join(work, "private"))
            private_orch = os.path.join(work, "private", "f.bin.orch")
            subprocess.run([os.path.join(args.a, "composer"), data, "127.0.0.1:1"] + part_size +
                           ["-o", private_orch, "-q", "--private"], check=True)
            key_text = open(private_orch + ".key").read()
        times = {"A": [], "B": []}
        cpus = {"A": [], "B": []}
        switches = {"A": [], "B": []}
        for run in range(args.runs):
            for name, bins in (("A", args.a), ("B", args.b)):
                key = key_text if name == "A" else None
                t, cpu, cs = run_once(bins, work, orch_text, args.members, args.seeders,
                                      args.timeout, key)
                times[name].append(t)
                cpus[name].append(cpu)
                switches[name].append(cs)
                print(f"run {run + 1} {name}: {t:.3f} s, members' CPU {cpu:.2f} s, "
                      f"{cs} context switches", flush=True)
        a, b = statistics.median(times["A"]), statistics.median(times["B"])
        ratios = [x / y for x, y in zip(times["A"], times["B"])]
        print(json.dumps({"size": args.size, "members": args.members, "seeders": args.seeders,
                          "runs": args.runs,
                          "private_a": args.private,
                          "median_a": round(a, 3), "median_b": round(b, 3),
                          "ratio_median": round(statistics.median(ratios), 3),
                          "part_size": args.part_size,
                          "cpu_median_a": round(statistics.median(cpus["A"]), 3),
                          "cpu_median_b": round(statistics.median(cpus["B"]), 3),
                          "switches_median_a": statistics.median(switches["A"]),
                          "switches_median_b": statistics.median(switches["B"]),
                          "a": [round(t, 3) for t in times["A"]],
                          "b": [round(t, 3) for t in times["B"]]}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
