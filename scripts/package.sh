#!/usr/bin/env bash
# Builds the Debian package (target/debian/shmsrv_VERSION_ARCH.deb) with cargo-deb and checks it:
#
# 1. its contents: the binaries in /usr/bin, the units (generated from systemd/ with /usr/bin
#    paths, scripts/deb-units.sh), the sysusers file, the config as a conffile, the docs;
# 2. an install with `dpkg -i` into a scratch root (its own dpkg database; maintainer scripts run
#    with DPKG_ROOT set, as dpkg does for a chrootless install): postinst creates the shmsrv user
#    in the scratch root's /etc/passwd; `io_conn --check-config` accepts the installed conffile;
#    `systemd-analyze verify` accepts the installed units (pointing at the installed binaries);
# 3. `dpkg -r` leaves the conffile, `dpkg --purge` leaves nothing of the package.
#
#   scripts/package.sh            # build (release) and check
#   scripts/package.sh --no-build # the binaries in target/release are current: package them
#
# The machine itself is not touched: nothing outside the scratch root is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
build=true
case ${1:-} in
    --no-build) build=false ;;
    "") ;;
    *)
        echo "usage: scripts/package.sh [--no-build]" >&2
        exit 2
        ;;
esac
scripts/deps.sh package
if ! cargo deb --version >/dev/null 2>&1; then
    echo "package.sh: cargo-deb is not installed (cargo install --locked cargo-deb)" >&2
    exit 1
fi
if $build; then
    cargo build --release --bins -p io_conn -p md -p viewstats
fi
scripts/deb-units.sh target/deb-units
rm -rf target/debian
# Stripped: the release profile keeps debuginfo (backtraces in development), 15 MB a binary.
cargo deb -p io_conn --no-build --strip --quiet
deb=$(ls target/debian/shmsrv_*.deb)
echo "built $deb"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# 1. Contents.
dpkg-deb --contents "$deb" | awk '{ print $NF }' | sed 's|^\./|/|' >"$tmp/contents"
for f in /usr/bin/io_conn /usr/bin/md /usr/bin/viewstats /etc/shmsrv/shmsrv.toml \
    /usr/lib/systemd/system/io_conn.service /usr/lib/systemd/system/md@.service \
    /usr/lib/systemd/system/shmsrv.target /usr/lib/sysusers.d/shmsrv.conf \
    /usr/share/doc/shmsrv/README.md /usr/share/doc/shmsrv/SERVICES.md; do
    grep -qx "$f" "$tmp/contents" || {
        echo "package.sh: $f is not in the package:" >&2
        cat "$tmp/contents" >&2
        exit 1
    }
done
dpkg-deb --ctrl-tarfile "$deb" | tar -x -C "$tmp" ./conffiles ./postinst ./prerm ./postrm
grep -qx /etc/shmsrv/shmsrv.toml "$tmp/conffiles"
grep -q systemd-sysusers "$tmp/postinst"
grep -q daemon-reload "$tmp/postrm"

# 2. Install into a scratch root with its own dpkg database.
root=$tmp/root
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/etc"
touch "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/available"
# systemd-sysusers --root adds the user to the root's own passwd/group files.
touch "$root/etc/passwd" "$root/etc/group" "$root/etc/shadow" "$root/etc/gshadow"
dpkg_root() {
    # --force-script-chrootless: the scratch root has no shell to chroot into; scripts get
    # DPKG_ROOT instead. --force-not-root: dpkg's own check (we may be root anyway). The
    # dependencies are the host's, not the empty root's.
    dpkg --root="$root" --force-script-chrootless --force-not-root --force-depends \
        --log="$tmp/dpkg.log" "$@"
}
dpkg_root -i "$deb" >"$tmp/install.out" 2>&1 || {
    cat "$tmp/install.out" >&2
    exit 1
}
for f in usr/bin/io_conn usr/bin/md usr/bin/viewstats etc/shmsrv/shmsrv.toml \
    usr/lib/systemd/system/io_conn.service usr/lib/sysusers.d/shmsrv.conf; do
    test -e "$root/$f"
done
grep -q '^shmsrv:x:[0-9]*:[0-9]*:.*:/usr/sbin/nologin$' "$root/etc/passwd"
"$root/usr/bin/io_conn" --config "$root/etc/shmsrv/shmsrv.toml" --check-config >/dev/null
"$root/usr/bin/md" --config "$root/etc/shmsrv/shmsrv.toml" --check-config >/dev/null
# The units name /usr/bin and nothing under /usr/local.
grep -qx 'ExecStart=/usr/bin/io_conn --config /etc/shmsrv/shmsrv.toml' \
    "$root/usr/lib/systemd/system/io_conn.service"
if grep -rn /usr/local "$root/usr/lib/systemd/system/"; then
    echo "package.sh: an installed unit names /usr/local" >&2
    exit 1
fi
# verify, with ExecStart= pointing into the scratch root (verify checks the binaries exist);
# templates through instances. Any message fails (verify exits 0 on some warnings).
mkdir "$tmp/units"
cp "$root/usr/lib/systemd/system/"* "$tmp/units/"
sed -i "s|/usr/bin/|$root/usr/bin/|g" "$tmp/units/"*
(
    cd "$tmp/units"
    if ! systemd-analyze verify io_conn.service md@0.service shmsrv.target >"$tmp/verify.out" 2>&1 ||
        [[ -s $tmp/verify.out ]]; then
        echo "package.sh: systemd-analyze verify of the installed units:" >&2
        cat "$tmp/verify.out" >&2
        exit 1
    fi
)

# 3. Remove keeps the conffile; purge removes it and every file of the package.
dpkg_root -r shmsrv >/dev/null
test ! -e "$root/usr/bin/io_conn"
test -e "$root/etc/shmsrv/shmsrv.toml"
dpkg_root --purge shmsrv >/dev/null
left=$(cd "$root" && find usr etc/shmsrv lib -type f 2>/dev/null || true)
if [[ -n $left ]]; then
    echo "package.sh: left after purge: $left" >&2
    exit 1
fi
if dpkg_root -s shmsrv >/dev/null 2>&1; then
    echo "package.sh: shmsrv still known to dpkg after purge" >&2
    exit 1
fi
echo "package OK: $deb"
