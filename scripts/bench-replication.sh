#!/usr/bin/env bash
# Replication of one sealed bundle between two relays over loopback: MB/s
# and peak RSS of both relays, against raw libp2p-stream throughput over the
# same transport (TCP + Noise + Yamux, the `stream_baseline` example of
# chapar-mesh) for the same number of bytes, measured in the same run.
#
# Relay A holds the bundle (imported with `chapar import`); relay B starts
# empty with A as its peer. The time is from B's start until B logs
# "bundle complete" (taken from B's log timestamp), so it includes B's
# start-up, the connection and the first inventory sync; the time from B's
# "peer connected" to "bundle complete" is printed as well. Peak RSS is
# each relay's VmHWM, read just before it is stopped. The baseline runs
# after each replication, as many times (RUNS, default 3); medians count.
#
# VIA="plain https" replicates over both of A's links in turn, each round:
# plain TCP and the camouflaged HTTPS link (TLS + WebSocket, B given A's
# share string), and prints each link's medians and their ratio.
#
# Usage: [VIA="plain https"] scripts/bench-replication.sh [SIZE_MIB]   (default: 256)
# MB = 10^6 bytes. Writes into a temp folder under target/ and removes it.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/bench-lib.sh
. "$here/scripts/bench-lib.sh"
mib=${1:-256}
cd "$here"
cargo build --release --quiet -p chapar-relay -p chapar-cli
cargo build --release --quiet -p chapar-mesh --example stream_baseline
chapar="$here/target/release/chapar"
relay="$here/target/release/chapar-relay"
baseline="$here/target/release/examples/stream_baseline"
work=$(mktemp -d -p "$here/target" bench-replication.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

recipient=$("$chapar" keygen -o "$work/key.txt" 2>/dev/null)
mkdir "$work/in"
head -c "$((mib * 1048576))" /dev/urandom >"$work/in/evidence.bin"
"$chapar" seal -r "$recipient" -o "$work/bundle" "$work/in" >/dev/null 2>&1
"$chapar" import --data-dir "$work/A" --role relaying "$work/bundle" >/dev/null 2>&1
# Nothing is deleted until the end: on ext4 without a journal (these
# machines), each new inode is checked against every inode deleted in the
# last one to five minutes, so deleting a bundle's worth of files just
# before a run made B's file creations several times dearer, and the
# figure depended on what the script had removed. Each run gets a fresh B.
bytes=$(chunk_bytes "$work/A/chunks")

extra=()
"$relay" --help | grep -- '--no-mdns' >/dev/null && extra+=(--no-mdns)

# Seconds since the epoch of a tracing log line (its leading RFC 3339 stamp).
stamp() { date -d "$(echo "$1" | awk '{print $1}')" +%s.%N; }
peak_mib() { awk '/^VmHWM:/ {print $2/1024}' "/proc/$1/status"; }
# CPU seconds (user + system) a process has used so far.
cpu_secs() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }

sync
export CHAPAR_LOG=${BENCH_LOG:-info} NO_COLOR=1
vias=(${VIA:-plain})
"$relay" --data-dir "$work/A" --listen /ip4/127.0.0.1/tcp/0 --https-listen 127.0.0.1:0 \
  "${extra[@]}" 2>"$work/A.log" >"$work/A.out" &
pid_a=$!
pids+=("$pid_a")
addr_a=$(wait_for "$work/A.log" 'listening.*/p2p/' 30 | grep -o '/ip4/[^ ]*/p2p/[A-Za-z0-9]*')
share_a=$(wait_for "$work/A.out" '^share: https' 30 | sed 's/^share: //')
peer_for() { if [ "$1" = https ]; then echo "$share_a"; else echo "$addr_a"; fi; }
"$baseline" serve >"$work/serve.out" 2>&1 &
pids+=($!)
addr_s=$(wait_for "$work/serve.out" '^listening' 30 | awk '{print $2}')

