#!/usr/bin/env python3
"""Soak test: mixed load against a real io_conn + md for a long time, then the books are checked.

    scripts/soak.py                      # 30 minutes (the issue's soak), release binaries
    scripts/soak.py --smoke              # ~40 s, the same checks (CI runs this)
    scripts/soak.py --duration 600 --kill-every 60 --bin-dir target/debug

It starts its own `io_conn --spawn-md N` on loopback ports it picks, under a unique shared name
and runtime dir (so it never meets a running server), and drives at once:

- pipelining clients of `dumb` (PING / WAIT / BURN with a unique n), of `reverse` (unique tokens)
  and of `echo` (unique bytes): every reply is checked against the request at its position, so a
  reply lost, reordered, duplicated or delivered to another client fails the run;
- slow readers of `STREAM` (byte count and the final DONE checked);
- clients that disconnect in the middle of requests (FIN or RST);
- garbage: binary lines (each must get an `ERR`), and oversized lines (the server closes);
- kill -9 of one md every --kill-every seconds (io_conn restarts it).

A connection the server closes while requests are outstanding is allowed only within
--kill-grace seconds of a kill (its md died: its flows are closed, counted as closed_md_gone);
anywhere else it is a lost reply. At the end it checks:
- zero wrong, misdelivered or lost replies;
- no RSS growth of any process after the warm-up (minute 5; a third of the run in smoke mode):
  at most 4 MiB + 10 % above its RSS at the end of its warm-up;
- the counters add up once every client is gone: connections_accepted = connections_current (0)
  + every closed_* counter (found by prefix, so every reason counts, closed_memory of
  io_conn.max_buffered included, stats schema 6); md_deaths >= kills; the server still
  answers PING.

Exit status 0 = every check passed; 1 = a check failed (each failure printed); 2 = could not
run. Standard library only.
"""

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Soak:
    def __init__(self, args):
        self.a = args
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.failures = []
        self.stats = {}  # name -> count
        self.kills = []  # monotonic times of kill -9
        self.rss = {}  # pid -> [(t, kib, name)]
        self.tmp = tempfile.mkdtemp(prefix="shmsrv-soak-")
        self.name = f"soak{os.getpid()}x{random.randrange(1 << 20):x}"
        self.ports = {"echo": free_port(), "reverse": free_port(), "dumb": free_port()}
        self.proc = None
        self.t0 = time.monotonic()

    # ---- bookkeeping -------------------------------------------------------------------------
    def fail(self, what):
        with self.lock:
            if len(self.failures) < 50:
                self.failures.append(f"[{time.monotonic() - self.t0:7.1f}s] {what}")
            self.stats["failures"] = self.stats.get("failures", 0) + 1

    def count(self, what, n=1):
        with self.lock:
            self.stats[what] = self.stats.get(what, 0) + n

    def near_kill(self):
        now = time.monotonic()
        with self.lock:
            return any(0 <= now - k <= self.a.kill_grace for k in self.kills)

    # ---- the server --------------------------------------------------------------------------
    def config(self):
        path = os.path.join(self.tmp, "soak.toml")
        with open(path, "w") as f:
            f.write(
                f"""[shared]
name = "{self.name}"
runtime_dir = "{self.tmp}/run"

[io_conn]
message_deadline = "5s"
output_credit = "64KiB"

[[io_conn.listener]]
address = "127.0.0.1:{self.ports['echo']}"
service = "echo"
dispatch = "request"

[[io_conn.listener]]
address = "127.0.0.1:{self.ports['reverse']}"
service = "reverse"
dispatch = "request"

[[io_conn.listener]]
address = "127.0.0.1:{self.ports['dumb']}"
service = "dumb"
dispatch = "request"

[md.dumb]
burn_max = 2000000
wait_max = "5s"
"""
            )
        return path

    def start(self):
        self.cfg = self.config()
        b = self.a.bin_dir
        self.viewstats = os.path.join(b, "viewstats")
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"), SHMSRV_MD_BIN=os.path.join(b, "md"))
        self.log = open(os.path.join(self.tmp, "io_conn.log"), "w")
        self.proc = subprocess.Popen(
            [os.path.join(b, "io_conn"), "--config", self.cfg, "--spawn-md", str(self.a.md)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"io_conn exited at start with {self.proc.returncode}; log: {self.log.name}")
            try:
                if len(self.md_pids()) == self.a.md and self.ping_once():
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        raise RuntimeError("the server did not come up within 30 s")

    def snapshot(self):
        out = subprocess.run([self.viewstats, "--config", self.cfg, "--json"], capture_output=True, timeout=20)
        if out.returncode != 0:
            raise ValueError(out.stderr.decode(errors="replace"))
        return json.loads(out.stdout)

    def md_pids(self):
        s = self.snapshot()
        return [m["values"]["pid"] for m in s["sections"]["md"] if m.get("state_name") == "running" and m["values"]["pid"]]

    def ping_once(self):
        with socket.create_connection(("127.0.0.1", self.ports["dumb"]), timeout=5) as c:
            c.sendall(b"PING\n")
            return c.recv(16) == b"PONG\n"

    def shutdown(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        subprocess.run(["rm", "-rf", self.tmp])

    # ---- clients -----------------------------------------------------------------------------
    def connect(self, service):
        c = socket.create_connection(("127.0.0.1", self.ports[service]), timeout=self.a.reply_timeout)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return c

    def lost(self, what, outstanding):
        """The server closed (or reset) a connection with `outstanding` replies owed."""
        if outstanding == 0:
            return
        if self.near_kill():
            self.count("closed_near_kill")
        else:
            self.fail(f"{what}: connection closed with {outstanding} replies owed, no md kill nearby")

    def read_lines(self, c, buf, n):
        """Reads n lines; returns (lines, rest) or (lines_so_far, None) on close."""
        lines = []
        while len(lines) < n:
            i = buf.find(b"\n")
            if i >= 0:
                lines.append(bytes(buf[: i + 1]))
                del buf[: i + 1]
                continue
            d = c.recv(65536)
            if not d:
                return lines, None
            buf += d
        return lines, buf

    def dumb_client(self, rnd):
        while not self.stop.is_set():
            try:
                c = self.connect("dumb")
            except OSError as e:
                self.fail(f"dumb: connect: {e}")
                time.sleep(0.5)
                continue
            buf = bytearray()
            try:
                for _ in range(rnd.randrange(1, 200)):
                    if self.stop.is_set():
                        break
                    reqs, want = [], []
                    for _ in range(rnd.randrange(1, 9)):
                        k = rnd.random()
                        if k < 0.5:
                            reqs.append(b"PING\n")
                            want.append(b"PONG\n")
                        elif k < 0.7:
                            ms = rnd.randrange(0, 40)
                            reqs.append(b"WAIT %d\n" % ms)
                            want.append(b"DONE\n")
                        else:
                            n = rnd.randrange(1, 200000)
                            reqs.append(b"BURN %d\n" % n)
                            want.append(b"RESULT %d\n" % (n * (n + 1) // 2))
                    c.sendall(b"".join(reqs))
                    got, rest = self.read_lines(c, buf, len(want))
                    for g, w, r in zip(got, want, reqs):
                        if g != w:
                            self.fail(f"dumb: {r!r} answered {g!r}, expected {w!r}")
                    self.count("replies", len(got))
                    if rest is None:
                        self.lost("dumb", len(want) - len(got))
                        break
            except socket.timeout:
                self.fail("dumb: no reply within the timeout")
            except ConnectionResetError:
                self.lost("dumb", 1)
            finally:
                c.close()

    def reverse_client(self, rnd, ident):
        seq = 0
        while not self.stop.is_set():
            try:
                c = self.connect("reverse")
            except OSError as e:
                self.fail(f"reverse: connect: {e}")
                time.sleep(0.5)
                continue
            buf = bytearray()
            try:
                for _ in range(rnd.randrange(1, 300)):
                    if self.stop.is_set():
                        break
                    toks = []
                    for _ in range(rnd.randrange(1, 17)):
                        seq += 1
                        toks.append(b"r%d-%d-%s" % (ident, seq, b"x" * rnd.randrange(0, 200)))
                    c.sendall(b"".join(t + b"\n" for t in toks))
                    got, rest = self.read_lines(c, buf, len(toks))
                    for g, t in zip(got, toks):
                        if g != t[::-1] + b"\n":
                            self.fail(f"reverse: {t[:40]!r}... answered {g[:40]!r}... (misdelivered or wrong)")
                    self.count("replies", len(got))
                    if rest is None:
                        self.lost("reverse", len(toks) - len(got))
                        break
            except socket.timeout:
                self.fail("reverse: no reply within the timeout")
            except ConnectionResetError:
                self.lost("reverse", 1)
            finally:
                c.close()

    def echo_client(self, rnd, ident):
        seq = 0
        while not self.stop.is_set():
            try:
                c = self.connect("echo")
            except OSError as e:
                self.fail(f"echo: connect: {e}")
                time.sleep(0.5)
                continue
            try:
                for _ in range(rnd.randrange(1, 300)):
                    if self.stop.is_set():
                        break
                    seq += 1
                    msg = b"<e%d-%d:%s>" % (ident, seq, bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 3000))))
                    c.sendall(msg)
                    got = bytearray()
                    while len(got) < len(msg):
                        d = c.recv(65536)
                        if not d:
                            break
                        got += d
                    if len(got) < len(msg):
                        self.lost("echo", 1)
                        break
                    if bytes(got) != msg:
                        self.fail(f"echo: sent {len(msg)} bytes, got different bytes back (misdelivered or wrong)")
                    self.count("replies")
            except socket.timeout:
                self.fail("echo: no reply within the timeout")
            except ConnectionResetError:
                self.lost("echo", 1)
            finally:
                c.close()

    def slow_reader(self, rnd):
        while not self.stop.is_set():
            n = rnd.randrange(200_000, 2_000_000)
            try:
                c = self.connect("dumb")
                c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
                c.sendall(b"STREAM %d\n" % n)
                got = 0
                tail = b""
                while True:
                    d = c.recv(4096)
                    if not d:
                        self.lost("stream", 1)
                        break
                    got += len(d)
                    tail = (tail + d)[-5:]
                    if got == n + 5 and tail == b"DONE\n":
                        self.count("replies")
                        break
                    if got > n + 5:
                        self.fail(f"stream: more than {n} + 5 bytes")
                        break
                    time.sleep(0.002)  # ~2 MB/s at most: a slow reader
                c.close()
            except socket.timeout:
                self.fail("stream: stalled")
            except ConnectionResetError:
                self.lost("stream", 1)

    def disconnector(self, rnd):
        reqs = [b"WAIT 300\n", b"BURN 2000000\n", b"STREAM 5000000\n", b"PING\nWAIT 100\nPING\n"]
        while not self.stop.is_set():
            try:
                c = self.connect(rnd.choice(["dumb", "dumb", "reverse"]))
                c.sendall(rnd.choice(reqs))
                if rnd.random() < 0.5:
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                time.sleep(rnd.random() * 0.05)
                c.close()
                self.count("disconnects")
            except OSError as e:
                self.fail(f"disconnector: {e}")
            time.sleep(0.01)

    def garbage(self, rnd):
        while not self.stop.is_set():
            try:
                c = self.connect("dumb")
                if rnd.random() < 0.2:
                    # Oversized: a line above max_message (64 KiB): an ERR, then the server closes.
                    try:
                        c.sendall(b"Z" * (70 << 10))
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    data = b""
                    try:
                        while True:
                            d = c.recv(4096)
                            if not d:
                                break
                            data += d
                    except ConnectionResetError:
                        pass
                    if data and not data.startswith(b"ERR"):
                        self.fail(f"garbage: oversized line answered {data[:60]!r}")
                    self.count("oversized")
                else:
                    lines = []
                    for _ in range(rnd.randrange(1, 10)):
                        b = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 300)))
                        lines.append(b"#" + b.replace(b"\n", b"") + b"\n")
                    c.sendall(b"".join(lines))
                    got, rest = self.read_lines(c, bytearray(), len(lines))
                    for g in got:
                        if not g.startswith(b"ERR"):
                            self.fail(f"garbage: answered {g[:60]!r}")
                    if rest is None:
                        self.lost("garbage", len(lines) - len(got))
                    self.count("garbage_lines", len(got))
                c.close()
            except socket.timeout:
                self.fail("garbage: no reply within the timeout")
            except ConnectionResetError:
                self.lost("garbage", 1)
            time.sleep(0.02)

    # ---- chaos and watching ------------------------------------------------------------------
    def killer(self, rnd):
        while not self.stop.wait(self.a.kill_every):
            try:
                pids = self.md_pids()
            except (OSError, ValueError, KeyError, subprocess.TimeoutExpired) as e:
                self.fail(f"killer: reading the stats: {e}")
                continue
            if not pids:
                self.fail("killer: no running md")
                continue
            pid = rnd.choice(pids)
            with self.lock:
                self.kills.append(time.monotonic())
            try:
                os.kill(pid, signal.SIGKILL)
                self.count("kills")
            except ProcessLookupError:
                pass

    def rss_of(self, pid):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def sampler(self):
        while not self.stop.wait(self.a.sample_every):
            now = time.monotonic()
            pids = [(self.proc.pid, "io_conn")]
            try:
                with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                    pids += [(int(p), "md") for p in f.read().split()]
            except OSError:
                pass
            for pid, name in pids:
                kib = self.rss_of(pid)
                if kib is not None:
                    self.rss.setdefault(pid, []).append((now, kib, name))
            if self.proc.poll() is not None:
                self.fail(f"io_conn exited with {self.proc.returncode}")
                self.stop.set()

    def check_rss(self):
        warm = self.a.warmup
        for pid, samples in self.rss.items():
            first = samples[0][0]
            base_t = max(first, self.t0) + warm
            after = [s for s in samples if s[0] >= base_t]
            if len(after) < 2:
                continue
            base = after[0][1]
            peak = max(s[1] for s in after)
            name = after[0][2]
            limit = base + 4096 + base // 10
            print(f"rss {name} pid {pid}: {base} KiB after warm-up, peak {peak} KiB later ({len(after)} samples)")
            if peak > limit:
                self.fail(f"rss: {name} pid {pid} grew from {base} KiB to {peak} KiB after the warm-up")

    def check_books(self):
        # Every client thread has stopped; wait for io_conn to see every close.
        deadline = time.monotonic() + 30
        io = None
        while time.monotonic() < deadline:
            io = self.snapshot()["sections"]["io"][0]["values"]
            if io["connections_current"] == 0:
                break
            time.sleep(0.5)
        closed = {k: v for k, v in io.items() if k.startswith("closed_")}
        acc = io["connections_accepted"]
        print(f"connections_accepted {acc} = current {io['connections_current']} + closed {sum(closed.values())} {closed}")
        if io["connections_current"] != 0:
            self.fail(f"books: {io['connections_current']} connections still open after every client left")
        if acc != io["connections_current"] + sum(closed.values()):
            self.fail(f"books: accepted {acc} != current + closed by reason {io['connections_current'] + sum(closed.values())}")
        kills = self.stats.get("kills", 0)
        if io["md_deaths"] < kills:
            self.fail(f"books: md_deaths {io['md_deaths']} < kills {kills}")
        if not self.ping_once():
            self.fail("the server does not answer PING after the soak")

    def run(self):
        self.start()
        print(f"soak: {self.a.duration:.0f} s, {self.a.md} md, kill -9 of an md every {self.a.kill_every:.0f} s, "
              f"name {self.name}, ports {self.ports}, log {self.log.name}", flush=True)
        self.t0 = time.monotonic()
        seed = self.a.seed if self.a.seed is not None else random.randrange(1 << 30)
        print(f"seed {seed}", flush=True)
        threads = []

        def spawn(fn, *args):
            t = threading.Thread(target=fn, args=args, daemon=True)
            t.start()
            threads.append(t)

        k = 0
        for _ in range(self.a.clients):
            k += 1
            spawn(self.dumb_client, random.Random(seed + k))
            k += 1
            spawn(self.reverse_client, random.Random(seed + k), k)
            k += 1
            spawn(self.echo_client, random.Random(seed + k), k)
        for _ in range(2):
            k += 1
            spawn(self.slow_reader, random.Random(seed + k))
            k += 1
            spawn(self.disconnector, random.Random(seed + k))
        k += 1
        spawn(self.garbage, random.Random(seed + k))
        killer = threading.Thread(target=self.killer, args=(random.Random(seed),), daemon=True)
        killer.start()
        sampler = threading.Thread(target=self.sampler, daemon=True)
        sampler.start()
        end = self.t0 + self.a.duration
        last = 0
        while time.monotonic() < end and not self.stop.is_set():
            time.sleep(1)
            if time.monotonic() - last >= self.a.report_every:
                last = time.monotonic()
                with self.lock:
                    print(f"[{last - self.t0:6.0f}s] {dict(sorted(self.stats.items()))}", flush=True)
        self.stop.set()
        for t in threads + [killer, sampler]:
            t.join(timeout=self.a.reply_timeout + 10)
            if t.is_alive():
                self.fail(f"a client thread ({t.name}) did not stop: hung on the server")
        self.check_rss()
        self.check_books()
        print(f"totals: {dict(sorted(self.stats.items()))}")
        if self.stats.get("replies", 0) == 0:
            self.fail("no replies at all")
        if self.failures:
            print("SOAK FAILED:")
            for f in self.failures:
                print("  " + f)
            return 1
        print("soak passed")
        return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=1800, help="seconds of load (default 1800)")
    p.add_argument("--smoke", action="store_true", help="a short run with the same checks (~40 s)")
    p.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"))
    p.add_argument("--md", type=int, default=2, help="md instances")
    p.add_argument("--clients", type=int, default=4, help="pipelining clients per service")
    p.add_argument("--kill-every", type=float, default=120, help="seconds between kill -9 of an md")
    p.add_argument("--kill-grace", type=float, default=3, help="seconds after a kill in which closes are expected")
    p.add_argument("--warmup", type=float, default=300, help="seconds before RSS must stop growing")
    p.add_argument("--sample-every", type=float, default=5)
    p.add_argument("--report-every", type=float, default=60)
    p.add_argument("--reply-timeout", type=float, default=20)
    p.add_argument("--seed", type=int)
    a = p.parse_args()
    if a.smoke:
        a.duration, a.kill_every, a.warmup, a.sample_every, a.report_every = 40, 8, 15, 1, 10
    s = Soak(a)
    try:
        return s.run()
    except (RuntimeError, OSError) as e:
        print(f"soak: could not run: {e}", file=sys.stderr)
        return 2
    finally:
        s.shutdown()


if __name__ == "__main__":
    sys.exit(main())
