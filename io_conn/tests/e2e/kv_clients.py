"""redis-py against shmsrv's kv service: one scenario per run, exit 0 when every check passed.

Run by io_conn/tests/e2e/kv.rs as `python3 kv_clients.py SCENARIO PORT [ARGS]`. Every wait is
bounded; every failure raises (non-zero exit, traceback on stderr)."""

import socket
import sys
import threading
import time

import redis

scenario, port = sys.argv[1], int(sys.argv[2])


def client(**kw):
    return redis.Redis(host="127.0.0.1", port=port, single_connection_client=True,
                       socket_timeout=60, **kw)


def eq(got, want, what=""):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def raises(prefix, f, *a):
    try:
        r = f(*a)
    except redis.exceptions.OutOfMemoryError as e:
        # redis-py turns "-OOM ..." into this class and strips the "OOM " prefix.
        if prefix != "OOM":
            raise
        return str(e)
    except (redis.ResponseError, redis.exceptions.AuthenticationError) as e:
        if not str(e).startswith(prefix):
            raise AssertionError(f"error {e!r} does not start with {prefix!r}")
        return str(e)
    raise AssertionError(f"{f.__name__}{a} returned {r!r}, wanted an error {prefix!r}")


def every_command():
    r = client()
    eq(r.ping(), True, "PING")
    eq(r.echo("hé\r\nllo"), "hé\r\nllo".encode(), "ECHO")
    eq(r.flushall(), True, "FLUSHALL")
    eq(r.get("nope"), None, "GET absent")
    eq(r.set("k", "v"), True, "SET")
    eq(r.get("k"), b"v", "GET")
    big = bytes(range(256)) * 200
    eq(r.set("big", big), True, "SET big")
    eq(r.get("big"), big, "GET big (binary, many chunks)")
    eq(r.set("k", "w", nx=True), None, "SET NX existing")
    eq(r.set("new", "1", xx=True), None, "SET XX absent")
    eq(r.set("k", "w", xx=True), True, "SET XX existing")
    eq(r.get("k"), b"w", "after XX")
    eq(r.set("ex", "1", ex=100), True, "SET EX")
    ttl = r.ttl("ex")
    if not 99 <= ttl <= 100:
        raise AssertionError(f"TTL {ttl}")
    eq(r.set("px", "1", px=100000), True, "SET PX")
    pttl = r.pttl("px")
    if not 99000 <= pttl <= 100000:
        raise AssertionError(f"PTTL {pttl}")
    eq(r.ttl("k"), -1, "TTL no expiry")
    eq(r.ttl("nope"), -2, "TTL absent")
    eq(r.expire("k", 50), True, "EXPIRE")
    eq(r.expire("nope", 50), False, "EXPIRE absent")
    eq(r.exists("k", "nope", "big"), 2, "EXISTS")
    eq(r.delete("k", "nope"), 1, "DEL")
    eq(r.incr("n"), 1, "INCR absent")
    eq(r.incrby("n", 41), 42, "INCRBY")
    eq(r.decr("n"), 41, "DECR")
    eq(r.decrby("n", 50), -9, "DECRBY")
    raises("value is not an integer", r.incr, "big")
    r.set("max", str(2**63 - 1))
    raises("increment or decrement would overflow", r.incr, "max")
    eq(r.mset({"a": "1", "b": "2"}), True, "MSET")
    eq(r.mget("a", "nope", "b"), [b"1", None, b"2"], "MGET")
    eq(r.dbsize(), 7, "DBSIZE")
    info = r.info()
    for k in ("redis_version", "connected_clients", "used_memory", "total_commands_processed"):
        if k not in info:
            raise AssertionError(f"INFO lacks {k}: {info}")
    eq(info["db0"]["keys"], 7, "INFO keyspace")
    if info["used_memory"] <= 0 or info["connected_clients"] < 1:
        raise AssertionError(f"INFO {info}")
    eq(r.execute_command("SELECT", 0), True, "SELECT 0")
    raises("DB index is out of range", r.execute_command, "SELECT", 1)
    eq(r.config_get("save"), {"save": ""}, "CONFIG GET save")
    eq(r.config_get("appendonly"), {"appendonly": "no"}, "CONFIG GET appendonly")
    raises("unknown command 'NOSUCH', with args beginning with: 'x'", r.execute_command, "NOSUCH", "x")
    raises("wrong number of arguments for 'get' command", r.execute_command, "GET")
    raises("wrong number of arguments for 'mset' command", r.execute_command, "MSET", "a")
    raises("syntax error", r.execute_command, "SET", "a", "b", "BOGUS")
    raises("invalid expire time in 'set' command", r.execute_command, "SET", "a", "b", "EX", "0")
    raises("AUTH <password> called without any password", r.execute_command, "AUTH", "x")
    eq(r.flushall(), True, "FLUSHALL")
    eq(r.dbsize(), 0, "DBSIZE after FLUSHALL")
    eq(r.execute_command("QUIT"), True, "QUIT")


def md_pid(c):
    return c.info("server")["process_id"]


def set_seen_by_twenty():
    writer = client()
    readers = [client() for _ in range(20)]
    pids = {md_pid(c) for c in readers + [writer]}
    eq(len(pids), 2, "21 connections spread over both md (md pids from INFO)")
    writer.set("shared", "from-one-connection")
    for i, c in enumerate(readers):
        eq(c.get("shared"), b"from-one-connection", f"reader {i}")
    writer.set("shared", "changed")
    for i, c in enumerate(readers):
        eq(c.get("shared"), b"changed", f"reader {i} after the change")


