#!/usr/bin/env bash
# 20-reload: `systemctl reload io_conn` and `systemctl reload md@0 md@1` with a changed
# config while clients pipeline PINGs: nothing lost, the added listener answers, the new
# md.dumb.burn_max applies on an open connection; then a key that needs a restart makes
# `systemctl reload io_conn` fail, names the key in the journal, and changes nothing.
# Runs inside the container (bash -euo pipefail, cwd = repo); leaves shmsrv.target running
# with io_conn, md@0 and md@1 on the shipped config.
set -euo pipefail

conf=/etc/shmsrv/shmsrv.toml
work=$(mktemp -d)
cp "$conf" "$work/orig.toml"
restore() {
    cp "$work/orig.toml" "$conf"
    systemctl reload io_conn md@0 md@1 || true
    rm -rf "$work"
}
trap restore EXIT

# One request/reply on a fresh connection: `ask PORT REQUEST` prints the reply line.
ask() {
    exec 5<>"/dev/tcp/127.0.0.1/$1"
    printf '%s\n' "$2" >&5
    local line
    IFS= read -r -t 20 line <&5
    exec 5<&-
    printf '%s\n' "$line"
}

# A client pipelining 4 PINGs at a time on one connection until $work/stop exists; writes the
# number of PONGs to $1, or fails on a wrong or missing reply.
pinger() {
    exec 3<>/dev/tcp/127.0.0.1/8090
    local n=0 line i
    while [[ ! -e $work/stop ]]; do
        printf 'PING\nPING\nPING\nPING\n' >&3
        for i in 1 2 3 4; do
            IFS= read -r -t 20 line <&3 || { echo "pinger: no reply after $n" >&2; exit 1; }
            [[ $line == PONG ]] || { echo "pinger: got '$line' after $n" >&2; exit 1; }
            n=$((n + 1))
        done
    done
    echo "$n" >"$1"
}

[[ $(ask 8090 PING) == PONG ]]
exec 4<>/dev/tcp/127.0.0.1/8090 # an open connection across the md reload
printf 'BURN 5000\n' >&4
IFS= read -r -t 20 line <&4
[[ $line == "RESULT 12502500" ]]

pids=()
for k in 1 2 3 4; do
    pinger "$work/count.$k" &
    pids+=($!)
done
sleep 0.5

# A changed config: one listener more, more connections, a smaller BURN limit.
python3 - "$conf" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
s = s.replace("max_connections = 10000", "max_connections = 20000", 1)
s = s.replace("burn_max = 100000000", "burn_max = 1000", 1)
s = s.replace("[md]\n", '[[io_conn.listener]]\naddress = "127.0.0.1:8091"\nservice = "dumb"\n'
              'dispatch = "request"\n\n[md]\n', 1)
open(p, "w").write(s)
PY
systemctl reload io_conn
systemctl reload md@0 md@1
sleep 0.5
touch "$work/stop"
for p in "${pids[@]}"; do wait "$p"; done
for k in 1 2 3 4; do
    echo "pinger $k: $(cat "$work/count.$k") PONGs, none lost"
done

[[ $(ask 8091 PING) == PONG ]] # the new listener
printf 'BURN 5000\n' >&4        # the open connection, after md's reload
IFS= read -r -t 20 line <&4
[[ $line == ERR* ]] || { echo "BURN 5000 after burn_max = 1000 answered '$line'" >&2; exit 1; }
printf 'BURN 50\n' >&4
IFS= read -r -t 20 line <&4
[[ $line == "RESULT 1275" ]]
exec 4<&-
viewstats --config "$conf" --json | python3 -c '
import json, sys
io = json.load(sys.stdin)["sections"]["io"][0]["values"]
assert io["reloads_ok"] >= 1 and io["config_generation"] >= 1, io
print("io_conn: reloads_ok", io["reloads_ok"], "config_generation", io["config_generation"])'

# A key that needs a restart: the reload fails, the journal names the key, nothing changes.
since=$(date '+%Y-%m-%d %H:%M:%S')
sed -i 's/^queue_size = "1MiB"/queue_size = "2MiB"/' "$conf"
sed -i 's/^max_connections = 20000/max_connections = 30000/' "$conf"
if systemctl reload io_conn; then
    echo "systemctl reload io_conn accepted shared.queue_size" >&2
    exit 1
fi
journalctl -u io_conn --since "$since" --no-pager | grep -c 'reload refused: shared.queue_size' >/dev/null
[[ $(ask 8090 PING) == PONG ]]
systemctl is-active --quiet io_conn md@0 md@1
echo "20-reload: ok"
