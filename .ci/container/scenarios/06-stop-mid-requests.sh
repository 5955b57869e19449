# Stop without loss: 40 clients in the middle of `WAIT 2000` (request dispatch spreads them over
# md@0 and md@1), then `systemctl stop shmsrv.target io_conn 'md@*'`. systemd stops io_conn
# first (md@ is ordered Before= it), io_conn drains with both md still serving: 40/40 get DONE
# and then a clean close. Then the md stop: they find io_conn gone and exit 0 at once (not
# after md.drain_deadline). Then the set starts again.
source "$SHMSRV_LIB/lib.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
since=$(date '+%Y-%m-%d %H:%M:%S')
w0=$(md_stat 0 commands.dumb.wait)
w1=$(md_stat 1 commands.dumb.wait)
$CLIENT waits --port "$DUMB_PORT" --clients 40 --ms 2000 --sent "$tmp/sent" >"$tmp/waits" 2>&1 &
client=$!
wait_until 20 "40 WAITs written" test -e "$tmp/sent"
# Every WAIT reached an md (each counts a request when it takes it) before the stop.
in_md() { (($(md_stat 0 commands.dumb.wait) + $(md_stat 1 commands.dumb.wait) - w0 - w1 >= 40)); }
wait_until 20 "40 WAITs in md" in_md
# New clients keep coming during the stop (a fresh connection with one PING every 20 ms): each
# is answered, or refused (io_conn no longer accepts), or closed before io_conn read its PING
# (the drain stops reading); none may be read and then dropped, which io_conn's final counters
# below would show (closed_shutdown: held for an md that never came; closed_md_gone).
declare -A before
for c in closed_shutdown closed_md_gone requests_dropped; do
    before[$c]=$(io_stat "$c")
done
$CLIENT pinger --port "$DUMB_PORT" --every 0.02 --stop "$tmp/stop" >"$tmp/pinger" &
pinger=$!
sleep 0.3
systemctl stop shmsrv.target io_conn 'md@*'
touch "$tmp/stop"
wait "$pinger"
echo "pinger during the stop: $(cat "$tmp/pinger")"
rc=0
wait "$client" || rc=$?
cat "$tmp/waits"
test "$rc" = 0
grep -qx 'DONE 40/40, closed 40/40' "$tmp/waits"
for u in io_conn md@0 md@1; do
    test "$(systemctl is-active "$u")" = inactive
    test "$(prop "$u" Result)" = success
done
log=$(journalctl -u io_conn -u 'md@*' --since "$since" --no-pager -o cat)
grep -q 'draining [0-9]* connections' <<<"$log"
# io_conn's last words: its counters (of its whole life: compared with their values before the
# stop). Nothing it read was dropped or cut by the stop.
final=$(grep 'io_conn stopped; counters:' <<<"$log" | tail -n1)
for c in closed_shutdown closed_md_gone requests_dropped; do
    v=$(sed -n "s/.*[{ ]$c: \([0-9]*\)[,}].*/\1/p" <<<"$final")
    test -n "$v"
    echo "io_conn $c: ${before[$c]} before the stop, $v at its end"
    test "$v" = "${before[$c]}"
done
if grep -q 'drain deadline reached' <<<"$log"; then
    echo "a drain hit its deadline"
    exit 1
fi
# io_conn was gone when md got SIGTERM: no md started a leave (which needs io_conn), each
# noticed io_conn's exit and stopped without waiting for its md.drain_deadline.
if grep -q 'leaving: io_conn routes nothing new' <<<"$log"; then
    echo "an md was stopped while io_conn still ran"
    exit 1
fi
test "$(grep -c 'io_conn exited (pidfd readable)' <<<"$log")" = 2
# The order: io_conn stopped before md@0 and md@1 were asked to stop.
io_stopped=$(prop io_conn InactiveEnterTimestampMonotonic)
for n in 0 1; do
    md_stopping=$(prop "md@$n" ActiveExitTimestampMonotonic)
    echo "io_conn inactive at $io_stopped us, md@$n deactivating at $md_stopping us"
    test "$md_stopping" -ge "$io_stopped"
done
systemctl start shmsrv.target
