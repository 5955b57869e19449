# kill -9 io_conn: systemd restarts it (Restart=on-failure); md@0 and md@1 keep running (same
# pids), notice, re-attach to the new epoch by themselves and serve.
source "$SHMSRV_LIB/lib.sh"
old=$(main_pid io_conn)
md0=$(main_pid md@0)
md1=$(main_pid md@1)
epoch=$(md_epoch 0)
restarts=$(prop io_conn NRestarts)
kill -KILL "$old"
new_io() { local p; p=$(main_pid io_conn); [[ $p != 0 && $p != "$old" ]] && systemctl is-active --quiet io_conn; }
wait_until 30 "io_conn restarted" new_io
test "$(prop io_conn NRestarts)" -gt "$restarts"
reattached() { local n; for n in 0 1; do md_attached "$n" && [[ $(md_epoch "$n") != "$epoch" ]] || return 1; done; }
wait_until 30 "md@0 and md@1 re-attached to the new epoch" reattached
test "$(main_pid md@0)" = "$md0"
test "$(main_pid md@1)" = "$md1"
echo "io_conn $old -> $(main_pid io_conn); md epoch $epoch -> $(md_epoch 0); md pids unchanged"
$CLIENT ping --port "$DUMB_PORT" --count 20
# Both md serve again: PINGs on fresh connections (round robin among idle md) reach each.
p0=$(md_stat 0 commands.dumb.ping)
p1=$(md_stat 1 commands.dumb.ping)
$CLIENT ping --port "$DUMB_PORT" --count 10 --fresh
test "$(md_stat 0 commands.dumb.ping)" -gt "$p0"
test "$(md_stat 1 commands.dumb.ping)" -gt "$p1"
