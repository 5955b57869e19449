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
systemctl stop shmsrv.target io_conn 'md@*'
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
grep -q 'draining 40 connections' <<<"$log"
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