def incr_fifty_by_two_hundred():
    clients = [client() for _ in range(50)]
    eq(len({md_pid(c) for c in clients}), 2, "50 clients over both md")
    clients[0].delete("counter")
    errors = []

    def run(c):
        try:
            for _ in range(200):
                c.incr("counter")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    ts = [threading.Thread(target=run, args=(c,)) for c in clients]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    eq(errors, [], "INCR errors")
    eq(clients[0].get("counter"), b"10000", "50 x 200 INCR")


def expiry():
    r = client()
    r.set("short", "x", px=300)
    r.set("long", "y", ex=1000)
    eq(r.get("short"), b"x", "before expiry")
    deadline = time.monotonic() + 60
    while r.get("short") is not None:
        if time.monotonic() > deadline:
            raise AssertionError("key never expired")
        time.sleep(0.05)
    eq(r.exists("short"), 0, "EXISTS after expiry")
    eq(r.ttl("short"), -2, "TTL after expiry")
    eq(r.get("long"), b"y", "the other key stays")
    r.set("e2", "z")
    eq(r.pexpire("e2", 200), True, "PEXPIRE")
    while r.exists("e2"):
        if time.monotonic() > deadline:
            raise AssertionError("PEXPIRE never expired")
        time.sleep(0.05)
    eq(r.expire("long", -1), True, "EXPIRE negative deletes")
    eq(r.exists("long"), 0, "deleted by EXPIRE -1")


def full_table(max_keys):
    r = client()
    r.flushall()
    for i in range(max_keys):
        eq(r.set(f"key:{i}", "v"), True, f"SET {i}")
    eq(r.dbsize(), max_keys, "DBSIZE full")
    raises("OOM", r.set, "one-more", "v")
    eq(r.get("key:0"), b"v", "reads still work when full")
    eq(r.ping(), True, "server alive")
    eq(r.delete("key:7"), 1, "DEL frees room")
    eq(r.set("one-more", "v"), True, "SET after DEL")
    raises("OOM", r.set, "two-more", "v")


def garbage():
    other = client()
    other.set("g", "1")
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\ng\r\n*x\r\n*1\r\n$4\r\nPING\r\n")
    got = b""
    while True:
        b = s.recv(4096)
        if not b:
            break
        got += b
    eq(got, b"+PONG\r\n$1\r\n1\r\n-ERR Protocol error: invalid multibulk length\r\n",
       "replies before the error, the error, then close")
    s2 = socket.create_connection(("127.0.0.1", port), timeout=60)
    s2.sendall(b"PING\r\n*1\r\n:5\r\n")
    got = b""
    while True:
        b = s2.recv(4096)
        if not b:
            break
        got += b
    eq(got, b"+PONG\r\n-ERR Protocol error: expected '$' at a bulk string\r\n", "second garbage")
    eq(other.get("g"), b"1", "the other client is unaffected")
    eq(other.incr("g"), 2, "and keeps working")


def raw_cmd(s, *args):
    m = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(x), x) for x in args)
    s.sendall(m)
    got = b""
    while not got.endswith(b"\r\n"):
        got += s.recv(4096)
    return got


def auth(password):
    # Before AUTH over a raw socket: redis-py itself cannot connect unauthenticated (its
    # connect-time CLIENT SETINFO gets NOAUTH, as with Redis).
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    eq(raw_cmd(s, b"GET", b"k"), b"-NOAUTH Authentication required.\r\n", "before AUTH")
    eq(raw_cmd(s, b"AUTH", b"wrong"),
       b"-WRONGPASS invalid username-password pair or user is disabled.\r\n", "wrong password")
    eq(raw_cmd(s, b"AUTH", password.encode()), b"+OK\r\n", "AUTH")
    eq(raw_cmd(s, b"SET", b"k", b"v"), b"+OK\r\n", "after AUTH")
    r2 = client(password=password)  # RESP3: HELLO 3 AUTH default <password>
    eq(r2.get("k"), b"v", "redis-py password= (HELLO AUTH)")
    r3 = client(password=password, protocol=2)  # RESP2: AUTH <password>
    eq(r3.get("k"), b"v", "redis-py password= (AUTH)")


def crash_load(seconds):
    """SETs self-checking values on 8 connections until told to stop (a file appears)."""
    stop_file = sys.argv[4]
    errors = []

    def run(i):
        c = client()
        n = 0
        while not _exists(stop_file):
            k = f"c{i}:{n % 50}"
            try:
                c.set(k, (k + "|") * (1 + n % 40))
            except redis.ConnectionError:
                c = client()  # its md died: a new connection goes to a live one
            n += 1

    ts = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(seconds)
    eq(errors, [], "load errors")


def _exists(p):
    try:
        open(p).close()
        return True
    except OSError:
        return False


def audit():
    """Every key readable and whole (written by crash_load)."""
    r = client()
    n = 0
    for i in range(8):
        for j in range(50):
            k = f"c{i}:{j}"
            v = r.get(k)
            if v is None:
                continue
            n += 1
            unit = (k + "|").encode()
            if len(v) % len(unit) or v != unit * (len(v) // len(unit)):
                raise AssertionError(f"{k}: torn value {v[:80]!r}")
    # The load still runs (keys only get added): DBSIZE, read after, counts at least these.
    d = r.dbsize()
    if not n <= d <= 400:
        raise AssertionError(f"DBSIZE {d} with {n} keys read before")
    if n == 0:
        raise AssertionError("no key survived at all")
    print(r.info("stats")["cache_recoveries"])


{
    "every_command": every_command,
    "set_seen_by_twenty": set_seen_by_twenty,
    "incr": incr_fifty_by_two_hundred,
    "expiry": expiry,
    "full": lambda: full_table(int(sys.argv[3])),
    "garbage": garbage,
    "auth": lambda: auth(sys.argv[3]),
    "crash_load": lambda: crash_load(float(sys.argv[3])),
    "audit": audit,
}[scenario]()