# One replication (number $1, over link $2) into a fresh relay B; prints
# "seconds-from-start seconds-from-connect peak-RSS-of-B CPU-of-B".
replicate() {
  local start end connected done_line rss pid_b
  local b="$work/B$1-$2"
  # The store flushes with syncfs, which writes out the whole filesystem's
  # dirty pages: without this, a run would also pay for the last run's.
  sync
  start=$(date +%s.%N)
  "$relay" --data-dir "$b" --listen /ip4/127.0.0.1/tcp/0 --peer "$(peer_for "$2")" "${extra[@]}" 2>"$work/B.log" &
  pid_b=$!
  done_line=$(wait_for "$work/B.log" 'bundle complete' 600)
  end=$(stamp "$done_line")
  connected=$(stamp "$(grep -m1 'peer connected' "$work/B.log")")
  rss=$(peak_mib "$pid_b")
  cpu=$(cpu_secs "$pid_b")
  kill "$pid_b"
  wait "$pid_b" 2>/dev/null || true
  "$chapar" --json status --data-dir "$b" | grep '"complete":true' >/dev/null ||
    { echo "relay B does not hold the whole bundle" >&2; exit 1; }
  got=$(chunk_bytes "$b/chunks")
  [ "$got" -eq "$bytes" ] || { echo "relay B holds $got bytes of chunks, A $bytes" >&2; exit 1; }
  [ -n "${KEEP_LOGS:-}" ] && cp "$work/B.log" "$KEEP_LOGS"/
  echo "$start $end $connected $rss $cpu" | awk '{print $2-$1, $2-$3, $4, $5}'
}

# Replication and the raw baseline take turns, so both see the same load.
runs=${RUNS:-3}
raws=() rss_b=0
declare -A secs xfers cpus
cpu_a0=$(cpu_secs "$pid_a")
for run in $(seq "$runs"); do
  for via in "${vias[@]}"; do
    read -r s x r c < <(replicate "$run" "$via")
    secs[$via]+="$s " xfers[$via]+="$x " cpus[$via]+="$c "
    rss_b=$(echo "$rss_b $r" | awk '{print ($2 > $1) ? $2 : $1}')
  done
  raws+=("$("$baseline" send "$addr_s" "$bytes" | awk '{print $7}')")
done
rss_a=$(peak_mib "$pid_a")
cpu_a=$(echo "$cpu_a0 $(cpu_secs "$pid_a") $((runs * ${#vias[@]}))" | awk '{print ($2 - $1) / $3}')
[ -n "${KEEP_LOGS:-}" ] && cp "$work/A.log" "$KEEP_LOGS"/

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
list() { printf '%s ' "$@" | sed 's/ $//; s/ /, /g'; }
raw=$(median "${raws[@]}")

printf 'bundle: %s MiB of input, %d bytes of chunk files (parity included)\n' "$mib" "$bytes"
printf 'raw libp2p-stream (TCP+Noise+Yamux), %d runs: %s MB/s; median %.1f MB/s\n' \
  "$runs" "$(list "${raws[@]}")" "$raw"
declare -A rate_of
for via in "${vias[@]}"; do
  # shellcheck disable=SC2086
  sec=$(median ${secs[$via]})
  # shellcheck disable=SC2086
  xfer=$(median ${xfers[$via]})
  rate=$(echo "$bytes $sec" | awk '{print $1/$2/1e6}')
  xrate=$(echo "$bytes $xfer" | awk '{print $1/$2/1e6}')
  rate_of[$via]=$xrate
  printf '%s: relay replication, %d runs: %s s from B start, %s s from connect\n' \
    "$via" "$runs" "$(list ${secs[$via]})" "$(list ${xfers[$via]})"
  printf '%s: median from B start: %.2f s  %8.1f MB/s  (%.2fx raw)\n' \
    "$via" "$sec" "$rate" "$(echo "$rate $raw" | awk '{print $1/$2}')"
  printf '%s: median from connect: %.2f s  %8.1f MB/s  (%.2fx raw)\n' \
    "$via" "$xfer" "$xrate" "$(echo "$xrate $raw" | awk '{print $1/$2}')"
  printf '%s: CPU seconds per replication of relay B (fetching): %s\n' "$via" "$(list ${cpus[$via]})"
done
if [ -n "${rate_of[plain]:-}" ] && [ -n "${rate_of[https]:-}" ]; then
  printf 'camouflaged HTTPS / plain TCP, median from connect: %.2f\n' \
    "$(echo "${rate_of[https]} ${rate_of[plain]}" | awk '{print $1/$2}')"
fi
printf 'CPU seconds per replication: relay A (serving) %.2f (mean)\n' "$cpu_a"
printf 'peak RSS: relay A (serving) %.1f MiB, relay B (fetching, highest of the runs) %.1f MiB\n' "$rss_a" "$rss_b"
