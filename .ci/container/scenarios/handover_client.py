#!/usr/bin/env python3
"""Client side of the restart-keeps-connections scenarios (30, 31): opens N keep-alive
connections to the dumb service, checks each answers PING, leaves a reply owed on each
(WAIT), runs COMMAND (e.g. `systemctl restart io_conn`) while a prober connects in a loop,
then checks every connection: `keep` mode expects the owed DONE, then PONG for a request
sent after the switch, on every connection, in order, and 0 refused connection attempts;
`dropped` mode expects every old connection closed (EOF, no reply) and new ones served.
Prints one summary line; exits non-zero on any failure. Bounded: every socket has a 30 s
timeout and the prober stops after the command."""
import socket
import subprocess
import sys
import threading
import time

mode, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
command = sys.argv[4:]
ADDR = ("127.0.0.1", port)


def line(f):
    return f.readline().decode()


conns = []
for i in range(n):
    s = socket.create_connection(ADDR, timeout=30)
    s.settimeout(30)
    f = s.makefile("rb")
    s.sendall(b"PING\n")
    assert line(f) == "PONG\n", f"connection {i}: no PONG before the switch"
    conns.append((s, f))
if mode == "keep":
    for s, _ in conns:
        s.sendall(b"WAIT 300\n")

stop = threading.Event()
probe = {"ok": 0, "refused": 0, "other": 0}


def prober():
    deadline = time.time() + 120
    while not stop.is_set() and time.time() < deadline:
        try:
            s = socket.create_connection(ADDR, timeout=30)
            s.settimeout(30)
            s.sendall(b"PING\n")
            if s.makefile("rb").readline() == b"PONG\n":
                probe["ok"] += 1
            else:
                probe["other"] += 1
            s.close()
        except ConnectionRefusedError:
            probe["refused"] += 1
        except OSError:
            probe["other"] += 1
        time.sleep(0.005)


t = threading.Thread(target=prober)
t.start()
time.sleep(0.2)
rc = subprocess.run(command).returncode
failures = []
if mode == "keep":
    if rc != 0:
        failures.append(f"{' '.join(command)} exited {rc}")
    for s, _ in conns:
        s.sendall(b"PING\n")
    answered = 0
    for i, (s, f) in enumerate(conns):
        try:
            a, b = line(f), line(f)
        except OSError as e:
            failures.append(f"connection {i}: {e}")
            continue
        if (a, b) != ("DONE\n", "PONG\n"):
            failures.append(f"connection {i}: got {a!r} {b!r}")
            continue
        s.sendall(b"PING\n")
        if line(f) == "PONG\n":
            answered += 1
    time.sleep(0.5)
    stop.set()
    t.join()
    if probe["refused"] or probe["other"]:
        failures.append(f"prober: {probe}")
    print(f"{answered}/{n} answered PING after the restart; replies lost: {n - answered}; "
          f"probe connections {probe}")
    if answered != n:
        failures.append(f"only {answered}/{n} answered")
else:
    closed = 0
    for i, (s, f) in enumerate(conns):
        try:
            s.sendall(b"PING\n")
        except OSError:
            pass
        try:
            if f.readline() == b"":
                closed += 1
            else:
                failures.append(f"connection {i} still answered after a crash")
        except OSError:
            closed += 1  # reset: closed too
    stop.set()
    t.join()
    s = socket.create_connection(ADDR, timeout=30)
    s.settimeout(30)
    s.sendall(b"PING\n")
    fresh = s.makefile("rb").readline() == b"PONG\n"
    print(f"{closed}/{n} stored connections closed after the crash; new connection served: {fresh}")
    if closed != n:
        failures.append(f"only {closed}/{n} closed")
    if not fresh:
        failures.append("a new connection was not served")
for fl in failures[:20]:
    print("FAIL:", fl, file=sys.stderr)
sys.exit(1 if failures else 0)
