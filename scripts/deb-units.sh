#!/usr/bin/env bash
# Generates the package's unit files from systemd/ (the one template, whose paths are
# install.sh's /usr/local ones): binaries in /usr/bin, docs in /usr/share/doc. Also copies the
# sysusers file where cargo-deb looks for it (`<package>.sysusers` in `unit-scripts`).
#
#   scripts/deb-units.sh OUTDIR
#
# Fails if a generated unit still names /usr/local (a new path the substitutions below miss).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: scripts/deb-units.sh OUTDIR}
rm -rf "$out"
mkdir -p "$out"
for unit in io_conn.service md@.service shmsrv.target; do
    sed -e 's|/usr/local/bin/|/usr/bin/|g' \
        -e 's|/usr/local/share/doc/|/usr/share/doc/|g' \
        "$repo/systemd/$unit" >"$out/$unit"
done
if grep -n /usr/local "$out"/*; then
    echo "deb-units.sh: the units above still name /usr/local: extend the substitutions" >&2
    exit 1
fi
cp "$repo/systemd/sysusers.d/shmsrv.conf" "$out/shmsrv.sysusers"
