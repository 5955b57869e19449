#!/usr/bin/env python3
"""The README's Quick start, run as a newcomer would (.ci/readme-run calls this).

Everything comes from README.md, so the README and CI cannot drift:

* the run command is the one line of the ```sh block under "## Quick start";
* the client session is the ```text block after it: each `$ CMD` line is run in a shell in the
  repository and its output compared with the lines the README shows under it, digits masked
  (ports, pids, epochs and timings vary). `$ nc HOST PORT` without a pipe is the interactive
  dumb session: the lines that are not replies (PONG, RESULT, DONE, ...STREAM's A's..., ERR) are
  what the newcomer typed; they are sent and the replies compared, and `^C` ends it.

Before it starts: every default listener's port must be free and no segment of the default
`shared.name` may exist (another server on the default config), else it fails saying so. It then
starts the run command in its own session, waits for io_conn's `ready`, runs the session, stops
io_conn with SIGTERM (what the README promises of Ctrl-C), and checks that io_conn exited 0 and
left no segment in /dev/shm and no FIFO in its runtime dir. On any failure the processes it
started (its own session) are killed.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The first build of a fresh clone can take long; CI has built the release binaries already
# (.ci/package), so there the command only starts the server.
READY_TIMEOUT = float(os.environ.get("READY_TIMEOUT", 1800))
CLIENT_TIMEOUT = 30
STOP_TIMEOUT = 30
# Replies of the dumb service (8090); every other line of its session was typed.
DUMB_REPLY = re.compile(r"^(PONG|RESULT \d+|DONE|A*DONE|ERR .*)$")


def fail(msg):
    print(f"readme-run: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def quick_start_blocks(readme):
    """The fenced blocks (lang, lines) between '## Quick start' and the next '## ' heading."""
    section = readme.split("\n## Quick start\n", 1)
    if len(section) != 2:
        fail("README.md has no '## Quick start' section")
    body = section[1].split("\n## ", 1)[0]
    blocks, cur, lang = [], None, None
    for line in body.splitlines():
        if cur is None and line.startswith("```"):
            cur, lang = [], line[3:].strip()
        elif cur is not None and line.strip() == "```":
            blocks.append((lang, cur))
            cur = None
        elif cur is not None:
            cur.append(line)
    if cur is not None:
        fail("unterminated fenced block in the Quick start")
    return blocks


def sessions(lines):
    """`$ CMD` lines with the output lines under each."""
    out = []
    for line in lines:
        if line.startswith("$ "):
            out.append((line[2:], []))
        elif out:
            out[-1][1].append(line)
        elif line.strip():
            fail(f"Quick start transcript: output before any command: {line!r}")
    return out


def mask(text):
    return [re.sub(r"\s+", " ", re.sub(r"\d+", "0", l)).strip() for l in text]


def check_free(cfg):
    for lst in cfg["io_conn"]["listener"]:
        host, port = lst["address"].rsplit(":", 1)
        host = host.strip("[]")
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, int(port)))
            except OSError as e:
                fail(
                    f"port {lst['address']} (listener {lst['service']}) is not free ({e}): the "
                    "README's run command needs every default port; stop what uses it first"
                )
    name = cfg["shared"]["name"]
    left = [f for f in os.listdir("/dev/shm") if f.startswith(name + ".")]
    if left:
        fail(
            f"/dev/shm already has segments of shared.name = {name!r} ({' '.join(sorted(left))}): "
            "a server on the default config is running (or a crashed one left them); stop or "
            "remove it first"
        )


def run_session(cmd, expected):
    """Runs one `$ CMD` of the README and compares its output."""
    m = re.fullmatch(r"nc (\S+) (\d+)", cmd)
    if m:
        typed = [l for l in expected if l != "^C" and not DUMB_REPLY.match(l)]
        replies = [l for l in expected if l != "^C" and DUMB_REPLY.match(l)]
        if expected[-1:] != ["^C"] or not typed:
            fail(f"the interactive `{cmd}` session must show typed lines and end with ^C")
        # -q5: nc stays 5 s after its input ends, for the replies (WAIT 500 takes 0.5 s),
        # with room for a loaded machine; the newcomer would have typed for longer.
        argv = ["nc", "-q5", m.group(1), m.group(2)]
        stdin = "".join(l + "\n" for l in typed)
        want = replies
    else:
        argv = ["bash", "-o", "pipefail", "-c", cmd]
        stdin, want = "", expected
    try:
        r = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, cwd=REPO, timeout=CLIENT_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        fail(f"`{cmd}` did not finish within {CLIENT_TIMEOUT}s")
    got = r.stdout.splitlines()
    print(f"$ {cmd}\n" + "".join(l + "\n" for l in got), end="")
    # `viewstats -1 | head -3`: head closing the pipe may make the left side exit non-zero.
    if r.returncode != 0 and "| head" not in cmd:
        fail(f"`{cmd}` exited {r.returncode}: {r.stderr.strip()}")
    if mask(got) != mask(want):
        fail(
            f"`{cmd}` answered differently from the README (digits masked):\n"
            f"  README: {want!r}\n  got:    {got!r}"
        )


def main():
    os.chdir(REPO)
    blocks = quick_start_blocks(open("README.md").read())
    sh = [b for lang, b in blocks if lang == "sh"]
    text = [b for lang, b in blocks if lang == "text"]
    if len(sh) != 1 or len([l for l in sh[0] if l.strip()]) != 1:
        fail("the Quick start must have exactly one ```sh block with one command (the run command)")
    if len(text) != 1:
        fail("the Quick start must have exactly one ```text block (the client session)")
    run_cmd = sh[0][0].strip()
    cmds = sessions(text[0])
    # What the run command starts with: the shipped config.
    if not re.search(r"\bscripts/run\.sh\b", run_cmd):
        fail(f"unexpected run command {run_cmd!r} (expected ./scripts/run.sh)")
    cfg = tomllib.load(open("config/shmsrv.toml", "rb"))
    check_free(cfg)

    print(f"readme-run: $ {run_cmd}", flush=True)
    proc = subprocess.Popen(
        ["bash", "-c", run_cmd],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own session: everything it starts is ours to clean up
    )
    lines, ready = [], threading.Event()

    def reader():
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            print(f"  [run] {line}", end="", flush=True)
            if line.strip() == "ready":
                ready.set()

    threading.Thread(target=reader, daemon=True).start()
    ok = False
    try:
        until = time.monotonic() + READY_TIMEOUT
        while not ready.wait(0.2):
            if proc.poll() is not None:
                fail(f"the run command exited ({proc.returncode}) before io_conn was ready")
            if time.monotonic() > until:
                fail(f"io_conn was not ready within {READY_TIMEOUT:.0f}s")
        listening = [l for l in lines if l.startswith("listening ")]
        if len(listening) != len(cfg["io_conn"]["listener"]):
            fail(f"io_conn listens on {listening}, the config has {len(cfg['io_conn']['listener'])}")
        # `ready` comes once md is attached; sessions start right away, as a newcomer's would.
        for cmd, expected in cmds:
            run_session(cmd, expected)
        # Ctrl-C / SIGTERM: to io_conn, which the script exec'd (so it is the session leader's
        # process, pid proc.pid).
        exe = os.readlink(f"/proc/{proc.pid}/exe")
        if not exe.endswith("/io_conn"):
            fail(f"the run command's process is {exe}, not io_conn (scripts/run.sh must exec it)")
        os.kill(proc.pid, signal.SIGTERM)
        try:
            rc = proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            fail(f"io_conn did not stop within {STOP_TIMEOUT}s of SIGTERM")
        if rc != 0:
            fail(f"io_conn exited {rc} after SIGTERM")
        ok = True
    finally:
        if not ok and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    # Nothing left: no process of the session, no segment, no FIFO.
    time.sleep(0.2)
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        pass
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        fail("processes of the run command were still alive after io_conn exited (md children?)")
    name = cfg["shared"]["name"]
    left = [f for f in os.listdir("/dev/shm") if f.startswith(name + ".")]
    if left:
        fail(f"segments left in /dev/shm after the stop: {left}")
    summary = subprocess.run(
        ["./target/release/io_conn", "--config", "config/shmsrv.toml", "--check-config"],
        capture_output=True,
        text=True,
    ).stdout
    m = re.search(r"runtime_dir=(\S+)", summary)
    if not m:
        fail(f"no runtime_dir in io_conn --check-config: {summary!r}")
    rdir = m.group(1)
    if os.path.isdir(rdir):
        fifos = [f for f in os.listdir(rdir) if f.startswith(name + ".")]
        if fifos:
            fail(f"left in the runtime dir {rdir} after the stop: {fifos}")
    print(
        f"readme-run: OK: {len(cmds)} README commands answered as shown; stopped by SIGTERM with "
        f"no segment in /dev/shm and no FIFO in {rdir} left"
    )


if __name__ == "__main__":
    main()
