#!/usr/bin/env python3
"""Benchmark torrentnchill on this machine: hashing and loopback transfers, beside other tools.

    scripts/bench.py [--size 1G] [--runs 3] [--mem-check 4G] [--no-build] [--no-tools] ...

1. Hashing: times `composer` on a file of pseudo-random bytes (in the page cache), beside
   `openssl dgst -sha256`, `sha256sum` and (if installed) `mktorrent -l 20`.
2. Transfers on 127.0.0.1, from the downloaders' start to their verified exit: 1 seeder -> 1,
   1 seeder -> 4 starting together, 4 seeders -> 1; with `member` (a fresh conductor each run),
   and with aria2c and rqbit where installed (a tiny HTTP tracker in this script on 127.0.0.1).
3. A memory check: peak RSS of a member fetching a --mem-check sized file (4 GiB by default).

Every figure is the median of --runs runs. Prints a markdown table on stdout and writes it, with
the raw figures as JSON, under target/bench/ (or --out-md / --out-json). Every process it starts
is killed by PID on exit, every wait is bounded, and its temp folder is removed. Python 3.8+,
stdlib only. Progress goes to stderr.
"""
import argparse
import datetime
import http.server
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1 << 20
GIB = 1 << 30

# Targets from issue 3.
TARGET_COMPOSER_X_OPENSSL = 1.15
TARGET_RSS_MIB = 64
TARGET_MEMBER_X_OPENSSL = 2.0
TARGET_MEMBER_CPU_PER_GIB = 2.5


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def parse_size(text):
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(?:i?B)?\s*", text, re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (use e.g. 128M, 1G, 1073741824)")
    return int(m.group(1)) * {"": 1, "K": 1 << 10, "M": MIB, "G": GIB}[m.group(2).upper()]


def human_size(n):
    if n >= GIB and n % GIB == 0:
        return f"{n // GIB} GiB"
    if n >= MIB and n % MIB == 0:
        return f"{n // MIB} MiB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} B"


# --------------------------------------------------------------------------------------------
# Processes: everything started is registered, and killed by PID on the way out.

