# A crash with sockets in systemd's fd store and no record (the leaving io_conn aborts after
# storing its sockets, before the record: SHMSRV_TEST_HANDOVER=abort-before-record) must not be
# guessed at: the next io_conn finds no valid record, closes every stored client socket (clients
# see EOF), keeps the stored listening sockets (they carry no client's state), and empties the
# store; new connections are served.
here=$(dirname "${BASH_SOURCE[0]}")
dropin=/run/systemd/system/io_conn.service.d
mkdir -p "$dropin"
printf '[Service]\nEnvironment=SHMSRV_TEST_HANDOVER=abort-before-record\n' >"$dropin/50-crash.conf"
# The running io_conn keeps the hook's environment until it restarts: stop (SIGTERM, a drain,
# no hook involved) and start it after removing the drop-in.
trap 'rm -f "$dropin/50-crash.conf"; systemctl daemon-reload; systemctl stop io_conn;
    systemctl reset-failed io_conn; systemctl start shmsrv.target io_conn md@0 md@1' EXIT
systemctl daemon-reload
systemctl restart io_conn md@0 md@1
systemctl is-active --quiet io_conn md@0 md@1
# SIGUSR2 (what a restart sends): io_conn stores its sockets and crashes (SIGABRT) before the
# record; Restart=on-failure starts the next io_conn, and systemd hands it the stored sockets.
old=$(systemctl show -P MainPID io_conn)
python3 "$here/handover_client.py" dropped 8090 20 sh -c '
    systemctl kill -s SIGUSR2 --kill-who=main io_conn
    for _ in $(seq 300); do
        pid=$(systemctl show -P MainPID io_conn)
        if [ "$pid" != '"$old"' ] && [ "$pid" != 0 ] && systemctl is-active -q io_conn; then exit 0; fi
        sleep 0.1
    done
    exit 1'
systemctl is-active --quiet io_conn
# (Read into a variable first: `journalctl | grep -q` fails under pipefail when grep exits early.)
log=$(journalctl -u io_conn -n 300 --no-pager)
grep -q 'test hook: aborting after storing the sockets' <<<"$log"
grep -q 'sockets handed over without a record: closing the 2[01] client sockets' <<<"$log"
test "$(systemctl show -P NFileDescriptorStore io_conn)" = 0
rm -f "$dropin/50-crash.conf"
trap - EXIT
systemctl daemon-reload
systemctl stop io_conn
systemctl reset-failed io_conn || true
systemctl start shmsrv.target io_conn md@0 md@1
systemctl is-active --quiet io_conn md@0 md@1 shmsrv.target
