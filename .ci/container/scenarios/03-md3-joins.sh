# `systemctl start md@3` adds an instance to the running set: it attaches to the running
# io_conn (READY once attached), request dispatch sends it work (its own ping counter in
# viewstats rises), and `systemctl stop md@3` is its graceful leave: it exits 0, io_conn keeps
# serving on md@0 and md@1.
source "$SHMSRV_LIB/lib.sh"
io_pid=$(main_pid io_conn)
systemctl start md@3
md_attached 3
echo "md@3: $(status_text md@3)"
test "$(md_epoch 3)" = "$(md_epoch 0)"
before=$(md_stat 3 commands.dumb.ping)
# Ties among idle md go round robin: 30 PINGs on fresh connections reach every instance.
$CLIENT ping --port "$DUMB_PORT" --count 30 --fresh
after=$(md_stat 3 commands.dumb.ping)
echo "md@3 answered $((after - before)) of 30 PINGs"
test "$after" -gt "$before"
# Its graceful leave (SIGTERM alone): LEAVE, nothing new routed to it, exit 0.
systemctl stop md@3
test "$(prop md@3 Result)" = success
test "$(prop md@3 ExecMainStatus)" = 0
journalctl -u md@3 --no-pager -o cat | grep -c 'left: every request in flight answered' >/dev/null
test "$(main_pid io_conn)" = "$io_pid"
$CLIENT ping --port "$DUMB_PORT" --count 10