class Procs:
    def __init__(self):
        self.live = {}  # pid -> Popen
        self.lock = threading.Lock()

    def start(self, cmd, stdout=None, stderr=None, cwd=None, measure=False):
        """Starts cmd. With `measure`, its peak RSS is taken by /usr/bin/time -f %M (the rusage
        of a child forked from this Python process would count Python's own RSS), or else by
        polling VmHWM in /proc/PID/status; read it with peak_rss_kib(p)."""
        rss_file = None
        if measure and TIME:
            fd, rss_file = tempfile.mkstemp(prefix="rss.", dir=TMP[0])
            os.close(fd)
            cmd = [TIME, "-q", "-f", "%M", "-o", rss_file, *cmd]
        out = open(stdout, "wb") if stdout else subprocess.DEVNULL
        err = open(stderr, "wb") if stderr else subprocess.DEVNULL
        try:
            p = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd)
        finally:
            for f in (out, err):
                if f is not subprocess.DEVNULL:
                    f.close()
        p.rss_file, p.hwm = rss_file, None
        with self.lock:
            self.live[p.pid] = p
        if measure and not TIME:
            threading.Thread(target=self.poll_hwm, args=(p,), daemon=True).start()
        return p

    def poll_hwm(self, p):
        while p.pid in self.live:
            try:
                p.hwm = proc_hwm_kib(p.pid) or p.hwm
            except OSError:
                return
            time.sleep(0.02)

    def reaped(self, p, status):
        p.returncode = os.waitstatus_to_exitcode(status)
        with self.lock:
            self.live.pop(p.pid, None)

    def stop(self, p, grace=5.0):
        """SIGTERM, wait up to `grace` s, then SIGKILL. Returns the rusage of the process."""
        if p.pid not in self.live:
            return None
        kill_tree(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                self.reaped(p, status)
                return ru
            if time.monotonic() > deadline:
                kill_tree(p.pid, signal.SIGKILL)
                _, status, ru = os.wait4(p.pid, 0)
                self.reaped(p, status)
                return ru
            time.sleep(0.02)

    def stop_all(self):
        with self.lock:
            procs = list(self.live.values())
        for p in procs:
            kill_tree(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                self.stop(p, grace=3.0)
            except ChildProcessError:
                pass


TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
TMP = [None]  # the run's temp folder
PROCS = Procs()


def kill_tree(pid, sig):
    """Signals pid's descendants (by PID, from /proc/PID/task/*/children), then pid."""
    def children(p):
        out = []
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    out += [int(c) for c in f.read().split()]
        except OSError:
            pass
        return out

    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += [c for c in children(p) if c not in seen]
    for p in reversed(seen):
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def peak_rss_kib(p, ru):
    if p.rss_file:
        try:
            with open(p.rss_file) as f:
                return int(f.read().split()[-1])
        except (OSError, ValueError, IndexError):
            return None
    return p.hwm


def wait_many(procs, timeout):
    """Waits for every process (each in a thread, blocking wait4); kills those still running after
    `timeout` s. Returns [(end_time_monotonic, exit_code, rusage)] in order; None for a timeout."""
    results = [None] * len(procs)

    def waiter(i, p):
        _, status, ru = os.wait4(p.pid, 0)
        end = time.monotonic()
        PROCS.reaped(p, status)
        results[i] = (end, p.returncode, ru)

    threads = [threading.Thread(target=waiter, args=(i, p), daemon=True) for i, p in enumerate(procs)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for i, t in enumerate(threads):
        t.join(max(0.0, deadline - time.monotonic()))
    timed_out = [i for i, t in enumerate(threads) if t.is_alive()]
    for i in timed_out:
        kill_tree(procs[i].pid, signal.SIGKILL)
    for i in timed_out:
        threads[i].join(10)
        results[i] = None
    return results


def run_timed(cmd, timeout, stdout=None, stderr=None, cwd=None):
    """Runs cmd; returns dict(wall, cpu, rss_kib, code, stdout-path)."""
    t0 = time.monotonic()
    p = PROCS.start(cmd, stdout=stdout, stderr=stderr, cwd=cwd, measure=True)
    (res,) = wait_many([p], timeout)
    if res is None:
        raise RuntimeError(f"timed out after {timeout} s: {' '.join(cmd)}")
    end, code, ru = res
    if code != 0:
        tail = ""
        if stderr and os.path.exists(stderr):
            tail = open(stderr, errors="replace").read()[-500:]
        raise RuntimeError(f"exit {code}: {' '.join(cmd)}\n{tail}")
    return {"wall": end - t0, "cpu": ru.ru_utime + ru.ru_stime, "rss_kib": peak_rss_kib(p, ru)}


def proc_cpu(pid):
    """utime+stime of a running process, in seconds (from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def wait_for(pred, timeout, what, procs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{what}: process {p.pid} exited with {p.returncode}")
        time.sleep(0.02)
    raise RuntimeError(f"{what}: not within {timeout} s")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def json_events(path):
    out = []
    try:
        with open(path, errors="replace") as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
    except FileNotFoundError:
        pass
    return out


def log_tail(rundir, i):
    text = ""
    for ext in ("log", "err"):
        try:
            text += open(f"{rundir}/dl{i}.{ext}", errors="replace").read()
        except FileNotFoundError:
            pass
    return " / ".join(text.strip().splitlines()[-3:])[-400:] or "(no output)"


def same_file(a, b):
    return subprocess.run(["cmp", "-s", a, b], timeout=600).returncode == 0


# --------------------------------------------------------------------------------------------
# A minimal BitTorrent HTTP tracker on 127.0.0.1 (announce -> compact peer list), for aria2/rqbit.

def bencode(v):
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, str):
        v = v.encode()
    if isinstance(v, bytes):
        return b"%d:%s" % (len(v), v)
    if isinstance(v, list):
        return b"l" + b"".join(bencode(x) for x in v) + b"e"
    if isinstance(v, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, x) for k, x in v.items())
        return b"d" + b"".join(bencode(k) + bencode(x) for k, x in items) + b"e"
    raise TypeError(type(v))


class Tracker:
    def __init__(self):
        self.lock = threading.Lock()
        self.swarms = {}  # info_hash -> {peer_id: (ip, port, left)}
        tracker = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                q = urllib.parse.parse_qs(url.query, encoding="latin-1")
                try:
                    ih = q["info_hash"][0].encode("latin-1")
                    pid = q["peer_id"][0].encode("latin-1")
                    port = int(q["port"][0])
                    left = int(q.get("left", ["0"])[0])
                    event = q.get("event", [""])[0]
                    ip = self.client_address[0]
                    with tracker.lock:
                        sw = tracker.swarms.setdefault(ih, {})
                        if event == "stopped":
                            sw.pop(pid, None)
                        else:
                            sw[pid] = (ip, port, left)
                        others = [v for k, v in sw.items() if k != pid]
                        seeds = sum(1 for v in sw.values() if v[2] == 0)
                    compact = b"".join(socket.inet_aton(i) + p.to_bytes(2, "big") for i, p, _ in others)
                    body = bencode({"interval": 5, "min interval": 1, "complete": seeds,
                                    "incomplete": len(sw) - seeds, "peers": compact})
                except (KeyError, ValueError, OSError) as e:
                    body = bencode({"failure reason": f"bad announce: {e}"})
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/announce"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def reset(self):
        with self.lock:
            self.swarms.clear()

    def seeding_ports(self):
        with self.lock:
            return {p for sw in self.swarms.values() for _, p, left in sw.values() if left == 0}

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


# --------------------------------------------------------------------------------------------
# The tools: each knows how to start a seeder (and tell when it is ready) and a downloader.

class Member:
    name = "member"

    def __init__(self, bins, orch_template):
        self.bins = bins
        self.orch_template = orch_template  # the .orch lines, line 1 replaced per run
        self.conductor = None

    def setup_run(self, rundir):
        out, err = f"{rundir}/conductor.out", f"{rundir}/conductor.log"
        self.conductor = PROCS.start([f"{self.bins}/conductor", "--listen", "127.0.0.1:0",
                                      "--interval", "5s"], stdout=out, stderr=err)

        def addr():
            try:
                m = re.search(r"^listening on (\S+)", open(out).read(), re.M)
            except FileNotFoundError:
                return None
            return m and m.group(1)

        conductor = wait_for(addr, 30, "conductor listening", [self.conductor])
        self.orch = f"{rundir}/sample.orch"
        with open(self.orch, "w") as f:
            f.write("\n".join([conductor] + self.orch_template[1:]) + "\n")

    def teardown_run(self):
        if self.conductor:
            PROCS.stop(self.conductor)
            self.conductor = None

    def start_seeder(self, rundir, i, seeddir):
        jsonl = f"{rundir}/seed{i}.jsonl"
        p = PROCS.start([f"{self.bins}/member", self.orch, "--dir", seeddir, "--listen",
                         "127.0.0.1:0", "--json"], stdout=jsonl, stderr=f"{rundir}/seed{i}.log")
        return p, jsonl

    def seeder_ready(self, handle):
        return any(e.get("event") == "start" for e in json_events(handle[1]))

    def start_downloader(self, rundir, i, dldir):
        return PROCS.start([f"{self.bins}/member", self.orch, "--dir", dldir, "--listen",
                            "127.0.0.1:0", "--json", "--exit-when-done"],
                           stdout=f"{rundir}/dl{i}.jsonl", stderr=f"{rundir}/dl{i}.log", measure=True)


class TorrentTool:
    """Shared by aria2c and rqbit: a .torrent made by mktorrent, peers from our tracker."""

    def __init__(self, torrent, tracker):
        self.torrent = torrent
        self.tracker = tracker

    def setup_run(self, rundir):
        self.tracker.reset()

    def teardown_run(self):
        self.tracker.reset()

    def seeder_ready(self, handle):
        return handle[1] in self.tracker.seeding_ports()


class Aria2(TorrentTool):
    name = "aria2c"
    COMMON = ["--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
              "--enable-peer-exchange=false", "--file-allocation=falloc", "--summary-interval=0",
              "--console-log-level=warn", "--allow-overwrite=true", "--bt-max-peers=55"]

    def start_seeder(self, rundir, i, seeddir):
        port = free_port()
        p = PROCS.start(["aria2c", *self.COMMON, "--seed-ratio=0.0", "--bt-seed-unverified=true",
                         f"--listen-port={port}", f"--dir={seeddir}", self.torrent],
                        stdout=f"{rundir}/seed{i}.log", stderr=f"{rundir}/seed{i}.err")
        return p, port

    def start_downloader(self, rundir, i, dldir):
        # --bt-stop-timeout: a download stuck at 0 B/s for a minute fails instead of waiting out
        # --timeout (aria2c 1.36 now and then stalls with 4 downloaders and 1 seeder).
        return PROCS.start(["aria2c", *self.COMMON, "--seed-time=0", "--bt-stop-timeout=60",
                            f"--listen-port={free_port()}", f"--dir={dldir}", self.torrent],
                           stdout=f"{rundir}/dl{i}.log", stderr=f"{rundir}/dl{i}.err", measure=True)


class Rqbit(TorrentTool):
    """rqbit 9: `rqbit download` both ways. A seeder is `rqbit download` (no --exit-on-finish)
    into a folder that has the complete file: it checks it, then seeds it until killed."""
    name = "rqbit"

    def __init__(self, torrent, tracker, exe):
        super().__init__(torrent, tracker)
        self.exe = exe
        self.seed_ports = []

    def setup_run(self, rundir):
        super().setup_run(rundir)
        self.seed_ports = []

    def cmd(self, port, outdir, *extra):
        return [self.exe, "--disable-dht", "--disable-dht-persistence", "--disable-lsd",
                "--disable-upnp-port-forward", "--ipv4-only", "--listen-port", str(port),
                "download", "--disable-http-api", "--overwrite", "--output-folder", outdir,
                *extra, self.torrent]

    def start_seeder(self, rundir, i, seeddir):
        port = free_port()
        self.seed_ports.append(port)
        p = PROCS.start(self.cmd(port, seeddir), stdout=f"{rundir}/seed{i}.log",
                        stderr=f"{rundir}/seed{i}.err")
        return p, port

    def start_downloader(self, rundir, i, dldir):
        peers = ",".join(f"127.0.0.1:{p}" for p in self.seed_ports)
        return PROCS.start(self.cmd(free_port(), dldir, "--exit-on-finish", "--initial-peers", peers),
                           stdout=f"{rundir}/dl{i}.log", stderr=f"{rundir}/dl{i}.err", measure=True)


# --------------------------------------------------------------------------------------------

SCENARIOS = [("1to1", 1, 1), ("1to4", 1, 4), ("4to1", 4, 1)]
SCENARIO_LABEL = {"1to1": "1 seeder → 1", "1to4": "1 seeder → 4", "4to1": "4 seeders → 1"}


def transfer_run(tool, work, sample, size, n_seeders, n_dl, timeout, check_copies=True):
    rundir = tempfile.mkdtemp(prefix=f"{tool.name}-", dir=work)
    seeders = []
    try:
        tool.setup_run(rundir)
        handles = []
        for i in range(n_seeders):
            seeddir = f"{rundir}/seed{i}"
            os.mkdir(seeddir)
            os.link(sample, f"{seeddir}/{os.path.basename(sample)}")  # same inode: same page cache
            h = tool.start_seeder(rundir, i, seeddir)
            handles.append(h)
            seeders.append(h[0])
        for i, h in enumerate(handles):
            wait_for(lambda h=h: tool.seeder_ready(h), max(180, size / 20e6), f"{tool.name} seeder {i} ready",
                     [h[0]])
        cpu0 = [proc_cpu(p.pid) for p in seeders]

        dldirs = [f"{rundir}/dl{i}" for i in range(n_dl)]
        for d in dldirs:
            os.mkdir(d)
        t0 = time.monotonic()
        dls = [tool.start_downloader(rundir, i, d) for i, d in enumerate(dldirs)]
        results = wait_many(dls, timeout)
        seed_stats = []
        for i, (p, c0) in enumerate(zip(seeders, cpu0)):
            try:
                seed_stats.append({"cpu": proc_cpu(p.pid) - c0, "rss_kib": proc_hwm_kib(p.pid)})
            except OSError:
                raise RuntimeError(f"{tool.name} seeder {i} exited during the transfer (exit {p.poll()})")
        for p in seeders:
            PROCS.stop(p)
        tool.teardown_run()
        downloaders = []
        for i, r in enumerate(results):
            if r is None:
                raise RuntimeError(f"{tool.name} downloader {i} did not finish within {timeout} s: "
                                   + log_tail(rundir, i))
            end, code, ru = r
            if code != 0:
                raise RuntimeError(f"{tool.name} downloader {i} exited {code}: " + log_tail(rundir, i))
            copy = f"{dldirs[i]}/{os.path.basename(sample)}"
            if check_copies and not same_file(sample, copy):
                raise RuntimeError(f"{tool.name} downloader {i}: copy differs from the original")
            downloaders.append({"secs": end - t0, "cpu": ru.ru_utime + ru.ru_stime,
                                "rss_kib": peak_rss_kib(dls[i], ru)})
        wall = max(d["secs"] for d in downloaders)
        return {"wall": wall, "downloaders": downloaders, "seeders": seed_stats}
    finally:
        for p in seeders:
            PROCS.stop(p)
        tool.teardown_run()
        shutil.rmtree(rundir, ignore_errors=True)
        os.sync()  # the copies are gone: no write-back left to slow the next run


def make_file(path, size):
    chunk = 4 * MIB
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(chunk, left)
            f.write(os.urandom(n))
            left -= n


def warm(path):
    with open(path, "rb") as f:
        while f.read(8 * MIB):
            pass


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def machine_info():
    model = "?"
    flags = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    mem = "?"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    except OSError:
        pass

    def out(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            return None

    rev = out(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", ROOT, "diff", "--quiet", "HEAD", "--", "src", "Cargo.toml"],
                           capture_output=True).returncode != 0 if rev else False
    return {"nproc": os.cpu_count(), "cpu": model, "sha_ni": " sha_ni" in flags,
            "kernel": os.uname().release, "memory": mem, "git": (rev or "?") + ("+dirty" if dirty else ""),
            "openssl": out(["openssl", "version"])}


class LoadSampler:
    def __init__(self):
        self.samples = []
        self.stop_ev = threading.Event()
        self.t = threading.Thread(target=self.loop, daemon=True)
        self.t.start()

    def loop(self):
        while not self.stop_ev.is_set():
            self.samples.append(os.getloadavg()[0])
            self.stop_ev.wait(10)

    def stop(self):
        self.stop_ev.set()
        self.t.join(2)
        s = self.samples or [os.getloadavg()[0]]
        return {"min": min(s), "median": statistics.median(s), "max": max(s)}


def wait_for_quiet(max_load, max_wait):
    deadline = time.monotonic() + max_wait
    while True:
        l1 = os.getloadavg()[0]
        if l1 <= max_load:
            return l1
        if time.monotonic() >= deadline:
            log(f"load average still {l1:.2f} after {max_wait:.0f} s; running anyway")
            return l1
        log(f"load average {l1:.2f} > {max_load}; waiting (up to {deadline - time.monotonic():.0f} s more)")
        time.sleep(min(60, max(1, deadline - time.monotonic())))


# --------------------------------------------------------------------------------------------

def fmt(x, nd=2):
    return "–" if x is None else f"{x:.{nd}f}"


def mib(kib):
    return None if kib is None else kib / 1024


def verdict(ok, how):
    return ("**met**" if ok else "**not met**") + f" ({how})"


def summarize(res):
    """Medians of every figure, from the raw runs."""
    size = res["config"]["size"]
    s = {"hash": {}, "transfers": {}}
    for tool, runs in res["hash"].items():
        s["hash"][tool] = {k: median([r[k] for r in runs]) for k in ("wall", "cpu", "rss_kib")}
    ossl = s["hash"].get("openssl", {}).get("wall")
    for tool, scen in res["transfers"].items():
        for name, runs in scen.items():
            if not runs:
                continue
            nd, ns = len(runs[0]["downloaders"]), len(runs[0]["seeders"])
            m = {"wall": median([r["wall"] for r in runs]),
                 "dl_cpu": [median([r["downloaders"][i]["cpu"] for r in runs]) for i in range(nd)],
                 "dl_rss_kib": [median([r["downloaders"][i]["rss_kib"] for r in runs]) for i in range(nd)],
                 "seed_cpu": [median([r["seeders"][i]["cpu"] for r in runs]) for i in range(ns)],
                 "seed_rss_kib": [median([r["seeders"][i]["rss_kib"] for r in runs]) for i in range(ns)],
                 "runs": len(runs), "downloaders": nd}
            m["mb_s"] = nd * size / m["wall"] / 1e6
            m["x_openssl"] = m["wall"] / ossl if ossl else None
            m["dl_cpu_per_gib"] = max(m["dl_cpu"]) / (size / GIB)
            s["transfers"].setdefault(tool, {})[name] = m
    return s


def render(res):
    cfg, mach, s = res["config"], res["machine"], res["summary"]
    size = cfg["size"]
    L = []
    L.append(f"Machine: {mach['nproc']} × {mach['cpu']}{' (SHA-NI)' if mach['sha_ni'] else ''}, "
             f"{mach['memory']} RAM, Linux {mach['kernel']}; {mach['openssl']}; torrentnchill {mach['git']}.  ")
    ld = res["load"]
    L.append(f"Run {res['started']} UTC, {human_size(size)} file, median of {cfg['runs']} runs; "
             f"load average (1 min) before: {res['load_before']:.2f}, during: "
             f"{ld['min']:.2f}–{ld['max']:.2f} (median {ld['median']:.2f}).")
    L.append("")
    L.append(f"Command: `{cfg['command']}`")
    L.append("")
    L.append(f"**Hashing** a {human_size(size)} file in the page cache")
    L.append("")
    L.append("| tool | wall s | MB/s | × openssl | CPU s | peak RSS MiB |")
    L.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    ossl = s["hash"].get("openssl", {}).get("wall")
    labels = {"openssl": "`openssl dgst -sha256`", "sha256sum": "`sha256sum`",
              "composer": f"`composer` ({res.get('parts', '?')} parts of {human_size(res.get('part_size', 0))})",
              "mktorrent": "`mktorrent -l 20` (1 MiB pieces)"}
    for tool in ("openssl", "sha256sum", "composer", "mktorrent"):
        h = s["hash"].get(tool)
        if not h:
            continue
        L.append(f"| {labels[tool]} | {fmt(h['wall'])} | {size / h['wall'] / 1e6:.0f} | "
                 f"{fmt(h['wall'] / ossl if ossl else None)} | {fmt(h['cpu'])} | {fmt(mib(h['rss_kib']), 1)} |")
    L.append("")
    L.append(f"**Transfers** of the {human_size(size)} file over 127.0.0.1, from the downloaders' start "
             "to their verified exit (MB/s: bytes received by all downloaders / wall time)")
    L.append("")
    L.append("| tool | scenario | wall s | MB/s | × openssl | downloader CPU s | CPU s/GiB | "
             "seeder CPU s | downloader RSS MiB | seeder RSS MiB |")
    L.append("| --- | --- | ---: | ---: | ---: | --- | ---: | --- | --- | --- |")

    def lst(xs, nd=2):
        return ", ".join(fmt(x, nd) for x in xs)

    for tool, scen in s["transfers"].items():
        for name, m in scen.items():
            label = tool
            L.append(f"| {label} | {SCENARIO_LABEL[name]} | {fmt(m['wall'])} | {m['mb_s']:.0f} | "
                     f"{fmt(m['x_openssl'])} | {lst(m['dl_cpu'])} | {fmt(m['dl_cpu_per_gib'])} | "
                     f"{lst(m['seed_cpu'])} | {lst([mib(x) for x in m['dl_rss_kib']], 1)} | "
                     f"{lst([mib(x) for x in m['seed_rss_kib']], 1)} |")
    mc = res.get("mem_check")
    if mc:
        L.append("")
        if mc.get("skipped"):
            L.append(f"**Memory check**: skipped ({mc['skipped']}).")
        else:
            L.append(f"**Memory check**: a member fetching a {human_size(mc['size'])} file (1 seeder → 1, "
                     f"one run): peak RSS {mib(mc['dl_rss_kib']):.1f} MiB, {mc['wall']:.1f} s, "
                     f"{mc['dl_cpu']:.1f} CPU s; the seeder {mib(mc['seed_rss_kib']):.1f} MiB; "
                     f"`composer` on it: {mc['composer_wall']:.1f} s, peak RSS "
                     f"{mib(mc['composer_rss_kib']):.1f} MiB.")

    # Targets.
    L.append("")
    L.append("**Targets** (issue 3)")
    L.append("")
    L.append("| target | measured | verdict |")
    L.append("| --- | --- | --- |")
    comp = s["hash"].get("composer")
    if comp and ossl:
        x = comp["wall"] / ossl
        L.append(f"| composer ≤ {TARGET_COMPOSER_X_OPENSSL} × openssl | {x:.2f} × | "
                 f"{verdict(x <= TARGET_COMPOSER_X_OPENSSL, f'{(x / TARGET_COMPOSER_X_OPENSSL - 1) * 100:+.0f}% vs target')} |")
        r = mib(comp["rss_kib"])
        L.append(f"| composer peak RSS ≤ {TARGET_RSS_MIB} MiB | {r:.1f} MiB | "
                 f"{verdict(r <= TARGET_RSS_MIB, f'{r - TARGET_RSS_MIB:+.1f} MiB')} |")
    m11 = s["transfers"].get("member", {}).get("1to1")
    if m11:
        x = m11["x_openssl"]
        if x is not None:
            L.append(f"| member 1 → 1 ≤ {TARGET_MEMBER_X_OPENSSL} × openssl | {x:.2f} × | "
                     f"{verdict(x <= TARGET_MEMBER_X_OPENSSL, f'{(x / TARGET_MEMBER_X_OPENSSL - 1) * 100:+.0f}% vs target')} |")
        for other in ("rqbit", "aria2c"):
            o = s["transfers"].get(other, {}).get("1to1")
            if o:
                ok = m11["wall"] < o["wall"]
                L.append(f"| member 1 → 1 faster than {other} | {m11['wall']:.2f} s vs {o['wall']:.2f} s | "
                         f"{verdict(ok, '%.2f × as fast' % (o['wall'] / m11['wall']))} |")
            else:
                L.append(f"| member 1 → 1 faster than {other} | {other} not run | – |")
        c = m11["dl_cpu_per_gib"]
        L.append(f"| member CPU ≤ {TARGET_MEMBER_CPU_PER_GIB} CPU s per GiB | {c:.2f} CPU s/GiB | "
                 f"{verdict(c <= TARGET_MEMBER_CPU_PER_GIB, f'{c - TARGET_MEMBER_CPU_PER_GIB:+.2f}')} |")
    if mc and not mc.get("skipped"):
        r = mib(mc["dl_rss_kib"])
        L.append(f"| member peak RSS ≤ {TARGET_RSS_MIB} MiB fetching {human_size(mc['size'])} | {r:.1f} MiB | "
                 f"{verdict(r <= TARGET_RSS_MIB, f'{r - TARGET_RSS_MIB:+.1f} MiB')} |")
    elif m11:
        r = mib(max(m11["dl_rss_kib"]))
        L.append(f"| member peak RSS ≤ {TARGET_RSS_MIB} MiB (4 GiB check skipped; {human_size(size)} here) | "
                 f"{r:.1f} MiB | {verdict(r <= TARGET_RSS_MIB, f'{r - TARGET_RSS_MIB:+.1f} MiB')} |")
    m41 = s["transfers"].get("member", {}).get("4to1")
    if m11 and m41:
        ok = m41["wall"] <= m11["wall"]
        L.append(f"| member 4 seeders → 1 not slower than 1 → 1 | {m41['wall']:.2f} s vs {m11['wall']:.2f} s | "
                 f"{verdict(ok, '%+.0f%%' % ((m41['wall'] / m11['wall'] - 1) * 100))} |")
    if res["notes"]:
        L.append("")
        L.append("Notes:")
        L.append("")
        for n in res["notes"]:
            L.append(f"- {n}")
    return "\n".join(L) + "\n"


DOCS = os.path.join(ROOT, "docs", "BENCHMARKS.md")
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def write_docs(md):
    """Replaces what is between the markers of docs/BENCHMARKS.md (or writes a new file)."""
    block = f"{BEGIN}\n{md}{END}"
    try:
        text = open(DOCS).read()
    except FileNotFoundError:
        text = f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    with open(DOCS, "w") as f:
        f.write(head + block + tail)
    log(f"updated {DOCS}")


# --------------------------------------------------------------------------------------------

def main():
    env = os.environ.get
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Environment: BENCH_SIZE, BENCH_RUNS, BENCH_MEM_CHECK set the defaults "
                                        "of --size, --runs, --mem-check; TMPDIR where the files go.")
    ap.add_argument("--size", type=parse_size, default=parse_size(env("BENCH_SIZE", "1G")),
                    help="test file size, e.g. 128M, 1G (default 1G)")
    ap.add_argument("--runs", type=int, default=int(env("BENCH_RUNS", "3")),
                    help="runs of each measurement; figures are medians (default 3)")
    ap.add_argument("--mem-check", type=parse_size, default=parse_size(env("BENCH_MEM_CHECK", "4G")),
                    metavar="SIZE", help="size of the file for the member peak-RSS check (default 4G; 0: skip)")
    ap.add_argument("--scenarios", default="1to1,1to4,4to1", help="transfer scenarios (default all three)")
    ap.add_argument("--tools", default="member,aria2c,rqbit",
                    help="transfer tools to run, where installed (default member,aria2c,rqbit)")
    ap.add_argument("--other-scenarios", default="1to1,1to4,4to1",
                    help="scenarios for aria2c/rqbit (default all three)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds a transfer may take (default 600)")
    ap.add_argument("--wait-load", type=float, default=0, metavar="LOAD",
                    help="first wait until the 1-minute load average is at most LOAD (0: don't wait)")
    ap.add_argument("--wait-load-max", type=float, default=1200, metavar="SECS",
                    help="longest wait for --wait-load (default 1200)")
    ap.add_argument("--no-build", action="store_true", help="use target/release as it is")
    ap.add_argument("--rqbit", default=env("RQBIT", shutil.which("rqbit") or ""),
                    help="the rqbit binary (default: rqbit on PATH, or $RQBIT)")
    ap.add_argument("--write-docs", action="store_true",
                    help="also put the results into docs/BENCHMARKS.md (between its bench:begin/end markers)")
    ap.add_argument("--out-json", default=os.path.join(ROOT, "target", "bench", "bench.json"))
    ap.add_argument("--out-md", default=os.path.join(ROOT, "target", "bench", "bench.md"))
    a = ap.parse_args()
    if a.runs < 1:
        ap.error("--runs must be at least 1")
    if a.size < 1 * MIB:
        ap.error("--size must be at least 1M")

    # Ctrl-C / SIGTERM / SIGHUP: unwind through the finally below.
    def on_signal(signum, frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    work = tempfile.mkdtemp(prefix="torrentnchill-bench.")
    TMP[0] = work
    try:
        return bench(a, work)
    finally:
        PROCS.stop_all()
        shutil.rmtree(work, ignore_errors=True)


def bench(a, work):
    notes = []
    if not a.no_build:
        log("building release binaries...")
        subprocess.run(["cargo", "build", "--release", "--quiet", "--manifest-path",
                        os.path.join(ROOT, "Cargo.toml")], check=True, timeout=1800)
    # A snapshot of the binaries: others may rebuild target/release during the run.
    bins = os.path.join(work, "bin")
    os.mkdir(bins)
    for b in ("composer", "conductor", "member"):
        shutil.copy2(os.path.join(ROOT, "target", "release", b), bins)

    free = shutil.disk_usage(work).free
    need = a.size * 6 + 256 * MIB
    if free < need:
        raise SystemExit(f"error: {work} has {free / GIB:.1f} GiB free; a {human_size(a.size)} run needs "
                         f"{need / GIB:.1f} GiB")

    tools_wanted = [t.strip() for t in a.tools.split(",") if t.strip()]
    scen_member = [s for s in SCENARIOS if s[0] in a.scenarios.split(",")]
    scen_other = [s for s in SCENARIOS if s[0] in a.other_scenarios.split(",") and s[0] in a.scenarios.split(",")]
    have = {"aria2c": shutil.which("aria2c"), "mktorrent": shutil.which("mktorrent"),
            "rqbit": a.rqbit if a.rqbit and os.access(a.rqbit, os.X_OK) else None}
    if not have["mktorrent"]:
        notes.append("mktorrent is not installed (`apt-get install mktorrent`): no mktorrent timing, "
                     "and no aria2c/rqbit transfers (they need its .torrent).")
    for t in ("aria2c", "rqbit"):
        if t in tools_wanted and not have[t]:
            notes.append(f"{t} is not installed: skipped"
                         + (" (`apt-get install aria2`)" if t == "aria2c" else " (`cargo install rqbit`)") + ".")

    load_before = wait_for_quiet(a.wait_load, a.wait_load_max) if a.wait_load else os.getloadavg()[0]
    sampler = LoadSampler()
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")

    seeddir = os.path.join(work, "seed")
    os.mkdir(seeddir)
    sample = os.path.join(seeddir, "sample.bin")
    log(f"making a {human_size(a.size)} file of pseudo-random bytes in {work}...")
    make_file(sample, a.size)
    warm(sample)

    res = {"started": started, "machine": machine_info(), "load_before": load_before,
           "config": {"size": a.size, "runs": a.runs, "mem_check": a.mem_check,
                      "command": " ".join(["scripts/bench.py"] + sys.argv[1:])},
           "hash": {}, "transfers": {}, "notes": notes}

    # 1. Hashing.
    tracker = Tracker()
    try:
        torrent = os.path.join(work, "sample.torrent")
        orch = os.path.join(work, "sample.orch")
        hashers = [("openssl", ["openssl", "dgst", "-sha256", sample]),
                   ("sha256sum", ["sha256sum", sample]),
                   ("composer", [f"{bins}/composer", sample, "127.0.0.1:9999", "-o", orch, "--json"])]
        if have["mktorrent"]:
            hashers.append(("mktorrent", ["mktorrent", "-l", "20", "-a", tracker.url, "-o", torrent, sample]))
        for r in range(a.runs):
            for name, cmd in hashers:
                if name == "mktorrent" and os.path.exists(torrent):
                    os.unlink(torrent)
                m = run_timed(cmd, 600, stdout=os.path.join(work, f"{name}.out"),
                              stderr=os.path.join(work, f"{name}.err"))
                res["hash"].setdefault(name, []).append(m)
                log(f"hash run {r + 1}/{a.runs}: {name:9s} {m['wall']:6.2f} s  cpu {m['cpu']:6.2f} s  "
                    f"rss {m['rss_kib'] / 1024:7.1f} MiB")
        composed = json.loads(open(os.path.join(work, "composer.out")).read().strip().splitlines()[-1])
        res["parts"], res["part_size"] = composed["parts"], composed["part_size"]
        orch_lines = open(orch).read().splitlines()

        # 2. Transfers.
        tools = []
        if "member" in tools_wanted:
            tools.append((Member(bins, orch_lines), scen_member))
        if have["mktorrent"] and have["aria2c"] and "aria2c" in tools_wanted:
            tools.append((Aria2(torrent, tracker), scen_other))
        if have["mktorrent"] and have["rqbit"] and "rqbit" in tools_wanted:
            tools.append((Rqbit(torrent, tracker, have["rqbit"]), scen_other))
        for r in range(a.runs):
            for scen, n_seed, n_dl in SCENARIOS:
                for tool, scens in tools:
                    if scen not in [s[0] for s in scens]:
                        continue
                    try:
                        m = transfer_run(tool, work, sample, a.size, n_seed, n_dl, a.timeout)
                    except RuntimeError as e:
                        log(f"transfer run {r + 1}/{a.runs}: {tool.name} {scen}: FAILED: {e}")
                        notes.append(f"{tool.name} {SCENARIO_LABEL[scen]}, run {r + 1}: failed: {e}".replace("\n", " "))
                        continue
                    res["transfers"].setdefault(tool.name, {}).setdefault(scen, []).append(m)
                    log(f"transfer run {r + 1}/{a.runs}: {tool.name:7s} {scen}: {m['wall']:6.2f} s  "
                        f"{n_dl * a.size / m['wall'] / 1e6:6.0f} MB/s  each "
                        + ", ".join(f"{d['secs']:.2f}" for d in m["downloaders"]) + " s  dl cpu "
                        + ", ".join(f"{d['cpu']:.2f}" for d in m["downloaders"]) + "  dl rss "
                        + ", ".join(f"{d['rss_kib'] / 1024:.1f}" for d in m["downloaders"]) + " MiB")
    finally:
        tracker.close()

    # 3. Memory check with a bigger file (the 1 GiB copies are gone by now).
    if a.mem_check:
        free = shutil.disk_usage(work).free
        need = a.size + 2 * a.mem_check + 256 * MIB
        if free < need:
            res["mem_check"] = {"skipped": f"{free / GIB:.1f} GiB free, {need / GIB:.1f} GiB needed"}
            notes.append(f"memory check skipped: {res['mem_check']['skipped']}.")
        else:
            big_dir = os.path.join(work, "big")
            os.mkdir(big_dir)
            big = os.path.join(big_dir, "sample.bin")
            try:
                log(f"memory check: making a {human_size(a.mem_check)} file...")
                make_file(big, a.mem_check)
                big_orch = os.path.join(work, "big.orch")
                c = run_timed([f"{bins}/composer", big, "127.0.0.1:9999", "-o", big_orch, "--quiet"], 1200,
                              stderr=os.path.join(work, "big-composer.err"))
                m = transfer_run(Member(bins, open(big_orch).read().splitlines()), work, big, a.mem_check,
                                 1, 1, max(a.timeout, 1200))
                res["mem_check"] = {"size": a.mem_check, "wall": m["wall"],
                                    "dl_rss_kib": m["downloaders"][0]["rss_kib"],
                                    "dl_cpu": m["downloaders"][0]["cpu"],
                                    "seed_rss_kib": m["seeders"][0]["rss_kib"],
                                    "composer_wall": c["wall"], "composer_rss_kib": c["rss_kib"]}
                log(f"memory check: member peak RSS {m['downloaders'][0]['rss_kib'] / 1024:.1f} MiB "
                    f"fetching {human_size(a.mem_check)} in {m['wall']:.1f} s")
            except RuntimeError as e:
                res["mem_check"] = {"skipped": f"failed: {e}"}
                notes.append(f"memory check failed: {e}".replace("\n", " "))
            finally:
                shutil.rmtree(big_dir, ignore_errors=True)
    else:
        res["mem_check"] = {"skipped": "--mem-check 0"}

    res["load"] = sampler.stop()
    res["summary"] = summarize(res)
    md = render(res)
    res["markdown"] = md
    for path, text in ((a.out_json, json.dumps(res, indent=2) + "\n"), (a.out_md, md)):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    print(md, end="")
    log(f"wrote {a.out_md} and {a.out_json}")
    if a.write_docs:
        write_docs(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
