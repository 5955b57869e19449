#!/usr/bin/env bash
# Installs what the tests (and, with `package`, the .deb build) need that a bare machine may lack:
# the one place that knows the list. `scripts/test.sh`, `scripts/package.sh` and `.ci/setup` call
# it. Idempotent and quiet when everything is present; `apt-get update` runs only when an apt
# package is missing.
#
#   scripts/deps.sh            # the tests: cargo-nextest, Python's prometheus_client, tmux, strace,
#                              # haproxy, ...
#   scripts/deps.sh package    # also cargo-deb (scripts/package.sh)
#   scripts/deps.sh ci         # package, plus what only CI steps use: systemd-nspawn
#                              # (.ci/systemd-container), nginx (peers-ab's smoke run) and the
#                              # DejaVu font (bench-table's chart)
#
# SHMSRV_NO_INSTALL=1 installs nothing: it only says what is missing (scripts/test.sh then falls
# back to `cargo test`, and the tests that need a missing tool say they skip). A failed install
# is reported and does not stop the caller: the tests decide what they can do without it.
set -uo pipefail

want_package=false
want_ci=false
for a in "$@"; do
    case $a in
        package) want_package=true ;;
        ci) want_package=true want_ci=true ;;
        *)
            echo "usage: scripts/deps.sh [package|ci]" >&2
            exit 2
            ;;
    esac
done

no_install=${SHMSRV_NO_INSTALL:-}
say() { echo "deps: $*" >&2; }

# Root runs apt-get itself; anyone else through sudo if it works without a password.
as_root() {
    if [[ $(id -u) == 0 ]]; then
        "$@"
    elif sudo -n true 2>/dev/null; then
        sudo "$@"
    else
        return 1
    fi
}

# 1. Cargo tools, from crates.io with the versions their lock files pin.
cargo_tools=(cargo-nextest)
$want_package && cargo_tools+=(cargo-deb)
for tool in "${cargo_tools[@]}"; do
    sub=${tool#cargo-}
    cargo "$sub" --version >/dev/null 2>&1 && continue
    if [[ -n $no_install ]]; then
        say "$tool is missing (SHMSRV_NO_INSTALL is set: not installing it)"
        continue
    fi
    say "installing $tool (cargo install --locked $tool; a few minutes, once)"
    cargo install --locked --quiet "$tool" || say "could not install $tool"
done

# 2. Debian packages: `command` → package. tmux: viewstats' live view in a real terminal;
#    strace: .ci/systemd checks the units' SystemCallFilter=; prlimit: io_conn's fd-limit test;
#    python3: viewstats' Prometheus check. dpkg-deb and systemd-analyze: the package check.
# curl and wrk: the http service's end-to-end tests; redis-cli: the kv service's (redis-server
# and redis-benchmark: the same-run baselines of the benches). haproxy: the balancer in front of
# two hosts (io_conn/tests/hosts/haproxy.rs, which also checks docs/deploy/haproxy.cfg); ip
# (iproute2): the network namespaces those hosts run in (as root; loopback otherwise).
declare -A apt_for=([tmux]=tmux [strace]=strace [prlimit]=util-linux [python3]=python3
    [curl]=curl [wrk]=wrk [redis-cli]=redis-tools [redis-server]=redis-server
    [haproxy]=haproxy [ip]=iproute2)
if $want_package; then
    apt_for[dpkg-deb]=dpkg
    apt_for[systemd-analyze]=systemd
fi
if $want_ci; then
    apt_for[systemd-nspawn]=systemd-container
    # nginx: the peer of scripts/peers-ab.sh http (smoke-run by .ci/bench-smoke).
    apt_for[nginx]=nginx-light
fi
missing=()
for cmd in "${!apt_for[@]}"; do
    command -v "$cmd" >/dev/null || missing+=("${apt_for[$cmd]}")
done
if $want_ci && [[ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]]; then
    missing+=(fonts-dejavu-core)
fi

apt_updated=false
# 3. Python modules: `import name` → the pip name and the Debian package (for Pythons that
#    refuse pip installs, PEP 668). Others add theirs here (e.g. redis).
# redis: redis-py, the kv service's end-to-end tests (io_conn/tests/e2e/kv_clients.py).
declare -A pip_for=([prometheus_client]=prometheus_client [redis]=redis)
declare -A deb_for=([prometheus_client]=python3-prometheus-client [redis]=python3-redis)
py_missing=()
if command -v python3 >/dev/null; then
    for mod in "${!pip_for[@]}"; do
        python3 -c "import $mod" 2>/dev/null || py_missing+=("$mod")
    done
else
    py_missing=("${!pip_for[@]}") # installed below, after python3 itself
fi

if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ -n $no_install ]]; then
        say "missing Debian packages: ${missing[*]} (SHMSRV_NO_INSTALL is set: not installing)"
    else
        say "installing Debian packages: ${missing[*]}"
        apt_updated=true
        as_root apt-get update -qq &&
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" \
                >/dev/null ||
            say "could not install ${missing[*]} (not root, or apt failed): the tests that need them skip"
    fi
fi

for mod in "${py_missing[@]}"; do
    if [[ -n $no_install ]]; then
        say "Python module $mod is missing (SHMSRV_NO_INSTALL is set: not installing it)"
        continue
    fi
    command -v python3 >/dev/null || continue
    say "installing Python module $mod (pip install ${pip_for[$mod]})"
    python3 -m pip install --quiet --disable-pip-version-check "${pip_for[$mod]}" 2>/dev/null &&
        python3 -c "import $mod" 2>/dev/null && continue
    # No pip, or a system Python that refuses pip installs (PEP 668): Debian's package.
    say "pip could not install $mod: trying apt-get install ${deb_for[$mod]}"
    if ! $apt_updated; then
        as_root apt-get update -qq
        apt_updated=true
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${deb_for[$mod]}" \
        >/dev/null || say "could not install $mod: the tests that need it skip"
done
exit 0
