# Helpers for the scenarios of .ci/container/run (sourced inside the container; see the
# CONTRACT at the top of .ci/container/run). Every wait is bounded.

CONF=/etc/shmsrv/shmsrv.toml
# The shipped config's listeners (config/shmsrv.toml): echo 4680, reverse 9090, dumb 8090.
DUMB_PORT=8090
ECHO_PORT=4680
REVERSE_PORT=9090
CLIENT="python3 $SHMSRV_LIB/client.py"

# wait_until SECONDS DESCRIPTION CMD...: runs CMD every 0.1 s until it succeeds; fails (with
# DESCRIPTION) after SECONDS.
wait_until() {
    local secs=$1 what=$2
    shift 2
    local end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= end)); then
            echo "timed out after ${secs}s waiting for: $what" >&2
            return 1
        fi
        sleep 0.1
    done
}

# prop UNIT PROPERTY: one property's value (`systemctl show -p`).
prop() { systemctl show -p "$2" --value "$1"; }
main_pid() { prop "$1" MainPID; }
status_text() { prop "$1" StatusText; }

# md_attached N: md@N is active and its STATUS says it is attached to io_conn.
md_attached() {
    systemctl is-active --quiet "md@$1" && [[ $(status_text "md@$1") == *"attached to io_conn epoch"* ]]
}

# md_epoch N: the io_conn epoch md@N's STATUS says it is attached to.
md_epoch() { status_text "md@$1" | sed -n 's/.*attached to io_conn epoch \([0-9]*\).*/\1/p'; }

# stats: viewstats --json of the installed server.
stats() { viewstats --config "$CONF" --json; }

# md_stat N KEY: one value of md slot N from viewstats (e.g. commands.dumb.ping); 0 if absent.
md_stat() { stats | $CLIENT stat md "$1" "$2"; }
io_stat() { stats | $CLIENT stat io 0 "$1"; }

# check_set: the state every scenario from 01 on must leave (the CONTRACT): shmsrv.target,
# (A `journalctl | grep -q` under pipefail fails when grep exits first and journalctl gets
# SIGPIPE: scenarios use `grep -c ... >/dev/null`, which reads everything.)
# io_conn, md@0 and md@1 active, both md attached to the running io_conn's epoch, no other md@N
# running, the shipped config in place, PING answered. Waits up to 20 s for the md to attach.
check_set() {
    local bad=0 u
    cmp -s "$CONF" "$SHMSRV_REPO/config/shmsrv.toml" || { echo "check_set: $CONF was changed"; bad=1; }
    for u in shmsrv.target io_conn.service; do
        systemctl is-active --quiet "$u" || { echo "check_set: $u is $(systemctl is-active "$u")"; bad=1; }
    done
    for n in 0 1; do
        wait_until 20 "md@$n attached" md_attached "$n" ||
            { echo "check_set: md@$n is $(systemctl is-active "md@$n"): $(status_text "md@$n")"; bad=1; }
    done
    local others
    others=$(systemctl list-units --plain --no-legend --state=active,activating,deactivating 'md@*' |
        awk '{ print $1 }' | grep -v -x -e md@0.service -e md@1.service || true)
    [[ -z $others ]] || { echo "check_set: other md units are running: $others"; bad=1; }
    $CLIENT ping --port "$DUMB_PORT" || { echo "check_set: PING failed"; bad=1; }
    return "$bad"
}

# restore_set: puts the set back into the CONTRACT's state after a failed scenario.
restore_set() {
    install -m 0644 "$SHMSRV_REPO/config/shmsrv.toml" "$CONF"
    systemctl stop shmsrv.target io_conn 'md@*' || true
    systemctl reset-failed 'md@*' io_conn || true
    systemctl start shmsrv.target io_conn md@0 md@1
    check_set
}
