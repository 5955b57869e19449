#!/usr/bin/env bash
# Same-run comparison of the shmq ring with the C spin ring of ../shared/bench/ipc_rtt.sh:
# 64 B polled round trip (p50) and 64 B one-way streaming (polled consumer). ROUNDS rounds; each
# round runs the C program (spin RTT, stream-spsc) and then every bench binary given, so all see
# the same machine load. Prints one line per round, then medians and ratios to the C ring.
# The C program is taken verbatim from ipc_rtt.sh (its heredoc).
#
# Env: IPC_RTT_SH (path to ipc_rtt.sh; default ../shared/bench/ipc_rtt.sh beside the repo),
# ROUNDS (default 5), RTT_N (ring round trips per case, default 200000), ONEWAY_N (frames per
# one-way run, default 2000000), BENCHES ("label=path ..." of built ipc bench binaries; default
# "ring=<cargo bench -p shmq --bench ipc --no-run>").
set -euo pipefail
ROUNDS=${ROUNDS:-5}
SRC=${IPC_RTT_SH:-$(dirname "$0")/../../../shared/bench/ipc_rtt.sh}
TMP=$(mktemp -d /tmp/ring-vs-c.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
sed -n "/^cat > \"\$TMP\/ipc.c\" <<'EOF'$/,/^EOF$/p" "$SRC" | sed '1d;$d' > "$TMP/ipc.c"
gcc -O2 -Wall -o "$TMP/ipc" "$TMP/ipc.c"
if [ -z "${BENCHES:-}" ]; then
  BENCHES="ring=$(cargo bench -p shmq --bench ipc --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*ipc-[^"]*\)".*/\1/p' | tail -1)"
fi
median() { sort -g | awk '{a[NR]=$1} END{if(NR%2)print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
tohz() { awk '{v=$1; if (v ~ /M$/) {sub(/M$/,"",v); v*=1e6} else if (v ~ /k$/) {sub(/k$/,"",v); v*=1e3}; print v}'; }
echo "# $(date -u +%FT%TZ) $(nproc) CPUs, $(uname -r), load: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
  c_rtt=$(PIN=1 timeout 120 "$TMP/ipc" spin 64 200000 | sed -E 's/.*p50_ns=([0-9]+).*/\1/')
  c_str=$(PIN=1 timeout 120 "$TMP/ipc" stream-spsc 64 2000000 | sed -E 's/.*msgs_per_s=([0-9]+).*/\1/')
  echo "round $r: C spin rtt p50 ${c_rtt} ns, C stream ${c_str}/s (load $(cut -d' ' -f1 /proc/loadavg))"
  echo "C $c_rtt $c_str" >> "$TMP/res"
  for b in $BENCHES; do
    label=${b%%=*}; bin=${b#*=}
    out=$(SHMQ_BENCH_ONLY="rtt posix,rtt raw,oneway posix" SHMQ_BENCH_SIZES=64 \
      SHMQ_BENCH_RTT_N=${RTT_N:-200000} SHMQ_BENCH_ONEWAY_N=${ONEWAY_N:-2000000} timeout 900 "$bin" --bench)
    rtt=$(echo "$out" | awk -F'|' '/shm ring/ && / 64 B/ && /polled/ {gsub(/ /,"",$5); print $5}' | tail -1)
    raw=$(echo "$out" | awk -F'|' '/raw shared/ {gsub(/ /,"",$5); print $5}' | tail -1)
    str=$(echo "$out" | awk -F'|' '/shm ring \(posix\)/ && /polled/ {gsub(/ /,"",$5); print $5}' | head -1 | sed 's/\[.*//' | tohz)
    echo "round $r: $label polled rtt p50 ${rtt} ns (raw 2-line ${raw} ns), polled stream ${str}/s;" \
      "ratios to C: rtt $(awk -v a="$rtt" -v b="$c_rtt" 'BEGIN{printf "%.2f", a/b}')," \
      "stream $(awk -v a="$str" -v b="$c_str" 'BEGIN{printf "%.2f", a/b}')"
    echo "$label $rtt $str $(awk -v a="$rtt" -v b="$c_rtt" 'BEGIN{print a/b}') $(awk -v a="$str" -v b="$c_str" 'BEGIN{print a/b}') $raw" >> "$TMP/res"
  done
done
echo "# medians over $ROUNDS rounds"
echo "C: rtt p50 $(awk '$1=="C"{print $2}' "$TMP/res" | median) ns, stream $(awk '$1=="C"{print $3}' "$TMP/res" | median)/s"
for b in $BENCHES; do
  l=${b%%=*}
  echo "$l: rtt p50 $(awk -v l="$l" '$1==l{print $2}' "$TMP/res" | median) ns (ratio to C $(awk -v l="$l" '$1==l{print $4}' "$TMP/res" | median)), raw 2-line $(awk -v l="$l" '$1==l{print $6}' "$TMP/res" | median) ns, stream $(awk -v l="$l" '$1==l{print $3}' "$TMP/res" | median)/s (ratio to C $(awk -v l="$l" '$1==l{print $5}' "$TMP/res" | median))"
done
