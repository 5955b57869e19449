#!/usr/bin/env bash
# 21-socket-activation: with io_conn.socket enabled, systemd holds the listeners, and connection
# attempts during `systemctl restart io_conn` wait in the kernel's backlog: none is refused.
# Also: a reload that adds a listener is refused by name under socket activation.
# Runs inside the container (bash -euo pipefail, cwd = repo); leaves shmsrv.target running with
# io_conn, md@0 and md@1 (and io_conn.socket enabled: the shipped listeners are its sockets).
set -euo pipefail

conf=/etc/shmsrv/shmsrv.toml
work=$(mktemp -d)
cp "$conf" "$work/orig.toml"
trap 'cp "$work/orig.toml" "$conf"; rm -rf "$work"' EXIT

wait_ping() { # waits (20 s at most) until dumb answers PING on a fresh connection
    local i line
    for i in $(seq 200); do
        if exec 5<>/dev/tcp/127.0.0.1/8090 2>/dev/null; then
            printf 'PING\n' >&5
            if IFS= read -r -t 5 line <&5 && [[ $line == PONG ]]; then
                exec 5<&-
                return 0
            fi
            exec 5<&-
        fi
        sleep 0.1
    done
    echo "dumb does not answer PING" >&2
    return 1
}

since=$(date '+%Y-%m-%d %H:%M:%S')
# io_conn holds the ports while it binds them itself: stop it, let systemd bind them, start it.
systemctl stop io_conn
systemctl enable --now io_conn.socket
systemctl start io_conn
# One socket per shipped listener (.ci/systemd checks io_conn.socket against the config).
n=$(grep -c '^ListenStream=' /etc/systemd/system/io_conn.socket)
journalctl -u io_conn --since "$since" --no-pager | grep -c "socket activation: $n sockets from systemd" >/dev/null
wait_ping

# Clients connect in a loop while io_conn restarts: count refused attempts (connect fails) and
# connections that got their PONG. A connection the old io_conn had accepted may be cut by its
# exit (io_conn restarts do not keep connections yet); it is counted apart, not as refused.
client() {
    local attempts=0 refused=0 answered=0 cut=0 line
    while [[ ! -e $work/stop ]]; do
        attempts=$((attempts + 1))
        if ! exec 3<>/dev/tcp/127.0.0.1/8090 2>/dev/null; then
            refused=$((refused + 1))
            continue
        fi
        printf 'PING\n' >&3
        if IFS= read -r -t 30 line <&3 && [[ $line == PONG ]]; then
            answered=$((answered + 1))
        else
            cut=$((cut + 1))
        fi
        exec 3<&-
    done
    echo "$attempts $refused $answered $cut" >"$1"
}
pids=()
for k in 1 2 3 4; do
    client "$work/c.$k" &
    pids+=($!)
done
sleep 0.5
systemctl restart io_conn
wait_ping
sleep 0.5
touch "$work/stop"
for p in "${pids[@]}"; do wait "$p"; done
total_refused=0
for k in 1 2 3 4; do
    read -r attempts refused answered cut <"$work/c.$k"
    echo "client $k: $attempts attempts, $refused refused, $answered answered, $cut cut by the restart"
    total_refused=$((total_refused + refused))
done
if ((total_refused > 0)); then
    echo "$total_refused connection attempts were refused during the restart" >&2
    exit 1
fi

# Under socket activation a reload cannot add a listener: refused, naming it.
python3 - "$conf" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
s = s.replace("[md]\n", '[[io_conn.listener]]\naddress = "127.0.0.1:8091"\nservice = "dumb"\n\n[md]\n', 1)
open(p, "w").write(s)
PY
since=$(date '+%Y-%m-%d %H:%M:%S')
if systemctl reload io_conn; then
    echo "a listener was added under socket activation" >&2
    exit 1
fi
journalctl -u io_conn --since "$since" --no-pager |
    grep -q 'reload refused: io_conn.listener\[127.0.0.1:8091\] added'
cp "$work/orig.toml" "$conf"
systemctl reload io_conn
wait_ping
systemctl is-active --quiet io_conn.socket io_conn md@0 md@1
echo "21-socket-activation: ok"
