#!/usr/bin/env bash
# Swarm testbed: emulates a network of hosts on one Linux machine and measures how close a swarm
# gets to the theoretical minimum distribution time (issue 4).
#
#   scripts/testbed.sh --quick                 functional check: 1 seeder + 3 members, 8 MiB, 100 Mbit
#   scripts/testbed.sh --all [--runs 3]        the six scenarios and the client-server baseline
#   scripts/testbed.sh --s1 --s6 --baseline    some of them (--s1 ... --s6, --baseline)
#   scripts/testbed.sh --latency [--runs 3]    W1-W6 of issue 10: round trips 10-150 ms; W7, W8:
#                                              issue 14's scenarios 2 and 3 at 50 ms
#   scripts/testbed.sh --calibrate             what the delay emulator does by itself
#   scripts/testbed.sh --origin [--runs 3]     nginx as an HTTP origin + 7 members with --origin,
#                                              no seeder member, 100 Mbit (issue 12)
#   scripts/testbed.sh --help                  every option
#
# Every host is a network namespace (tnc-<runid>-hN) with one veth to a bridge that lives in a
# namespace of its own (tnc-<runid>-br). Addresses are 10.77.0.0/24 inside those namespaces only:
# nothing is routed anywhere, and the root namespace's network is never touched. Each host's
# upload is a tc tbf on its veth (host side), its download a tbf on the bridge-side veth toward
# it. The real binaries (target/release, copied first so a rebuild cannot change them mid-run)
# run inside the namespaces through `ip netns exec`: the conductor on h0, the seeder on h1,
# members on the others. Times come from the members' --json events, bytes from the interface
# counters. Everything it created (namespaces, veths, processes, files) is removed on exit,
# interrupt or timeout. It needs root, ip and tc (iproute2), python3 (3.8+, stdlib only) and,
# for --s6 and --baseline, curl; where network namespaces are not allowed it says "skipped" and
# exits 0.
#
# The latency scenarios (W1-W4, W6; the kernels here have no netem) use TunNet instead of the
# bridge: each host's eth0 is a TUN device fed by examples/netem.rs, which holds every packet for
# its source's plus its destination's one-way delay and passes it through both hosts' rates.
#
# The orchestration is Python (stdlib only): many processes, their JSON event streams and the
# statistics are far simpler and more robust there than in bash.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
py=$(command -v python3 || true)
if [[ -z $py ]]; then
    echo "testbed: skipped: python3 is not installed" >&2
    exit 0
fi
exec "$py" - "$root" "$@" <<'PYTHON'
import argparse
import json
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess as sp
import sys
import tempfile
import threading
import time

ROOT = sys.argv.pop(1)
MiB = 1 << 20
NET = "10.77.0"            # private, and only inside our namespaces
CONDUCTOR_PORT = 7000
HTTP_PORT = 8000
FLOOR_PORT = 7100
BR = "br0"


def log(*a):
    print(*a, flush=True)


def mbit(x):
    """Mbit/s to bytes/s."""
    return x * 1e6 / 8


class Fatal(Exception):
    pass


class GlobalTimeout(Exception):
    """--timeout passed: ends everything (a Fatal ends only its scenario)."""


