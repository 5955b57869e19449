# SIGSTOP md@0: it stops pinging its watchdog (WatchdogSec=10s), systemd kills it (SIGABRT) and
# restarts it, and the new md@0 re-attaches. md@1 is untouched (same pid, no restart) and
# serves throughout: a pinger opens a fresh connection every 50 ms during the whole window.
# Only the PINGs io_conn routed to the frozen md@0 (before its growing load sent everything to
# md@1) are lost: an md crash costs the requests in flight on it, each counted by io_conn as a
# connection closed because its md was gone (closed_md_gone); the pinger's lost ones must be
# exactly those.
source "$SHMSRV_LIB/lib.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; kill -CONT "$md0" 2>/dev/null || true' EXIT
md0=$(main_pid md@0)
md1=$(main_pid md@1)
r0=$(prop md@0 NRestarts)
r1=$(prop md@1 NRestarts)
since=$(date '+%Y-%m-%d %H:%M:%S')
p1=$(md_stat 1 commands.dumb.ping)
gone=$(io_stat closed_md_gone)
$CLIENT pinger --port "$DUMB_PORT" --stop "$tmp/stop" >"$tmp/pinger" &
pinger=$!
sleep 0.5
kill -STOP "$md0"
restarted() { local p; p=$(main_pid md@0); [[ $p != 0 && $p != "$md0" ]] && md_attached 0; }
wait_until 40 "md@0 killed by its watchdog, restarted and attached" restarted
touch "$tmp/stop"
wait "$pinger"
cat "$tmp/pinger"
journalctl -u md@0 --since "$since" --no-pager -o cat | grep -c 'Watchdog timeout' >/dev/null
test "$(prop md@0 NRestarts)" -gt "$r0"
test "$(main_pid md@1)" = "$md1"
test "$(prop md@1 NRestarts)" = "$r1"
read -r answered wrong lost pending < <(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["answered"], d["wrong"], d["lost"], d["pending"])' "$tmp/pinger")
test "$wrong" = 0
test "$pending" = 0
counted() { (($(io_stat closed_md_gone) - gone == lost)); }
wait_until 10 "closed_md_gone to count the $lost lost PINGs (it counts $(($(io_stat closed_md_gone) - gone)))" counted
test "$lost" -lt "$((answered / 4))"
# The window lasts the watchdog's 10 s: md@1 answered PINGs all along.
test "$answered" -ge 50
test "$(($(md_stat 1 commands.dumb.ping) - p1))" -ge 50
