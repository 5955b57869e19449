# The installed units' sandboxing under the real systemd: `systemd-analyze security` exposure of
# io_conn.service and md@0.service at most 3.0 each (10 = unconfined; .ci/systemd checks the
# same bound offline on the staged units).
source "$SHMSRV_LIB/lib.sh"
out=$(systemd-analyze security --no-pager io_conn.service md@0.service 2>&1 || true)
grep 'Overall exposure' <<<"$out"
for u in io_conn.service md@0.service; do
    level=$(sed -n "s/.*Overall exposure level for $u: \([0-9.]*\).*/\1/p" <<<"$out")
    test -n "$level"
    python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) <= 3.0 else 1)' "$level" ||
        { echo "$u: exposure $level is above 3.0"; exit 1; }
done
systemd-analyze security --threshold=30 --no-pager io_conn.service >/dev/null
systemd-analyze security --threshold=30 --no-pager md@0.service >/dev/null