def run(argv, check=True, capture=False, timeout=30):
    r = sp.run(argv, stdin=sp.DEVNULL, stdout=sp.PIPE if capture else sp.DEVNULL,
               stderr=sp.PIPE, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise Fatal(f"{' '.join(argv)}: {r.stderr.strip()}")
    return r


# --------------------------------------------------------------------------------------------
# The emulated network
# --------------------------------------------------------------------------------------------

class Net:
    """A bridge namespace and one namespace per host, each host with tbf-shaped up and down."""

    def __init__(self, runid, links):
        # links: list of (up_mbit, down_mbit), one per host; host 0 is the conductor.
        self.runid = runid
        self.links = links
        self.br = f"tnc-{runid}-br"
        self.created = []

    def ns(self, i):
        return f"tnc-{self.runid}-h{i}"

    @staticmethod
    def ip(i):
        return f"{NET}.{i + 1}"

    sysctls = []    # "key=value" set in every namespace (--host-sysctl)

    def _add_ns(self, name):
        run(["ip", "netns", "add", name])
        self.created.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        for kv in self.sysctls:
            run(["ip", "netns", "exec", name, "sysctl", "-q", "-w", kv])
        # No IPv6: no router solicitations or DAD in the counters.
        for conf in ("all", "default"):
            run(["ip", "netns", "exec", name, "sh", "-c",
                 f"echo 1 > /proc/sys/net/ipv6/conf/{conf}/disable_ipv6"], check=False)

    def up(self):
        self._add_ns(self.br)
        run(["ip", "-n", self.br, "link", "add", BR, "type", "bridge", "stp_state", "0",
             "forward_delay", "0"])
        run(["ip", "-n", self.br, "link", "set", BR, "up"])
        for i, (upm, downm) in enumerate(self.links):
            ns = self.ns(i)
            self._add_ns(ns)
            # The pair is created inside the host namespace, its peer moved straight into the
            # bridge namespace: nothing ever appears in the root namespace.
            run(["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"h{i}",
                 "netns", self.br])
            run(["ip", "-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", "eth0"])
            run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            run(["ip", "-n", self.br, "link", "set", f"h{i}", "master", BR])
            run(["ip", "-n", self.br, "link", "set", f"h{i}", "up"])
            self.shape(i, upm, downm)

    @staticmethod
    def tbf(rate_mbit):
        rate = mbit(rate_mbit)
        # Bucket: at least 64 KiB (a whole GSO segment passes without being split) and at least
        # rate/250 s (a timer tick at HZ=250); queue: 80 ms worth of bytes at that rate.
        burst = max(64 * 1024, int(rate / 250))
        limit = max(int(rate * 0.080), 2 * burst)
        return ["tbf", "rate", f"{rate_mbit}mbit", "burst", str(burst), "limit", str(limit)]

    def shape(self, i, upm, downm):
        run(["tc", "-n", self.ns(i), "qdisc", "replace", "dev", "eth0", "root"] + self.tbf(upm))
        run(["tc", "-n", self.br, "qdisc", "replace", "dev", f"h{i}", "root"] + self.tbf(downm))

    def counters(self, i):
        """(tx, rx) bytes of host i's own interface, read inside its namespace."""
        r = run(["ip", "netns", "exec", self.ns(i), "cat", "/sys/class/net/eth0/statistics/tx_bytes",
                 "/sys/class/net/eth0/statistics/rx_bytes"], capture=True)
        tx, rx = r.stdout.split()
        return int(tx), int(rx)

    def bridge_counters(self):
        """{host: (tx, rx)} seen from the bridge side (host tx = port rx), in one call."""
        r = run(["ip", "-n", self.br, "-s", "-j", "link", "show"], capture=True)
        out = {}
        for link in json.loads(r.stdout):
            name = link.get("ifname", "")
            if name.startswith("h") and name[1:].isdigit():
                s = link["stats64"]
                out[int(name[1:])] = (s["rx"]["bytes"], s["tx"]["bytes"])
        return out

    def down(self):
        for name in reversed(self.created):
            # Anything still running in our namespaces was started by us: kill it by pid.
            r = run(["ip", "netns", "pids", name], check=False, capture=True)
            for pid in (r.stdout or "").split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            run(["ip", "netns", "del", name], check=False)
        self.created = []


class TunNet(Net):
    """The same hosts joined by examples/netem.rs instead of a bridge: each host's eth0 is a TUN
    device whose packets one emulator process holds for the delay between source and destination
    (d_A + d_B one way), through the source's upload and the destination's download rates (each
    with an 80 ms queue), then writes to the destination. The kernels here have neither netem nor
    fq, so this is how the hosts' TCP gets a real round trip (issue 10)."""

    def __init__(self, runid, links, delays, netem, loss=0.0, mtu=1500, counters_log=None):
        super().__init__(runid, links)
        self.delays, self.netem, self.loss, self.mtu = delays, netem, loss, mtu
        # With --keep: every counters line (100 ms apart), for timelines of each host's link.
        self.counters_log = counters_log
        self.emu = None
        self.report = None          # the emulator's latest counters line
        self.ready = threading.Event()

    def up(self):
        # The emulator runs in the namespace that holds the bridge otherwise: it needs no
        # network of its own, and cleanup finds it there with `ip netns pids`.
        self._add_ns(self.br)
        for i in range(len(self.links)):
            self._add_ns(self.ns(i))
        argv = ["ip", "netns", "exec", self.br]
        # Real-time priority: the emulator is the network, and on a shared 2-core machine the
        # hosts it carries (hashing members) must not delay its packets (see BENCHMARKS.md).
        if shutil.which("chrt"):
            argv += ["chrt", "-f", "20"]
        argv += [self.netem, "--report-ms", "100", "--loss", str(self.loss)]
        for i, ((upm, downm), d) in enumerate(zip(self.links, self.delays)):
            argv += ["--host", f"{self.ns(i)},{self.ip(i)},{upm},{downm},{d}"]
        self.err = tempfile.TemporaryFile(mode="w+")
        self.emu = sp.Popen(argv, stdin=sp.DEVNULL, stdout=sp.PIPE, stderr=self.err, text=True,
                            start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        wait_for(lambda: self.ready.is_set() or self.emu.poll() is not None, 10, "the emulator")
        if not self.ready.is_set():
            self.err.seek(0)
            raise Fatal(f"netem did not start: {self.err.read().strip()}")
        for i in range(len(self.links)):
            ns = self.ns(i)
            run(["ip", "-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", "eth0"])
            # A long device queue: when the emulator falls behind for a moment the packets wait
            # instead of being dropped before they reach the emulated link.
            run(["ip", "-n", ns, "link", "set", "eth0", "mtu", str(self.mtu), "txqueuelen",
                 "10000", "up"])

    def _read(self):
        log_file = open(self.counters_log, "w") if self.counters_log else None
        for line in self.emu.stdout:
            if log_file:
                log_file.write(line)
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("event") == "ready":
                self.ready.set()
            elif e.get("event") == "counters":
                self.report = e

    def shape(self, i, upm, downm):
        raise Fatal("TunNet links are shaped by the emulator, not by tc")

    def bridge_counters(self):
        """{host: (tx, rx)} as the emulator counts them (IP packets, headers included)."""
        r = self.report
        if r is None:
            raise Fatal("no counters from the emulator yet")
        return {i: (tx, rx) for i, (tx, rx) in enumerate(r["hosts"])}

    def down(self):
        if self.emu is not None and self.emu.poll() is None:
            self.emu.terminate()
            try:
                self.emu.wait(3)
            except sp.TimeoutExpired:
                self.emu.kill()
                self.emu.wait(3)
        self.emu = None
        super().down()


# --------------------------------------------------------------------------------------------
# Processes we start
# --------------------------------------------------------------------------------------------

STARTED = []   # every Proc, for cleanup


class Proc:
    """A process in a host namespace; its stdout JSON lines are time-stamped as they arrive."""

    def __init__(self, net, host, name, argv, logdir, json_out=True):
        self.name, self.host = name, host
        self.events = []        # (seconds since start, dict)
        self.lines = []
        self.err_path = os.path.join(logdir, f"{name}.err")
        self.out_path = os.path.join(logdir, f"{name}.out")
        self.t0 = time.monotonic()
        self.p = sp.Popen(["ip", "netns", "exec", net.ns(host)] + argv, stdin=sp.DEVNULL,
                          stdout=sp.PIPE, stderr=open(self.err_path, "w"), text=True,
                          start_new_session=True)
        STARTED.append(self)
        self.t_exit = None
        self.json = json_out
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        with open(self.out_path, "w") as out:
            for line in self.p.stdout:
                t = time.monotonic() - self.t0
                out.write(line)
                self.lines.append((t, line))
                if self.json:
                    try:
                        self.events.append((t, json.loads(line)))
                    except ValueError:
                        pass
        self.t_exit = time.monotonic() - self.t0

    def first(self, event):
        for t, e in self.events:
            if e.get("event") == event:
                return t, e
        return None, None

    def last(self, event):
        found = (None, None)
        for t, e in self.events:
            if e.get("event") == event:
                found = (t, e)
        return found

    def alive(self):
        return self.p.poll() is None

    def signal(self, sig):
        if self.p.poll() is None:
            try:
                os.kill(self.p.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout=5):
        self.signal(signal.SIGTERM)
        try:
            self.p.wait(timeout)
        except sp.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.p.wait(5)
        self.reader.join(2)


def stop_all():
    for p in STARTED:
        p.signal(signal.SIGTERM)
    deadline = time.monotonic() + 3
    for p in STARTED:
        try:
            p.p.wait(max(0.1, deadline - time.monotonic()))
        except sp.TimeoutExpired:
            p.signal(signal.SIGKILL)
            try:
                p.p.wait(2)
            except sp.TimeoutExpired:
                pass
    STARTED.clear()


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise Fatal(f"timed out waiting for {what}")


class Sampler(threading.Thread):
    """Samples every host's tx/rx from the bridge side; optional callback per sample."""

    def __init__(self, net, period, on_sample=None):
        super().__init__(daemon=True)
        self.net, self.period, self.on_sample = net, period, on_sample
        self.samples = []       # (monotonic time, {host: (tx, rx)})
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.is_set():
            try:
                c = self.net.bridge_counters()
            except Exception:
                c = None
            if c is not None:
                t = time.monotonic()
                self.samples.append((t, c))
                if self.on_sample:
                    self.on_sample(t, c)
            self.stopped.wait(self.period)

    def stop(self):
        self.stopped.set()
        self.join(3)

    def between(self, host, t_from, t_to, which=0):
        """Bytes host sent (which=0) or received (1) between two monotonic times."""
        def at(t):
            best = None
            for ts, c in self.samples:
                if ts <= t:
                    best = c
                else:
                    break
            if best is None and self.samples:
                best = self.samples[0][1]
            return best[host][which] if best else 0
        return at(t_to) - at(t_from)


# --------------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------------

def t_min(F, u_s, d_min, u_members):
    """Kumar & Ross minimum distribution time; rates in bytes/s."""
    N = len(u_members)
    return max(F / u_s, F / d_min, N * F / (u_s + sum(u_members)))


def ideal_plan(F, u_s, u_members):
    """Kumar and Ross's schedule in whole bytes: (piece per member, direct part to each).
    Member i relays a piece of its own, in proportion to its uplink, to every other member; if
    the members' uplinks are more than the seeder's can keep busy, the seeder sends the rest of
    the file straight to everyone. Sizes add up to F exactly."""
    N, S = len(u_members), sum(u_members)
    if N == 1:
        return [F], 0
    if u_s * (N - 1) <= S:
        direct = 0
    else:
        T = N * F / (u_s + S)
        direct = int((u_s - S / (N - 1)) * T / N)
    rest = F - direct
    pieces = [int(rest * u / S) for u in u_members]
    pieces[-1] += rest - sum(pieces)
    return pieces, direct


def spread(lo, hi, n):
    return [round(lo + (hi - lo) * k / (n - 1), 1) for k in range(n)] if n > 1 else [hi]


# Targets: issue 14's for scenarios 1-3 (ratio to T_min; copies: most the seeder may send),
# issue 4's for the others.
SCENARIOS = {
    "quick": dict(title="quick: 1 seeder + 3 members, 100 Mbit", members=3, size=8,
                  seed=(100, 100), up=[100] * 3, down=[100] * 3),
    "s1": dict(title="1: 1 seeder + 7 members, 100/100 Mbit", members=7, size=128,
               seed=(100, 100), up=[100] * 7, down=[100] * 7, target=1.18, copies=1.5),
    "s2": dict(title="2: 1 seeder + 15 members, 50 up/100 down", members=15, size=128,
               seed=(50, 100), up=[50] * 15, down=[100] * 15, target=1.15),
    "s3": dict(title="3: heterogeneous, members up 20-100 Mbit", members=7, size=128,
               seed=(100, 100), up=spread(20, 100, 7), down=[100] * 7, target=1.2,
               copies=1.15),
    "s4": dict(title="4: late joiners, 4 of 8 start 5 s later", members=8, size=128,
               seed=(100, 100), up=[100] * 8, down=[100] * 8, late=4, late_delay=5.0),
    "s5": dict(title="5: seeder quits after sending 1.2 F", members=7, size=128,
               seed=(100, 100), up=[100] * 7, down=[100] * 7, seeder_quits=1.2),
    # Our seeder sends only about 1.1 F in a whole run of scenario 5, so at 1.2 F it never
    # quits; 1.05 F (interface bytes, headers included) is about when every part has left it.
    "s5b": dict(title="5b: seeder quits after sending 1.05 F", members=7, size=128,
                seed=(100, 100), up=[100] * 7, down=[100] * 7, seeder_quits=1.05),
    "s6": dict(title="6: 1 seeder + 1 member at 1 Gbit vs curl", members=1, size=512,
               seed=(1000, 1000), up=[1000], down=[1000], versus_http=True, target=1.1),
    # Issue 12: h1 is nginx, the members' only source (--origin), no seeder member. T_min is
    # the same as with h1 as the seeder; "seeder sent" is what nginx sent (206 bodies).
    "origin": dict(title="origin: nginx + 7 members with --origin, no seeder, 100 Mbit",
                   members=7, size=128, seed=(100, 100), up=[100] * 7, down=[100] * 7,
                   http_origin=True, target=1.3, copies=1.3),
    "baseline": dict(title="client-server: http.server + 7 curl, 100 Mbit", members=7,
                     size=128, seed=(100, 100), up=[100] * 7, down=[100] * 7, http_only=True),
}


# Latency scenarios (issue 10), on TunNet. "delay" is every host's one-way access delay in ms
# (conductor, seeder, members), so the round trip between hosts A and B is 2 (d_A + d_B).
# "No rate limit" in W1 is 1 Gbit/s per host, which the emulator carries (see --calibrate).
def _w1(rtt):
    return dict(title=f"W1: 1 seeder -> 1 member at {rtt} ms RTT, 1 Gbit/s, vs curl", members=1,
                size=256, seed=(1000, 1000), up=[1000], down=[1000], delay=[rtt / 4] * 3,
                versus_http=True, target=1.1)


LATENCY = {
    "w1_10": _w1(10),
    "w1_50": _w1(50),
    "w1_100": _w1(100),
    "w2": dict(title="W2: 1 -> 1 at 50 ms RTT, both hosts 200 Mbit/s", members=1, size=256,
               seed=(200, 200), up=[200], down=[200], delay=[12.5] * 3, versus_http=True,
               link_share=0.9),
    "w3": dict(title="W3: 1 seeder + 7 members, 100 Mbit/s, 50 ms RTT between any two",
               members=7, size=128, seed=(100, 100), up=[100] * 7, down=[100] * 7,
               delay=[12.5] * 9, target=1.3, copies=1.3),
    # Regions: round trips from 10 ms (2.5 + 2.5 ms hosts) to 150 ms (37.5 + 37.5 ms hosts).
    "w4": dict(title="W4: as W3, round trips 10-150 ms (regions)", members=7, size=128,
               seed=(100, 100), up=[100] * 7, down=[100] * 7,
               delay=[10, 2.5, 2.5, 7.5, 12.5, 20, 27.5, 37.5, 37.5], target=1.4),
    "w5": dict(SCENARIOS["s1"], title="W5: zero latency (scenario 1: 1 + 7, 100/100 Mbit, tbf)"),
    # The cap is the member flag of issue 10 item 2: until the member has it, the seeder exits
    # with "unexpected argument" and the scenario reports that.
    "w6": dict(title="W6: 1 -> 1 at 50 ms RTT, 1 Gbit/s, seeder --max-upload-rate 20MB/s",
               members=1, size=256, seed=(1000, 1000), up=[1000], down=[1000],
               delay=[12.5] * 3, seeder_args=["--max-upload-rate", "20MB/s"], cap_rate=20e6),
    # Issue 14: scenarios 2 and 3 at 50 ms between any two hosts (W3 is scenario 1 at 50 ms).
    "w7": dict(SCENARIOS["s2"], title="W7: scenario 2 (1 + 15, 50 up/100 down) at 50 ms RTT",
               delay=[12.5] * 17, target=1.3),
    "w8": dict(SCENARIOS["s3"], title="W8: scenario 3 (uplinks 20-100 Mbit) at 50 ms RTT",
               delay=[12.5] * 9, target=1.3),
}
SCENARIOS.update(LATENCY)
W_OPTIONS = {"w1": ["w1_10", "w1_50", "w1_100"], "w2": ["w2"], "w3": ["w3"], "w4": ["w4"],
             "w5": ["w5"], "w6": ["w6"], "w7": ["w7"], "w8": ["w8"]}


class Bench:
    def __init__(self, args, work, bins):
        self.args, self.work, self.bins = args, work, bins
        self.files = {}     # size MiB -> (path, orch)
        self.nets = []

    def sample_file(self, size_mib, net):
        if size_mib in self.files:
            return self.files[size_mib]
        d = os.path.join(self.work, f"orig{size_mib}")
        os.makedirs(d)
        path = os.path.join(d, "sample.bin")
        with open("/dev/urandom", "rb") as src, open(path, "wb") as dst:
            left = size_mib * MiB
            while left:
                chunk = src.read(min(left, 4 * MiB))
                dst.write(chunk)
                left -= len(chunk)
        orch = os.path.join(d, "sample.bin.orch")
        # composer needs no network; it runs in the conductor's namespace all the same.
        r = run(["ip", "netns", "exec", net.ns(0), self.bins["composer"], path,
                 f"{net.ip(0)}:{CONDUCTOR_PORT}", "-o", orch, "--json"]
                + ([self.args.part_size] if self.args.part_size else []), capture=True,
                timeout=300)
        self.files[size_mib] = (path, orch)
        return path, orch

    def conductor(self, net, logdir):
        c = Proc(net, 0, "conductor", [self.bins["conductor"], "--listen",
                 f"{net.ip(0)}:{CONDUCTOR_PORT}", "--json", "--interval", self.args.interval],
                 logdir)
        wait_for(lambda: c.first("listening")[0] is not None or not c.alive(), 10, "conductor")
        if not c.alive():
            raise Fatal(f"conductor did not start: {open(c.err_path).read().strip()}")
        return c

    def seeder(self, net, orig, orch, logdir, extra):
        d = os.path.join(logdir, "h1")
        os.makedirs(d)
        shutil.copyfile(orig, os.path.join(d, "sample.bin"))
        s = Proc(net, 1, "seeder", [self.bins["member"], orch, "--dir", d, "--listen",
                 "0.0.0.0:0", "--json"] + extra, logdir)
        wait_for(lambda: (s.first("complete")[0] is not None and s.first("conductor_ok")[0]
                          is not None) or not s.alive(), 60, "the seeder to verify and announce")
        if not s.alive():
            raise Fatal(f"seeder failed: {open(s.err_path).read().strip()}")
        return s

    def member(self, net, host, orch, logdir, extra):
        d = os.path.join(logdir, f"h{host}")
        os.makedirs(d, exist_ok=True)
        argv = [self.bins["member"], orch, "--dir", d, "--listen", "0.0.0.0:0", "--json"] + (
            [] if self.args.members_stay else ["--exit-when-done"]) + extra
        if self.args.upload_cap:
            # Each member sends at most this fraction of its own emulated uplink (issue 14).
            up = net.links[host][0] * self.args.upload_cap
            argv += ["--max-upload-rate", f"{up:.1f}Mbit/s"]
        return Proc(net, host, f"m{host}", argv, logdir)

    def curl(self, net, host, logdir):
        d = os.path.join(logdir, f"h{host}")
        os.makedirs(d, exist_ok=True)
        argv = ["curl", "-sS", "--noproxy", "*", "-o", os.path.join(d, "sample.bin"), "-w",
                "%{time_total}\n", f"http://{net.ip(1)}:{HTTP_PORT}/sample.bin"]
        return Proc(net, host, f"curl{host}", argv, logdir, json_out=False)

    def http_server(self, net, orig, logdir):
        d = os.path.dirname(orig)
        h = Proc(net, 1, "http", [sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind",
                 net.ip(1), "--directory", d], logdir, json_out=False)
        def ready():
            r = run(["ip", "netns", "exec", net.ns(1), "curl", "-s", "--noproxy", "*", "-o",
                     "/dev/null", "-r", "0-0", f"http://{net.ip(1)}:{HTTP_PORT}/sample.bin"],
                    check=False)
            return r.returncode == 0
        wait_for(lambda: ready() or not h.alive(), 15, "the http server")
        if not h.alive():
            raise Fatal(f"http.server did not start: {open(h.err_path).read().strip()}")
        return h

    def nginx(self, net, orig, logdir):
        """nginx on h1 serving the sample's folder: one process in the foreground (no workers,
        no daemon, its own config and prefix in the run's folder, never the system service)."""
        prefix = os.path.join(logdir, "nginx")
        os.makedirs(os.path.join(prefix, "tmp"))
        access = os.path.join(prefix, "access.log")
        t = os.path.join(prefix, "tmp")
        conf = os.path.join(prefix, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""daemon off;
master_process off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 1024; }}
http {{
  log_format bytes '$status $body_bytes_sent "$http_range"';
  access_log {access} bytes;
  client_body_temp_path {t}/body; proxy_temp_path {t}/proxy; fastcgi_temp_path {t}/fastcgi;
  uwsgi_temp_path {t}/uwsgi; scgi_temp_path {t}/scgi;
  sendfile on;
  keepalive_requests 100000;
  server {{ listen {net.ip(1)}:{HTTP_PORT}; root {os.path.dirname(orig)}; }}
}}
""")
        h = Proc(net, 1, "nginx", [shutil.which("nginx") or "/usr/sbin/nginx", "-p", prefix,
                 "-e", os.path.join(prefix, "error.log"), "-c", conf], logdir, json_out=False)
        def ready():
            r = run(["ip", "netns", "exec", net.ns(1), "curl", "-s", "--noproxy", "*", "-o",
                     "/dev/null", "-r", "0-0", f"http://{net.ip(1)}:{HTTP_PORT}/sample.bin"],
                    check=False)
            return r.returncode == 0
        wait_for(lambda: ready() or not h.alive(), 15, "nginx")
        if not h.alive():
            raise Fatal(f"nginx did not start: {open(os.path.join(prefix, 'error.log')).read()}")
        h.access_log = access
        return h

    @staticmethod
    def partial_bytes(access_log):
        """Body bytes of the 206 answers in an access log (the readiness probe's 1 byte too)."""
        total = 0
        with open(access_log) as f:
            for line in f:
                w = line.split()
                if len(w) >= 2 and w[0] == "206":
                    total += int(w[1])
        return total

    # One run of one scenario on an existing network; returns a dict of results.
    def floor_once(self, key, sc, net, run_no):
        """The plain-TCP ideal schedule (examples/ideal_schedule.rs) on this network: how long
        the fluid-optimal plan takes when TCP, the links and the emulator are all there is."""
        logdir = os.path.join(self.work, f"{key}-floor{run_no}")
        os.makedirs(logdir)
        F = sc["size"] * MiB
        members = list(range(2, 2 + sc["members"]))
        pieces, direct = ideal_plan(F, mbit(sc["seed"][0]), [mbit(u) for u in sc["up"]])
        tmin = t_min(F, mbit(sc["seed"][0]), min(mbit(d) for d in sc["down"]),
                     [mbit(u) for u in sc["up"]])
        # Paced at the plan's rates, with the links' header overhead (1514 bytes on the wire
        # for 1448 of payload).
        plan = ["--members", ",".join(net.ip(h) for h in members), "--port", str(FLOOR_PORT),
                "--piece", ",".join(str(p) for p in pieces), "--direct", str(direct),
                "--seconds", f"{tmin * 1514 / 1448:.3f}"]
        STARTED.clear()
        try:
            t0 = time.monotonic()
            procs = [(h, Proc(net, h, f"m{h}", [self.bins["ideal"], "member", "--me", str(k)]
                              + plan, logdir)) for k, h in enumerate(members)]
            seeder = Proc(net, 1, "seeder", [self.bins["ideal"], "seed"] + plan, logdir)
            self._wait(procs + [(1, seeder)], self.args.run_limit or max(45.0, 4 * tmin + 20))
            times = {}
            for h, p in procs:
                tc, _ = p.first("complete")
                if p.p.returncode == 0 and tc is not None:
                    times[h] = p.t0 - t0 + tc
        finally:
            stop_all()
        slowest = max(times.values()) if len(times) == len(procs) else None
        return dict(floor_slowest=slowest, floor_ratio=slowest / tmin if slowest else None,
                    floor_plan=dict(pieces=pieces, direct=direct))

    def run_once(self, key, sc, net, run_no):
        args = self.args
        logdir = os.path.join(self.work, f"{key}-run{run_no}")
        os.makedirs(logdir)
        orig, orch = self.sample_file(sc["size"], net)
        F = sc["size"] * MiB
        members = list(range(2, 2 + sc["members"]))
        u_s, d_s = mbit(sc["seed"][0]), mbit(sc["seed"][1])
        tmin = t_min(F, u_s, min(mbit(d) for d in sc["down"]), [mbit(u) for u in sc["up"]])
        res = dict(scenario=key, run=run_no, F=F, N=len(members), t_min=tmin,
                   load_before=os.getloadavg()[0])
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu0 = cpu_times()
        base = {i: net.counters(i) for i in range(len(net.links))}
        if sc.get("http_only"):
            # Client-server: the server's uplink carries every copy.
            tmin_cs = max(len(members) * F / u_s, F / min(mbit(d) for d in sc["down"]))
            limit = self.args.run_limit or max(45.0, 3 * tmin_cs + 20)
            res["t_client_server"] = tmin_cs
        else:
            limit = self.args.run_limit or max(45.0, 4 * tmin + 20)
        STARTED.clear()
        procs = []
        try:
            if sc.get("http_only"):
                server = self.http_server(net, orig, logdir)
                base = {i: net.counters(i) for i in range(len(net.links))}
                t0 = time.monotonic()
                procs = [(h, self.curl(net, h, logdir)) for h in members]
                self._wait(procs, limit)
                times = {h: p.t_exit for h, p in procs}
                ok = {h: p.p.returncode == 0 for h, p in procs}
                seed_payload = None
                server.stop()
            else:
                cond = self.conductor(net, logdir)
                if sc.get("http_origin"):
                    seeder = self.nginx(net, orig, logdir)
                    origin_base = self.partial_bytes(seeder.access_log)
                else:
                    seeder = self.seeder(net, orig, orch, logdir,
                                         sc.get("seeder_args", []) + args.seeder_arg)
                sampler = Sampler(net, 0.1 if sc.get("seeder_quits") else 0.25,
                                  self._quitter(sc, seeder, F, res) if sc.get("seeder_quits")
                                  else None)
                sampler.start()
                t0 = time.monotonic()
                late = sc.get("late", 0)
                early_hosts = members[:len(members) - late]
                late_hosts = members[len(members) - late:]
                member_args = sc.get("member_args", []) + args.member_arg
                if sc.get("http_origin"):
                    member_args = member_args + [
                        "--origin", f"http://{net.ip(1)}:{HTTP_PORT}/sample.bin"]
                procs = [(h, self.member(net, h, orch, logdir, member_args))
                         for h in early_hosts]
                if late_hosts:
                    time.sleep(sc["late_delay"])
                    t_late = time.monotonic()
                    procs += [(h, self.member(net, h, orch, logdir, member_args))
                              for h in late_hosts]
                if args.ss_at:
                    threading.Thread(target=self._ss_snapshot, daemon=True,
                                     args=(net, logdir, t0 + args.ss_at)).start()
                self._wait(procs, limit, procs if args.members_stay else ())
                sampler.stop()
                seeder.stop()
                cond.stop()
                ok = {}
                times = {}
                for h, p in procs:
                    tc, _ = p.first("complete")
                    ok[h] = p.p.returncode == 0 and tc is not None
                    times[h] = tc
                    if tc is None:
                        # Where it stopped: parts, peers, and how long it had been stuck.
                        prog = [(t, e) for t, e in p.events if e.get("event") == "progress"]
                        if prog:
                            t_last, e = prog[-1]
                            since = next((t for t, x in prog
                                          if x["parts_done"] == e["parts_done"]), t_last)
                            res.setdefault("stuck", {})[f"h{h}"] = dict(
                                parts_done=e["parts_done"], parts_total=e["parts_total"],
                                peers=e["peers"], stuck_since_s=round(since, 1),
                                at_s=round(t_last, 1))
                if sc.get("http_origin"):
                    seed_payload = self.partial_bytes(seeder.access_log) - origin_base
                else:
                    _, summ = seeder.last("summary")
                    seed_payload = summ["bytes_up"] if summ else None
                res["members_detail"] = {f"h{h}": member_detail(p) for h, p in procs}
                if late_hosts:
                    t_end = max(p.t0 + (times[h] or 0) for h, p in procs if h in late_hosts)
                    late_rx = sum(sampler.between(h, t_late, t_end, 1) for h in late_hosts)
                    seed_tx = sampler.between(1, t_late, t_end, 0)
                    res["late"] = dict(
                        hosts=late_hosts, rx=late_rx, seeder_tx_during=seed_tx,
                        max_from_seeder=seed_tx / late_rx if late_rx else None,
                        durations=[times[h] for h in late_hosts],
                        early_slowest=max((times[h] or 0) for h in early_hosts))
                res["timeline"] = timeline(sampler, t0, len(net.links))
                # Redundant transfer: parts sent (payload) that no member kept.
                down = sum(d.get("bytes_down", 0) for d in res["members_detail"].values())
                sent = (seed_payload or 0) + sum(d.get("bytes_up", 0)
                                                 for d in res["members_detail"].values())
                res["redundant"] = (sent - down) / down if down else None
                # Kept bytes per second over all members (from their progress events), to set
                # against the bytes sent per second in res["timeline"].
                secs = len(next(iter(res["timeline"].values()), []))
                kept = [0.0] * (secs + 1)
                for h, p in procs:
                    prev = 0
                    for t, e in p.events:
                        if e.get("event") in ("progress", "summary"):
                            s = min(secs, max(0, int(p.t0 - t0 + t)))
                            kept[s] += e["bytes_down"] - prev
                            prev = e["bytes_down"]
                res["kept_mbit"] = [round(b * 8 / 1e6, 1) for b in kept]
            # Verify every copy byte for byte.
            for h, p in procs:
                copy = os.path.join(logdir, f"h{h}", "sample.bin")
                same = os.path.exists(copy) and run(["cmp", "-s", orig, copy], check=False,
                                                    timeout=120).returncode == 0
                if not same:
                    ok[h] = False
        finally:
            stop_all()
        end = {i: net.counters(i) for i in range(len(net.links))}
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu1 = cpu_times()
        res["cpu_children_s"] = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
        res["machine_busy"] = busy(cpu0, cpu1)
        res["load_after"] = os.getloadavg()[0]
        res["hosts"] = {f"h{i}": dict(tx=end[i][0] - base[i][0], rx=end[i][1] - base[i][1])
                        for i in range(len(net.links))}
        # Member times: from each one's own start; "slowest" from the common start.
        done = [times[h] for h, _ in procs if ok[h] and times[h] is not None]
        res["all_ok"] = all(ok.values()) and len(done) == len(procs)
        res["failed"] = [f"h{h}" for h in ok if not ok[h]]
        by_start = [procs[i][1].t0 - t0 + times[h] for i, (h, _) in enumerate(procs)
                    if ok[h] and times[h] is not None]
        res["slowest"] = max(by_start) if by_start else None
        res["mean"] = statistics.mean(done) if done else None
        res["ratio"] = res["slowest"] / tmin if res["slowest"] else None
        details = res.get("members_detail", {}).values()
        firsts = [d["first_progress_with_part_s"] for d in details
                  if d.get("first_progress_with_part_s") is not None]
        res["first_part_s"] = statistics.median(firsts) if firsts else None
        afters = [d["first_part_after_s"] for d in details if d.get("first_part_after_s") is not None]
        res["first_part_after_s"] = statistics.median(afters) if afters else None
        exact = [d["first_part_exact_s"] for d in details if d.get("first_part_exact_s") is not None]
        res["first_part_exact_s"] = statistics.median(exact) if exact else None
        if len(procs) == 1 and res.get("members_detail"):
            d = next(iter(res["members_detail"].values()))
            res["member_rate"] = F / d["download_s"] if ok[procs[0][0]] and d["download_s"] else None
            res["steady_rate"] = d["steady_rate"] if ok[procs[0][0]] else None
        if isinstance(net, TunNet) and net.report:
            r = net.report
            res["emulator"] = {k: r[k] for k in ("queue_drops", "loss_drops", "write_errors",
                                                 "late_mean_us", "late_max_us")}
        res["seeder_copies_wire"] = res["hosts"]["h1"]["tx"] / F
        res["seeder_copies"] = seed_payload / F if seed_payload is not None else None
        upl = sum(res["hosts"][f"h{h}"]["tx"] for h in members)
        # Over the time to the last completion; undefined when a member never completed (the
        # run's length is then the time limit, not a download time).
        cap = sum(mbit(u) for u in sc["up"]) * (res["slowest"] or 0)
        res["member_upload_use"] = upl / cap if cap else None
        # Free the disk: copies are checked.
        for h in members:
            shutil.rmtree(os.path.join(logdir, f"h{h}"), ignore_errors=True)
        shutil.rmtree(os.path.join(logdir, "h1"), ignore_errors=True)
        return res

    def calibrate(self, rates, rtts):
        """What the emulator does by itself: one curl from `python3 -m http.server` through it
        per (rate, round trip), beside the TCP connect time (one round trip) of 5 HEAD requests."""
        rows = []
        for rate in rates:
            # About 5 s of transfer at the rate; 256 MiB where the rate is 1 Gbit/s or more.
            size = {100: 64, 200: 128}.get(rate, 256)
            for rtt in rtts:
                net = TunNet(self.args.runid, [(100, 100), (rate, rate), (rate, rate)],
                             [rtt / 4] * 3, self.bins["netem"], loss=self.args.loss)
                self.nets.append(net)
                logdir = os.path.join(self.work, f"calibrate-{rate}-{rtt}")
                os.makedirs(logdir)
                try:
                    net.up()
                    orig, _ = self.sample_file(size, net)
                    server = self.http_server(net, orig, logdir)
                    url = f"http://{net.ip(1)}:{HTTP_PORT}/sample.bin"
                    curl = ["ip", "netns", "exec", net.ns(2), "curl", "-sS", "--noproxy", "*",
                            "-o", "/dev/null"]
                    connects = [float(run(curl + ["-I", "-w", "%{time_connect}", url],
                                          capture=True).stdout) for _ in range(5)]
                    out = run(curl + ["-w", "%{time_connect} %{time_total}", url], capture=True,
                              timeout=600).stdout.split()
                    total = float(out[1])
                    server.stop()
                    e = net.report or {}
                    got = size * MiB * 8 / total / 1e6
                    row = dict(rate_mbit=rate, rtt_ms=rtt, size_mib=size,
                               connect_ms=statistics.median(connects) * 1000,
                               connect_all_ms=[round(c * 1000, 2) for c in connects],
                               total_s=total, mbit=got, share=got / rate if rate else None,
                               queue_drops=e.get("queue_drops"),
                               late_mean_us=e.get("late_mean_us"),
                               late_max_us=e.get("late_max_us"))
                    rows.append(row)
                    log(f"   {'unlimited' if not rate else f'{rate} Mbit/s'}, RTT {rtt} ms: TCP "
                        f"connect {row['connect_ms']:.2f} ms (median of 5), curl {size} MiB in "
                        f"{total:.2f} s = {got:.0f} Mbit/s"
                        + (f" ({row['share']:.0%} of the rate)" if rate else "")
                        + f"; emulator: {row['queue_drops']} queue drops, packets late "
                        f"{row['late_mean_us']} µs mean, {(row['late_max_us'] or 0) / 1000:.1f} ms max")
                finally:
                    stop_all()
                    net.down()
                    self.nets.remove(net)
        log("\n| rate | RTT set | TCP connect (median of 5) | curl, whole transfer | of the rate | "
            "queue drops | late mean / max |")
        log("| --- | --- | --- | --- | --- | --- | --- |")
        for r in rows:
            log(f"| {'unlimited' if not r['rate_mbit'] else str(r['rate_mbit']) + ' Mbit/s'} | "
                f"{r['rtt_ms']} ms | {r['connect_ms']:.2f} ms | {r['size_mib']} MiB in "
                f"{r['total_s']:.2f} s = {r['mbit']:.0f} Mbit/s | {fmt(r['share'], '.0%')} | "
                f"{r['queue_drops']} | {r['late_mean_us']} µs / {(r['late_max_us'] or 0) / 1000:.1f} ms |")
        return rows

    def _ss_snapshot(self, net, logdir, at):
        """`ss -tin` in every host at one moment: per-connection RTT, queues, bytes."""
        time.sleep(max(0.0, at - time.monotonic()))
        for i in range(len(net.links)):
            r = run(["ip", "netns", "exec", net.ns(i), "ss", "-tin"], check=False, capture=True)
            with open(os.path.join(logdir, f"ss-h{i}.txt"), "w") as f:
                f.write(r.stdout or "")

    def _quitter(self, sc, seeder, F, res):
        base = {}
        def on_sample(t, c):
            if not base:
                base["tx"] = c[1][0]
                return
            if "seeder_quit_at" not in res and c[1][0] - base["tx"] >= sc["seeder_quits"] * F:
                res["seeder_quit_at"] = t - seeder.t0
                seeder.signal(signal.SIGTERM)
        return on_sample

    def _wait(self, procs, limit, members=()):
        deadline = time.monotonic() + limit
        stopping = False
        while any(p.alive() for _, p in procs):
            # --members-stay: members keep sharing until every one of them is complete.
            if members and not stopping and all(p.first("complete")[0] is not None
                                                for _, p in members):
                for _, p in members:
                    p.signal(signal.SIGTERM)
                stopping = True
            if time.monotonic() > deadline:
                for _, p in procs:
                    p.signal(signal.SIGKILL)
                log(f"   run timed out after {limit:.0f} s")
                break
            time.sleep(0.05)
        for _, p in procs:
            try:
                p.p.wait(5)
            except sp.TimeoutExpired:
                pass
            p.reader.join(2)

    def scenario(self, key, runs):
        sc = SCENARIOS[key]
        links = [(100, 100), sc["seed"]] + list(zip(sc["up"], sc["down"]))
        if "delay" in sc:
            net = TunNet(self.args.runid, links, sc["delay"], self.bins["netem"],
                         loss=self.args.loss, counters_log=os.path.join(
                             self.work, f"{key}-emulator.jsonl") if self.args.keep else None)
        else:
            net = Net(self.args.runid, links)
        self.nets.append(net)
        log(f"== {sc['title']} ({sc['size']} MiB, {runs} run{'s' * (runs > 1)})")
        results = []
        try:
            net.up()
            for r in range(1, runs + 1):
                if sc.get("versus_http"):
                    swarm = self.run_once(key, sc, net, r)
                    http = self.run_once(key + "-http", dict(sc, http_only=True), net, r)
                    swarm["http_time"] = http["slowest"]
                    swarm["http_ok"] = http["all_ok"]
                    swarm["wall_member"] = max(
                        d["exit_s"] for d in swarm["members_detail"].values()
                        if d["exit_s"] is not None) if swarm["all_ok"] else None
                    swarm["vs_http"] = (swarm["wall_member"] / http["slowest"]
                                        if swarm["wall_member"] and http["slowest"] else None)
                    swarm["http_rate"] = swarm["F"] / http["slowest"] if http["slowest"] else None
                    res = swarm
                else:
                    res = self.run_once(key, sc, net, r)
                if self.args.floor and not sc.get("http_origin"):
                    res.update(self.floor_once(key, sc, net, r))
                results.append(res)
                log("   " + one_line(res))
        finally:
            net.down()
            self.nets.remove(net)
        return results


def member_detail(p):
    tc, _ = p.first("complete")
    _, summ = p.last("summary")
    conns = [t for t, e in p.events if e.get("event") == "peer_connected"]
    peers = [(t, e.get("peers", 0)) for t, e in p.events if e.get("event") == "progress"]
    progress = [(t, e) for t, e in p.events if e.get("event") == "progress"]
    first = next((k for k, (_, e) in enumerate(progress) if e.get("parts_done", 0) > 0), None)
    # Progress comes every 500 ms: the first part was verified after the last report without
    # one (or the start) and by the first report with one.
    first_part = progress[first][0] if first is not None else None
    ts, _ = p.first("start")
    first_part_after = (progress[first - 1][0] if first else ts) if first is not None else None
    _, comp = p.first("complete")
    # The rate once the first part is in, to the end: what a cap or a link allows, without the
    # start-up (conductor, connections, slow start).
    steady = None
    if first is not None and tc is not None and tc > progress[first][0]:
        steady = (progress[first][1]["bytes_total"] - progress[first][1]["bytes_done"]) / (
            tc - progress[first][0])
    d = dict(complete_s=tc, exit_s=p.t_exit, first_connect_s=conns[0] if conns else None,
             connects=len(conns), max_peers=max((n for _, n in peers), default=0),
             peers_by_1s=max((n for t, n in peers if t <= 1.0), default=0),
             first_progress_with_part_s=first_part, first_part_after_s=first_part_after,
             start_s=ts, download_s=comp.get("download_seconds") if comp else None,
             steady_rate=steady)
    if summ:
        # The member's own clock (summary.first_part_seconds, when its version has it).
        d["first_part_exact_s"] = summ.get("first_part_seconds")
        d.update(bytes_down=summ["bytes_down"], bytes_up=summ["bytes_up"],
                 download_seconds=summ["download_seconds"], peers_used=summ["peers_used"])
    return d


def timeline(sampler, t0, hosts):
    """Per-host send rate (Mbit/s) per second from the start, from the bridge counters."""
    if not sampler.samples:
        return {}
    out = {}
    end = sampler.samples[-1][0]
    secs = int(end - t0) + 1
    for h in range(hosts):
        out[f"h{h}"] = [round(sampler.between(h, t0 + s, t0 + s + 1, 0) * 8 / 1e6, 1)
                        for s in range(secs)]
    return out


def cpu_times():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v


def busy(a, b):
    d = [y - x for x, y in zip(a, b)]
    total = sum(d)
    idle = d[3] + d[4]
    return round(1 - idle / total, 3) if total else None


def congestion_control(host_sysctls):
    """What the hosts' TCP uses: new namespaces take the machine's default, unless
    --host-sysctl sets another. It matters: with BBR (this VM's default) a member whose uplink
    is full downloads slower than with CUBIC (docs/BENCHMARKS.md, issue 14)."""
    for kv in reversed(host_sysctls):
        key, _, value = kv.partition("=")
        if key.strip() == "net.ipv4.tcp_congestion_control":
            return value.strip()
    try:
        with open("/proc/sys/net/ipv4/tcp_congestion_control") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def one_line(r):
    s = (f"{'ok' if r['all_ok'] else 'FAILED ' + ','.join(r['failed'])}: slowest "
         f"{fmt(r['slowest'])} s, mean {fmt(r['mean'])} s, T_min {r['t_min']:.2f} s, ratio "
         f"{fmt(r['ratio'])}, seeder sent {fmt(r['seeder_copies'])} F "
         f"({r['seeder_copies_wire']:.2f} F on the wire), members' upload use "
         f"{fmt(r['member_upload_use'], '.0%')}, cpu busy {fmt(r['machine_busy'], '.0%')}, "
         f"load {r['load_before']:.1f}")
    if "vs_http" in r:
        s += f"; member exit {fmt(r['wall_member'])} s vs curl {fmt(r['http_time'])} s = {fmt(r['vs_http'])}x"
    if "late" in r:
        L = r["late"]
        s += (f"; late members took {', '.join(fmt(x, '.1f') for x in L['durations'])} s, "
              f"seeder sent at most {fmt(L['max_from_seeder'], '.0%')} of their bytes")
    if r.get("stuck"):
        s += "; stuck: " + ", ".join(
            f"{h} at {v['parts_done']}/{v['parts_total']} parts with {v['peers']} peer(s) "
            f"since {v['stuck_since_s']} s" for h, v in r["stuck"].items())
    if "seeder_quit_at" in r:
        s += f"; seeder quit at {r['seeder_quit_at']:.1f} s"
    elif SCENARIOS.get(r["scenario"], {}).get("seeder_quits"):
        s += (f"; seeder NEVER quit (it sent less than "
              f"{SCENARIOS[r['scenario']]['seeder_quits']} F before the end: scenario not tested)")
    if "floor_ratio" in r:
        s += (f"; plain-TCP ideal schedule {fmt(r['floor_slowest'])} s = "
              f"{fmt(r['floor_ratio'])} x T_min")
    if r.get("redundant") is not None:
        s += f"; redundant payload sent {r['redundant']:.0%} of what members kept"
    if r.get("first_part_exact_s") is not None:
        s += f"; first part verified {r['first_part_exact_s']:.3f} s after start (median)"
    elif r.get("first_part_s") is not None:
        s += (f"; first part verified {fmt(r['first_part_after_s'])}-{fmt(r['first_part_s'])} s "
              f"after start (median)")
    if r.get("member_rate"):
        s += (f"; member {r['member_rate'] / 1e6:.1f} MB/s from start, "
              f"{fmt(r.get('steady_rate') and r['steady_rate'] / 1e6, '.1f')} MB/s after its first part")
    if r.get("http_rate"):
        s += f"; curl {r['http_rate'] / 1e6:.1f} MB/s"
    if "emulator" in r:
        e = r["emulator"]
        s += (f"; emulator so far: {e['queue_drops']} queue drops, late {e['late_mean_us']} µs "
              f"mean, {e['late_max_us'] / 1000:.1f} ms max")
    return s


def med(rs, key):
    """Median over the runs in which every member completed."""
    v = [r[key] for r in rs if r.get("all_ok") and r.get(key) is not None]
    return statistics.median(v) if v else None


def verdict(key, rs):
    sc = SCENARIOS[key]
    failed = sum(1 for r in rs if not r["all_ok"])
    why, good = [], failed == 0
    if failed:
        why.append(f"{failed} of {len(rs)} runs: a member did not complete")
    if sc.get("seeder_quits"):
        # Without the seeder leaving, "all complete" says nothing about this scenario.
        untested = sum(1 for r in rs if "seeder_quit_at" not in r)
        if untested:
            good = False
            why.append(f"{untested} of {len(rs)} runs: the seeder never sent "
                       f"{sc['seeder_quits']} F, so it never quit (not tested)")
    if sc.get("versus_http") and "target" in sc:
        v = med(rs, "vs_http")
        good = good and v is not None and v <= sc["target"]
        why.append(f"{fmt(v)} × curl (target ≤ {sc['target']})")
    elif "link_share" in sc:
        rate = med(rs, "member_rate")
        link = mbit(min(sc["seed"][0], sc["down"][0]))
        share = rate / link if rate else None
        good = good and share is not None and share >= sc["link_share"]
        curl = med(rs, "http_rate")
        why.append(f"member {fmt(rate and rate / 1e6, '.1f')} MB/s = {fmt(share, '.0%')} of the "
                   f"{link * 8 / 1e6:.0f} Mbit/s link (target ≥ {sc['link_share']:.0%}); curl "
                   f"{fmt(curl and curl / 1e6, '.1f')} MB/s = {fmt(curl and curl / link, '.0%')}")
    elif "cap_rate" in sc:
        rate = med(rs, "steady_rate")
        good = good and rate is not None and abs(rate / sc["cap_rate"] - 1) <= 0.05
        why.append(f"member {fmt(rate and rate / 1e6, '.2f')} MB/s after its first part "
                   f"(target {sc['cap_rate'] / 1e6:.0f} MB/s ± 5 %)")
    elif "target" in sc:
        ratio = med(rs, "ratio")
        good = good and ratio is not None and ratio <= sc["target"]
        why.append(f"{fmt(ratio)} × T_min (target ≤ {sc['target']})")
        if "copies" in sc:
            c = med(rs, "seeder_copies")
            good = good and c is not None and c <= sc["copies"]
            why.append(f"seeder {fmt(c)} F (target ≤ {sc['copies']})")
    elif not failed:
        why.append("all complete")
    return good, "; ".join(why)


def summary_table(all_results, not_run):
    log("\n| scenario | runs complete | T_min s | slowest s (median) | mean s | slowest / T_min | "
        "seeder sent (F) | first part s | target | met |")
    log("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for key, rs in all_results.items():
        sc = SCENARIOS[key]
        good, why = verdict(key, rs)
        extra = ""
        if sc.get("versus_http"):
            extra = f" (curl {fmt(med(rs, 'http_time'))} s)"
        ok_runs = sum(1 for r in rs if r["all_ok"])
        floor = ""
        if any("floor_ratio" in r for r in rs):
            floor = f" (plain-TCP ideal schedule {fmt(med(rs, 'floor_ratio'))})"
        log(f"| {sc['title']} | {ok_runs}/{len(rs)} | {rs[0]['t_min']:.2f} | {fmt(med(rs, 'slowest'))}"
            f"{extra} | {fmt(med(rs, 'mean'))} | {fmt(med(rs, 'ratio'))}{floor} | "
            f"{fmt(med(rs, 'seeder_copies'))} | {fmt(med(rs, 'first_part_exact_s') or med(rs, 'first_part_s'), '.3f')} | {why} | "
            f"{'yes' if good else 'no'} |")
    for key, why in not_run.items():
        log(f"| {SCENARIOS[key]['title']} | not run | | | | | | | {why} | no |")


# --------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(prog="scripts/testbed.sh", description=(
        "Swarm testbed: hosts as network namespaces on a bridge, links shaped with tc tbf; "
        "runs the real binaries and compares with the theoretical minimum time."))
    ap.add_argument("--quick", action="store_true",
                    help="functional check: 1 seeder + 3 members, 8 MiB, 100 Mbit; exit 1 unless "
                         "every member completes with an identical copy")
    for k in ("s1", "s2", "s3", "s4", "s5", "s5b", "s6", "baseline"):
        ap.add_argument(f"--{k}", action="store_true", help=SCENARIOS[k]["title"])
    ap.add_argument("--all", action="store_true", help="s1 to s6 and the baseline")
    for k, keys in W_OPTIONS.items():
        ap.add_argument(f"--{k}", action="store_true",
                        help="; ".join(SCENARIOS[x]["title"] for x in keys))
    ap.add_argument("--latency", action="store_true",
                    help="W1 to W6 (issue 10), W7 and W8 (issue 14)")
    ap.add_argument("--origin", action="store_true", help=SCENARIOS["origin"]["title"]
                    + " (needs nginx and curl)")
    ap.add_argument("--calibrate", action="store_true", help="measure the emulator by itself: "
                    "curl from http.server through it at 0, 10, 50, 100 ms RTT and at 100, 200, "
                    "1000 Mbit/s and unlimited")
    ap.add_argument("--calibrate-rates", default="100,200,1000,0",
                    help="Mbit/s for --calibrate, 0 = unlimited (default 100,200,1000,0)")
    ap.add_argument("--calibrate-rtts", default="0,10,50,100",
                    help="round trips in ms for --calibrate (default 0,10,50,100)")
    ap.add_argument("--host-sysctl", action="append", default=[], metavar="KEY=VALUE",
                    help="set a (per-namespace) sysctl in every host, e.g. "
                    "--host-sysctl 'net.ipv4.tcp_wmem=4096 16384 33554432' (repeatable)")
    ap.add_argument("--loss", type=float, default=0.0,
                    help="latency scenarios: fraction of packets the emulator drops (default 0)")
    ap.add_argument("--netem", help="the emulator binary (default: target/release/examples/netem, "
                    "built with cargo if missing)")
    ap.add_argument("--floor", action="store_true",
                    help="after each run, the plain-TCP ideal schedule (examples/ideal_schedule.rs) "
                    "on the same network: the testbed's floor for that scenario (issue 14)")
    ap.add_argument("--runs", type=int, default=3, help="runs per scenario (default 3)")
    ap.add_argument("--size", type=int, help="file size in MiB for every scenario "
                    "(default: 128, 512 for s6, 8 for --quick)")
    ap.add_argument("--bin", help="folder with composer, conductor and member "
                    "(default: target/release, built with cargo if missing)")
    ap.add_argument("--interval", default="30s", help="conductor --interval (default 30s)")
    ap.add_argument("--part-size", help="composer PART_SIZE (default: composer's choice)")
    ap.add_argument("--members-stay", action="store_true",
                    help="members run without --exit-when-done and keep sharing until every "
                    "member is complete, then the testbed stops them (SIGTERM)")
    ap.add_argument("--member-arg", action="append", default=[],
                    help="extra member argument, e.g. --member-arg=--pipeline=8 (repeatable)")
    ap.add_argument("--upload-cap", type=float, default=0, metavar="FRACTION",
                    help="members (not the seeder) run with --max-upload-rate at this fraction "
                    "of their emulated uplink, e.g. 0.9 (an experiment: does a saturated uplink "
                    "slow the member's own downloads?)")
    ap.add_argument("--seeder-arg", action="append", default=[],
                    help="extra argument for the seeder (repeatable)")
    ap.add_argument("--timeout", type=float, default=3600, help="global limit in seconds "
                    "(default 3600; 180 with --quick)")
    ap.add_argument("--run-limit", type=float, help="seconds one run may take before its members "
                    "are killed and it counts as failed (default: 4 x T_min + 20, at least 45)")
    ap.add_argument("--ss-at", type=float, metavar="SECONDS", help="diagnostics: save `ss -tin` "
                    "of every host this many seconds into each run (in the work folder)")
    ap.add_argument("--json-out", help="write every run's results to this JSON file")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, events; "
                    "for the latency scenarios also KEY-emulator.jsonl, the emulator's "
                    "counters every 100 ms)")
    ap.add_argument("--cleanup", metavar="RUNID",
                    help="only remove the namespaces tnc-RUNID-* left by a killed run")
    args = ap.parse_args()

    if os.geteuid() != 0:
        log("testbed: skipped: needs root (network namespaces and tc)")
        return 0
    for tool in ("ip", "tc"):
        if not shutil.which(tool):
            log(f"testbed: skipped: `{tool}` is not installed (iproute2)")
            return 0
    if args.cleanup:
        names = run(["ip", "netns", "list"], capture=True).stdout.split("\n")
        for n in [l.split()[0] for l in names if l.startswith(f"tnc-{args.cleanup}-")]:
            for pid in run(["ip", "netns", "pids", n], check=False, capture=True).stdout.split():
                os.kill(int(pid), signal.SIGKILL)
            run(["ip", "netns", "del", n], check=False)
            log(f"removed {n}")
        return 0

    keys = [k for k in ("s1", "s2", "s3", "s4", "s5", "s5b", "s6", "baseline")
            if getattr(args, k) or args.all]
    if args.origin:
        keys.append("origin")
    keys += [x for k, xs in W_OPTIONS.items() if getattr(args, k) or args.latency for x in xs]
    if args.quick:
        keys = ["quick"] + keys
        if len(keys) == 1:
            args.runs = 1
            if args.timeout == 3600:
                args.timeout = 180
    if not keys and not args.calibrate:
        ap.print_usage()
        log("choose --quick, --all, --latency, --calibrate or some of --s1 ... --s6, --baseline, "
            "--w1 ... --w8")
        return 2
    if args.size:
        for k in keys:
            SCENARIOS[k]["size"] = args.size
    wants_curl = args.calibrate or any(SCENARIOS[k].get("versus_http") or k == "baseline"
                                       or k == "origin" for k in keys)
    if "origin" in keys and not shutil.which("nginx"):
        log("error: nginx is needed for --origin (apt-get install -y nginx)")
        return 2
    if wants_curl and not shutil.which("curl"):
        log("error: curl is needed for --s6, --baseline, --w1, --w2 and --calibrate "
            "(apt-get install -y curl)")
        return 2
    wants_netem = args.calibrate or any("delay" in SCENARIOS[k] for k in keys)

    args.runid = "%06x" % random.getrandbits(24)
    Net.sysctls = args.host_sysctl
    # Namespaces allowed here?
    probe = f"tnc-{args.runid}-probe"
    r = run(["ip", "netns", "add", probe], check=False)
    if r.returncode != 0:
        log(f"testbed: skipped: cannot create a network namespace ({r.stderr.strip()})")
        return 0
    run(["ip", "netns", "del", probe], check=False)

    work = tempfile.mkdtemp(prefix="tnc-testbed.")
    bench = Bench(args, work, {})
    state = {"cleaned": False}

    def cleanup():
        if state["cleaned"]:
            return
        state["cleaned"] = True
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM):
            signal.signal(s, signal.SIG_IGN)
        stop_all()
        for net in list(bench.nets):
            net.down()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    def on_signal(sig, _frame):
        raise KeyboardInterrupt(f"signal {sig}")

    def on_alarm(_sig, _frame):
        raise GlobalTimeout(f"global timeout of {args.timeout:.0f} s")

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(1, int(args.timeout)))
    code = 0
    try:
        src = args.bin or os.path.join(ROOT, "target", "release")
        if not args.bin and not all(os.path.exists(os.path.join(src, b))
                                    for b in ("composer", "conductor", "member")):
            log("building release binaries...")
            run(["cargo", "build", "--release", "--quiet", "--manifest-path",
                 os.path.join(ROOT, "Cargo.toml")], timeout=1200)
        os.makedirs(os.path.join(work, "bin"))
        for b in ("composer", "conductor", "member"):
            dst = os.path.join(work, "bin", b)
            shutil.copy2(os.path.join(src, b), dst)
            bench.bins[b] = dst
        if wants_netem:
            netem = args.netem or os.path.join(ROOT, "target", "release", "examples", "netem")
            if not args.netem and not os.path.exists(netem):
                log("building the emulator (examples/netem.rs)...")
                run(["cargo", "build", "--release", "--quiet", "--example", "netem",
                     "--manifest-path", os.path.join(ROOT, "Cargo.toml")], timeout=1200)
            bench.bins["netem"] = os.path.join(work, "bin", "netem")
            shutil.copy2(netem, bench.bins["netem"])
        if args.floor:
            ideal = os.path.join(ROOT, "target", "release", "examples", "ideal_schedule")
            log("building the ideal schedule (examples/ideal_schedule.rs)...")
            run(["cargo", "build", "--release", "--quiet", "--example", "ideal_schedule",
                 "--manifest-path", os.path.join(ROOT, "Cargo.toml")], timeout=1200)
            bench.bins["ideal"] = os.path.join(work, "bin", "ideal_schedule")
            shutil.copy2(ideal, bench.bins["ideal"])
        log(f"testbed {args.runid}: namespaces tnc-{args.runid}-*, network {NET}.0/24 inside them "
            f"only; work folder {work}; load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cpus; "
            f"TCP congestion control {congestion_control(args.host_sysctl)}")
        results = {}
        if args.calibrate:
            log("== calibration: curl from http.server through the emulator, 1 run each")
            results["calibration"] = bench.calibrate(
                [int(x) for x in args.calibrate_rates.split(",")],
                [float(x) if "." in x else int(x) for x in args.calibrate_rtts.split(",")])
        not_run = {}
        for k in keys:
            runs = 1 if k == "quick" else args.runs
            try:
                results[k] = bench.scenario(k, runs)
            except Fatal as e:
                # One scenario that cannot run (W6 before the member has its rate flags) does
                # not stop the others.
                log(f"   scenario not run: {e}")
                not_run[k] = str(e)
                code = 1
            if args.json_out:
                with open(args.json_out, "w") as f:
                    json.dump(dict(results, not_run=not_run), f, indent=1)
        if keys:
            summary_table({k: v for k, v in results.items() if k != "calibration"}, not_run)
        for k, rs in results.items():
            if k != "calibration" and not all(r["all_ok"] for r in rs):
                code = 1
        if args.quick and code == 0:
            log("quick: every member completed and its copy is identical to the original")
        log(f"load average now {os.getloadavg()[0]:.2f}")
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); cleaning up")
        code = 130
    except (Fatal, GlobalTimeout) as e:
        log(f"error: {e}")
        code = 1
    finally:
        signal.alarm(0)
        cleanup()
    return code


sys.exit(main())
PYTHON
