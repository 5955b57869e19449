#!/usr/bin/env bash
# Our server against its peer, in alternating rounds: `kv` against redis-server without
# persistence (redis-benchmark), or `http` against nginx with 1 worker (wrk -t1). On the build
# machines host noise swings one server 2-5x between neighbouring runs, so figures taken minutes
# apart (the shared scripts run one server after the other) do not compare; here every round runs
# each contestant once, the order reversed every other round, and the summary gives the medians,
# the per-round ratios and their median (docs/BENCHMARKS.md).
#
#   scripts/peers-ab.sh kv   [SIDE ...]
#   scripts/peers-ab.sh http [SIDE ...]
#
# SIDE is LABEL:BINDIR:MDS[:IO_SPIN:MD_SPIN]: io_conn and md from BINDIR, `--spawn-md MDS`, and
# optionally `io_conn.spin` / `md.spin` (e.g. `0s`); default `ours:target/release:2`. Several
# sides compare builds or settings in the same rounds.
#
# Env: ROUNDS (6); kv: ARGS (redis-benchmark's, "-t set,get -n 300000 -c 50"); http: C (100
# connections), DUR (4 s per run); PEER=0 leaves the peer out; OUT (a directory to keep the
# configs, logs and per-round results; default a temporary one, removed at exit).
#
# Output: one line per round and contestant ("round R LABEL: TEST=req/s ... CPU=µs"), then per
# test and side: the medians, their ratio, and the per-round ratios to the peer. CPU is the
# server's own CPU time (utime + stime of io_conn and its md children, of redis-server, or of the
# nginx master and worker) per request over the run. Every run is bounded (redis-benchmark by
# its request count under `timeout`, wrk by DUR); the script starts and stops its servers by pid
# and exits non-zero if a run produced no figure. Ports: 16440+ (kv) and 18100+ (http), checked
# free first.
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-}
case $MODE in
    kv) need=(redis-server redis-benchmark) ;;
    http) need=(nginx wrk) ;;
    *)
        echo "usage: scripts/peers-ab.sh kv|http [LABEL:BINDIR:MDS[:IO_SPIN:MD_SPIN] ...]" >&2
        exit 2
        ;;
