#!/usr/bin/env bash
# Installs shmsrv as systemd services: the binaries to /usr/local/bin, the shipped config to
# /etc/shmsrv/shmsrv.toml (only if there is none), the units to /etc/systemd/system, the
# static `shmsrv` user (systemd-sysusers), then `systemctl daemon-reload`.
#
#   sudo systemd/install.sh                 # build release binaries and install
#   systemd/install.sh --dry-run            # print every command, change nothing
#   DESTDIR=/tmp/stage systemd/install.sh   # install under a staging root (no root needed;
#                                           # the user goes to $DESTDIR/etc/passwd, no reload)
#   systemd/install.sh --bin-dir target/debug ...   # take these binaries, do not build
#
# Run from anywhere; paths are relative to the repository this script is in.
set -euo pipefail

usage() {
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

repo=$(cd "$(dirname "$0")/.." && pwd)
destdir=${DESTDIR:-}
dry_run=0
bin_dir=
while [[ $# -gt 0 ]]; do
    case $1 in
        --dry-run) dry_run=1 ;;
        --destdir) destdir=${2:?--destdir needs a directory}; shift ;;
        --bin-dir) bin_dir=${2:?--bin-dir needs a directory}; shift ;;
        -h|--help) usage 0 ;;
        *) echo "install.sh: unknown argument: $1" >&2; usage 2 >&2 ;;
    esac
    shift
done
if [[ -n $destdir ]]; then
    destdir=$(mkdir -p "$destdir" && cd "$destdir" && pwd)
fi

# Prints a command, then runs it unless --dry-run.
run() {
    printf '+'
    printf ' %q' "$@"
    printf '\n'
    if [[ $dry_run == 0 ]]; then
        "$@"
    fi
}

if [[ $dry_run == 0 && -z $destdir && $(id -u) != 0 ]]; then
    echo "install.sh: installing into / needs root (or use --dry-run, or DESTDIR=...)" >&2
    exit 1
fi

bindir=$destdir/usr/local/bin
confdir=$destdir/etc/shmsrv
unitdir=$destdir/etc/systemd/system
sysusersdir=$destdir/etc/sysusers.d
docdir=$destdir/usr/local/share/doc/shmsrv

if [[ -z $bin_dir ]]; then
    run cargo build --manifest-path "$repo/Cargo.toml" --release --bins -p io_conn -p md -p viewstats
    bin_dir=$repo/target/release
fi
for b in io_conn md viewstats; do
    if [[ $dry_run == 0 && ! -x $bin_dir/$b ]]; then
        echo "install.sh: $bin_dir/$b is missing" >&2
        exit 1
    fi
done

run install -d -m 0755 "$bindir" "$confdir" "$unitdir" "$sysusersdir" "$docdir"
run install -m 0755 "$bin_dir/io_conn" "$bin_dir/md" "$bin_dir/viewstats" "$bindir/"

# Never overwrite an operator's config; the shipped one documents every key.
if [[ -e $confdir/shmsrv.toml ]]; then
    echo "keeping the existing $confdir/shmsrv.toml (the shipped one is $repo/config/shmsrv.toml)"
else
    run install -m 0644 "$repo/config/shmsrv.toml" "$confdir/shmsrv.toml"
fi
if [[ $dry_run == 0 ]]; then
    # Fail the install, not the first start, on a config this build rejects.
    run "$bindir/io_conn" --config "$confdir/shmsrv.toml" --check-config
fi

run install -m 0644 "$repo/systemd/io_conn.service" "$repo/systemd/io_conn.socket" \
    "$repo/systemd/md@.service" "$repo/systemd/shmsrv.target" "$unitdir/"
run install -m 0644 "$repo/systemd/sysusers.d/shmsrv.conf" "$sysusersdir/shmsrv.conf"
run install -m 0644 "$repo/README.md" "$docdir/README.md"

if [[ -n $destdir ]]; then
    # The user goes into the staging root's /etc/passwd and /etc/group.
    run systemd-sysusers --root="$destdir" "$sysusersdir/shmsrv.conf"
    echo "staged under $destdir (no daemon-reload)"
else
    run systemd-sysusers "$sysusersdir/shmsrv.conf"
    run systemctl daemon-reload
fi

cat <<'EOF'

Start io_conn and two md instances:
    systemctl start io_conn md@0 md@1
or enable the set at boot (the md instances you enable join shmsrv.target):
    systemctl enable --now shmsrv.target io_conn md@0 md@1
Socket activation (restarts refuse no connection attempt):
    systemctl stop io_conn; systemctl enable --now io_conn.socket; systemctl start io_conn
Reload the config (fails, naming the keys, if one needs a restart):
    systemctl reload io_conn 'md@*'
Add an instance (below md.max_instances):  systemctl start md@3
Logs:                                      journalctl -u io_conn -u 'md@*' -f
Live counters:                             viewstats --config /etc/shmsrv/shmsrv.toml --watch
EOF
