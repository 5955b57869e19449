# systemd/install.sh with the release binaries: binaries, config, units, the shmsrv user and
# group (systemd-sysusers), daemon-reload; the units load and nothing is running yet.
source "$SHMSRV_LIB/lib.sh"
systemd/install.sh --bin-dir "$SHMSRV_BIN"
for f in /usr/local/bin/io_conn /usr/local/bin/md /usr/local/bin/viewstats; do
    test -x "$f"
    cmp "$f" "$SHMSRV_BIN/$(basename "$f")"
done
cmp "$CONF" config/shmsrv.toml
for u in io_conn.service md@.service shmsrv.target; do
    cmp "/etc/systemd/system/$u" "systemd/$u"
done
# sysusers: a system user and its own group, no login.
getent passwd shmsrv | grep -c ':/usr/sbin/nologin$' >/dev/null
test "$(id -gn shmsrv)" = shmsrv
test "$(id -u shmsrv)" -lt 1000
# daemon-reload happened: systemd sees the units from /etc/systemd/system.
for u in io_conn.service md@0.service md@3.service shmsrv.target; do
    test "$(prop "$u" LoadState)" = loaded
    test "$(prop "$u" FragmentPath)" = "/etc/systemd/system/${u/@[0-9]/@}"
    test "$(systemctl is-active "$u")" = inactive
done
# The stop order the units promise (docs/ARCHITECTURE.md, "Stop order"): md before io_conn.
prop md@0.service Before | tr ' ' '\n' | grep -cx io_conn.service >/dev/null
echo "installed; md@.service is ordered Before=io_conn.service"