esac
shift
SIDES=("$@")
[ ${#SIDES[@]} -gt 0 ] || SIDES=("ours:target/release:2")
ROUNDS=${ROUNDS:-6}
PEER=${PEER:-1}
ARGS=${ARGS:-"-t set,get -n 300000 -c 50"}
C=${C:-100}
DUR=${DUR:-4}
for t in "${need[@]}"; do
    if [ "$PEER" = 1 ] || [[ $t != redis-server && $t != nginx ]]; then
        command -v "$t" >/dev/null || { echo "peers-ab: $t is not installed (scripts/deps.sh ci installs it)" >&2; exit 2; }
    fi
done

if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    KEEP=1
else
    OUT=$(mktemp -d /tmp/peers-ab.XXXXXX)
    KEEP=0
fi
RES=$OUT/res
: > "$RES"
HZ=$(getconf CLK_TCK)
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

pids=() ports=() labels=()
stop_all() {
    local p
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    [ "$KEEP" = 1 ] || rm -rf "$OUT"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
    for _ in $(seq 150); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
    return 1
}

if [ "$MODE" = kv ]; then base=16440; else base=18100; fi
i=0
for s in "${SIDES[@]}"; do
    IFS=: read -r label bin mds io_spin md_spin <<< "$s"
    [ -n "$label" ] && [ -x "$bin/io_conn" ] && [ -x "$bin/md" ] && [[ ${mds:-} =~ ^[0-9]+$ ]] || {
        echo "peers-ab: bad side '$s' (LABEL:BINDIR:MDS[:IO_SPIN:MD_SPIN], BINDIR with io_conn and md)" >&2
        exit 2
    }
    i=$((i + 1))
    port=$((base + i))
    port_free "$port" || { echo "peers-ab: port $port is in use" >&2; exit 1; }
    rt=$OUT/rt-$label
    mkdir -p "$rt"
    chmod 700 "$rt"
    {
        printf '[shared]\nname = "pab%s-%s"\nruntime_dir = "%s"\n[io_conn]\n' "$$" "$label" "$rt"
        [ -n "${io_spin:-}" ] && printf 'spin = "%s"\n' "$io_spin"
        printf '[[io_conn.listener]]\naddress = "127.0.0.1:%s"\nservice = "%s"\n[md]\n' "$port" "$MODE"
        [ -n "${md_spin:-}" ] && printf 'spin = "%s"\n' "$md_spin"
    } > "$OUT/$label.toml"
    SHMSRV_MD_BIN=$bin/md "$bin/io_conn" --config "$OUT/$label.toml" --spawn-md "$mds" > "$OUT/$label.log" 2>&1 &
    pids+=($!) ports+=("$port") labels+=("$label")
done
peer=
if [ "$PEER" = 1 ]; then
    port=$base
    port_free "$port" || { echo "peers-ab: port $port is in use" >&2; exit 1; }
    if [ "$MODE" = kv ]; then
        peer=redis
        redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
            > "$OUT/redis.log" 2>&1 &
    else
        peer=nginx
        mkdir -p "$OUT/ngx/logs"
        cat > "$OUT/ngx/nginx.conf" <<NGX
daemon off; master_process on; worker_processes 1; worker_rlimit_nofile 19000; pid $OUT/ngx/nginx.pid;
error_log $OUT/ngx/logs/error.log warn;
events { worker_connections 16384; }
http { access_log off; keepalive_timeout 65; keepalive_requests 100000000; default_type text/plain;
  client_body_temp_path $OUT/ngx/cb; proxy_temp_path $OUT/ngx/px; fastcgi_temp_path $OUT/ngx/fc;
  uwsgi_temp_path $OUT/ngx/uw; scgi_temp_path $OUT/ngx/sc;
  server { listen 127.0.0.1:$port backlog=4096; location / { return 200 "hello\n"; } } }
NGX
        nginx -p "$OUT/ngx" -c "$OUT/ngx/nginx.conf" -e "$OUT/ngx/logs/error.log" &
    fi
    pids+=($!) ports+=("$port") labels+=("$peer")
fi
for k in "${!ports[@]}"; do
    wait_port "${ports[$k]}" || { echo "peers-ab: ${labels[$k]} did not listen on ${ports[$k]}" >&2; cat "$OUT/${labels[$k]}.log" 2>/dev/null >&2; exit 1; }
done
sleep 1 # every md attached (io_conn holds connections until one is; this keeps round 1 fair)

# utime + stime (clock ticks) of a process and its children.
ticks() {
    local t=0 p
    for p in "$1" $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        t=$((t + $(awk '{sub(/.*\) /, ""); print $12 + $13}' /proc/"$p"/stat 2>/dev/null || echo 0)))
    done
    echo "$t"
}

# One run against port $1; prints "TEST=req/s ... REQS=n" (n: the requests the run served).
run_one() {
    if [ "$MODE" = kv ]; then
        local out
        # shellcheck disable=SC2086 # ARGS is a list of redis-benchmark's options
        out=$(timeout 300 redis-benchmark -p "$1" $ARGS -q 2>&1 | tr '\r' '\n' | grep 'per second')
        local n tests
        n=$(sed -E 's/.*-n ([0-9]+).*/\1/' <<< "$ARGS")
        tests=$(grep -c . <<< "$out")
        sed -E 's/^([A-Z_]+): ([0-9.]+) requests.*/\1=\2/' <<< "$out" | tr '\n' ' '
        echo "REQS=$((n * tests))"
    else
        local out
        out=$(timeout $((DUR + 30)) wrk -t1 -c"$C" -d"${DUR}s" "http://127.0.0.1:$1/" 2>&1)
        local rps reqs bad
        rps=$(awk '/Requests\/sec/{print $2}' <<< "$out")
        reqs=$(awk '/requests in/{print $1}' <<< "$out")
        bad=$(awk '/Non-2xx|Socket errors/{print}' <<< "$out")
        [ -z "$bad" ] || echo "peers-ab: $bad" >&2
        echo "GET=$rps REQS=$reqs"
    fi
}

n=${#labels[@]}
failed=0
for r in $(seq "$ROUNDS"); do
    idx=$(seq 0 $((n - 1)))
    [ $((r % 2)) -eq 0 ] && idx=$(seq $((n - 1)) -1 0)
    for k in $idx; do
        t0=$(ticks "${pids[$k]}")
        figs=$(run_one "${ports[$k]}")
        t1=$(ticks "${pids[$k]}")
        if [[ ! $figs =~ [A-Z]=[0-9] ]] || [[ ! $figs =~ REQS=[1-9] ]]; then
            echo "peers-ab: round $r ${labels[$k]}: no figure" >&2
            failed=1
            continue
        fi
        echo "round $r ${labels[$k]}: $figs CPU_TICKS=$((t1 - t0))" | tee -a "$RES"
    done
done

python3 - "$RES" "$peer" "$HZ" <<'PY'
import collections, re, statistics as st, sys
res, peer, hz = sys.argv[1:]
hz = int(hz)
runs = collections.defaultdict(dict)    # (test, round) -> side -> req/s
cpu = collections.defaultdict(list)     # side -> µs per request
for line in open(res):
    m = re.match(r"round (\d+) (\S+): (.*) CPU_TICKS=(\d+)", line)
    if not m:
        continue
    rnd, side, figs, ticks = int(m[1]), m[2], m[3].split(), int(m[4])
    reqs = 0
    for f in figs:
        test, v = f.split("=")
        if test == "REQS":
            reqs = int(v)
        else:
            runs[(test, rnd)][side] = float(v)
    if reqs:
        cpu[side].append(ticks / hz * 1e6 / reqs)
sides = sorted({s for v in runs.values() for s in v}, key=lambda s: (s == peer, s))
for test in sorted({t for t, _ in runs}):
    rounds = sorted(r for t, r in runs if t == test)
    med = {s: st.median([runs[(test, r)][s] for r in rounds if s in runs[(test, r)]]) for s in sides}
    for s in sides:
        line = f"{test:5} {s:10} median {med[s] / 1e3:9.1f} k/s"
        if peer and s != peer:
            per = [runs[(test, r)][s] / runs[(test, r)][peer] for r in rounds
                   if s in runs[(test, r)] and peer in runs[(test, r)]]
            line += (f"  {med[s] / med[peer]:.2f}x {peer}; per round "
                     + ", ".join(f"{x:.2f}" for x in per) + f" (median {st.median(per):.2f})")
        print(line)
for s in sides:
    print(f"CPU   {s:10} {st.median(cpu[s]):.2f} us per request (median over rounds)")
PY
exit $failed
