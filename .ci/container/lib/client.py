#!/usr/bin/env python3
"""Small TCP clients and a stats reader for the container scenarios (.ci/container/run).

  client.py ping [--port P] [--count N] [--fresh]
        N PINGs on one connection (--fresh: each on a new one), each must get PONG
  client.py say --port P --send TEXT --expect TEXT   one exchange, byte-exact
  client.py waits [--port P] --clients N --ms MS [--sent FILE]
        N connections, one `WAIT MS` each; touches FILE once all are written; then every
        connection must answer DONE and then be closed by the server (a drain). Prints
        "DONE k/N, closed c/N"; exit 0 only for N/N and N/N.
  client.py pinger [--port P] --stop FILE [--every S] [--timeout S]
        a fresh connection with one PING every S seconds until FILE exists; prints JSON
        {"answered", "wrong", "lost", "pending"}: lost = closed without a reply, pending = no
        reply within --timeout after FILE appeared. Never fails by itself: the scenario judges.
  viewstats --json | client.py stat SECTION INSTANCE KEY    one value (0 if absent)

Every socket wait is bounded (timeouts below); loopback only.
"""
import argparse
import json
import os
import selectors
import socket
import sys
import time

HOST = "127.0.0.1"
IO_TIMEOUT = 30.0


def connect(port):
    s = socket.create_connection((HOST, port), timeout=IO_TIMEOUT)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_line(s):
    buf = b""
    while not buf.endswith(b"\n"):
        b = s.recv(4096)
        if not b:
            break
        buf += b
    return buf


def cmd_ping(a):
    # --fresh: each PING on a new connection (request dispatch spreads them over idle md).
    conns = a.count if a.fresh else 1
    per = 1 if a.fresh else a.count
    for _ in range(conns):
        with connect(a.port) as s:
            for _ in range(per):
                s.sendall(b"PING\n")
                got = read_line(s)
                if got != b"PONG\n":
                    print(f"PING on port {a.port}: got {got!r}", file=sys.stderr)
                    return 1
    return 0


def cmd_say(a):
    send = a.send.encode().decode("unicode_escape").encode()
    want = a.expect.encode().decode("unicode_escape").encode()
    with connect(a.port) as s:
        s.sendall(send)
        got = b""
        while len(got) < len(want):
            b = s.recv(4096)
            if not b:
                break
            got += b
    if got != want:
        print(f"port {a.port}: sent {send!r}, expected {want!r}, got {got!r}", file=sys.stderr)
        return 1
    return 0


def cmd_waits(a):
    conns = [connect(a.port) for _ in range(a.clients)]
    for c in conns:
        c.sendall(f"WAIT {a.ms}\n".encode())
    if a.sent:
        with open(a.sent, "w") as f:
            f.write("sent\n")
    done = closed = 0
    for k, c in enumerate(conns):
        try:
            got = read_line(c)
            if got == b"DONE\n":
                done += 1
            else:
                print(f"client {k}: got {got!r}", file=sys.stderr)
            # After the reply the server closes the connection (drain): EOF, nothing else.
            rest = c.recv(4096)
            if rest == b"":
                closed += 1
            else:
                print(f"client {k}: after DONE got {rest!r}, not a close", file=sys.stderr)
        except OSError as e:
            print(f"client {k}: {e}", file=sys.stderr)
        finally:
            c.close()
    print(f"DONE {done}/{a.clients}, closed {closed}/{a.clients}")
    return 0 if done == closed == a.clients else 1


def cmd_pinger(a):
    sel = selectors.DefaultSelector()
    answered = wrong = lost = 0
    bufs = {}
    stop_at = None
    next_at = time.monotonic()
    while True:
        now = time.monotonic()
        if stop_at is None and os.path.exists(a.stop):
            stop_at = now + a.timeout
        if stop_at is not None and (not bufs or now >= stop_at):
            break
        if stop_at is None and now >= next_at:
            next_at = now + a.every
            try:
                s = socket.create_connection((HOST, a.port), timeout=5)
                s.sendall(b"PING\n")
                s.setblocking(False)
                bufs[s] = b""
                sel.register(s, selectors.EVENT_READ)
            except OSError:
                lost += 1
        for key, _ in sel.select(timeout=0.01):
            s = key.fileobj
            try:
                b = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                b = b""
            if b:
                bufs[s] += b
                if not bufs[s].endswith(b"\n"):
                    continue
                if bufs[s] == b"PONG\n":
                    answered += 1
                else:
                    wrong += 1
            else:
                lost += 1
            sel.unregister(s)
            del bufs[s]
            s.close()
    pending = len(bufs)
    for s in bufs:
        s.close()
    print(json.dumps({"answered": answered, "wrong": wrong, "lost": lost, "pending": pending}))
    return 0


def cmd_stat(a):
    doc = json.load(sys.stdin)
    for block in doc["sections"].get(a.section, []):
        if block["instance"] == a.instance:
            print(block["values"].get(a.key, 0))
            return 0
    print(0)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("ping")
    q.add_argument("--port", type=int, default=8090)
    q.add_argument("--count", type=int, default=1)
    q.add_argument("--fresh", action="store_true")
    q = sub.add_parser("say")
    q.add_argument("--port", type=int, required=True)
    q.add_argument("--send", required=True)
    q.add_argument("--expect", required=True)
    q = sub.add_parser("waits")
    q.add_argument("--port", type=int, default=8090)
    q.add_argument("--clients", type=int, required=True)
    q.add_argument("--ms", type=int, required=True)
    q.add_argument("--sent")
    q = sub.add_parser("pinger")
    q.add_argument("--port", type=int, default=8090)
    q.add_argument("--stop", required=True)
    q.add_argument("--every", type=float, default=0.05)
    q.add_argument("--timeout", type=float, default=5.0)
    q = sub.add_parser("stat")
    q.add_argument("section")
    q.add_argument("instance", type=int)
    q.add_argument("key")
    a = p.parse_args()
    return {"ping": cmd_ping, "say": cmd_say, "waits": cmd_waits, "pinger": cmd_pinger,
            "stat": cmd_stat}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
