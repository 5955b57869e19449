# `systemctl restart io_conn` keeps live connections (systemd's fd store, issue 11 part 4):
# 200 keep-alive connections to dumb (8090), each with a WAIT owed across the restart; after it
# every one gets its DONE, then PONG, in order; a client connecting in a loop meanwhile is never
# refused (the listeners are handed over too). The successor empties the fd store.
here=$(dirname "${BASH_SOURCE[0]}")
systemctl is-active --quiet io_conn md@0 md@1
python3 "$here/handover_client.py" keep 8090 200 systemctl restart io_conn
systemctl is-active --quiet io_conn md@0 md@1 shmsrv.target
# (The journal is read into a variable first: `journalctl | grep -q` fails under pipefail when
# grep exits early.)
log=$(journalctl -u io_conn -n 400 --no-pager)
grep -q 'handed 20[0-9] connections over (systemd' <<<"$log"
grep -q 'adopted 20[0-9] of 20[0-9] handed-over' <<<"$log"
test "$(systemctl show -P NFileDescriptorStore io_conn)" = 0
