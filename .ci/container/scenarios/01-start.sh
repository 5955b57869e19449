# Enables and starts the set the way the README says (one transaction: md@0 and md@1 start
# first and say READY=1 while they wait for io_conn; io_conn starts after them; both md then
# attach). Checks READY (active, not activating), the STATUS lines, and the ownership and modes
# of what io_conn created.
source "$SHMSRV_LIB/lib.sh"
systemctl enable shmsrv.target io_conn md@0 md@1
# Type=notify: `start` returns once every unit said READY=1 (or fails).
systemctl start shmsrv.target
for u in shmsrv.target io_conn md@0 md@1; do
    test "$(systemctl is-active "$u")" = active
done
# The enabled md instances came with the target.
systemctl list-dependencies --plain shmsrv.target | grep -c 'md@0.service' >/dev/null
# io_conn's STATUS names its listeners.
st=$(status_text io_conn)
echo "io_conn: $st"
[[ $st == "listening on "* && $st == *"127.0.0.1:8090 (dumb)"* && $st == *"127.0.0.1:4680 (echo)"* ]]
# Both md attach (to io_conn's epoch) and say so.
for n in 0 1; do
    wait_until 20 "md@$n attached" md_attached "$n"
    echo "md@$n: $(status_text "md@$n")"
done
test "$(md_epoch 0)" = "$(md_epoch 1)"
test "$(md_epoch 0)" = "$(stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["epoch"])')"
# md said READY=1 before io_conn started (the stop order needs md Before=io_conn): its journal
# has the "ready (io_conn may start after us)" line of this boot.
journalctl -u md@0 --no-pager -o cat | grep -c 'ready (io_conn may start after us)' >/dev/null
# Everything runs as shmsrv; the queue segments and FIFOs are owner-only, the stats segment is
# readable by the shmsrv group.
for u in io_conn md@0 md@1; do
    test "$(ps -o user= -p "$(main_pid "$u")")" = shmsrv
done
test "$(stat -c '%U %a' /dev/shm/shmsrv.in.0)" = "shmsrv 600"
test "$(stat -c '%U %a' /dev/shm/shmsrv.out.1)" = "shmsrv 600"
test "$(stat -c '%U %G %a' /dev/shm/shmsrv.stats)" = "shmsrv shmsrv 640"
test "$(stat -c '%U %a' /run/shmsrv)" = "shmsrv 700"
fifos=$(find /run/shmsrv -type p | wc -l)
test "$fifos" -ge 2
test -z "$(find /run/shmsrv -type p ! -perm 600)"
