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
# three times after the relays have stopped; the median counts.
#
# Usage: scripts/bench-replication.sh [SIZE_MIB]   (default: 256)
# MB = 10^6 bytes. Writes into a temp folder under target/ and removes it.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
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
rm -rf "$work/in"
"$chapar" import --data-dir "$work/A" --role relaying "$work/bundle" >/dev/null 2>&1
rm -rf "$work/bundle"
chunk_bytes() { find "$1" -type f -printf '%s\n' | awk '{s += $1} END {print s}'; }
bytes=$(chunk_bytes "$work/A/chunks")

extra=()
"$relay" --help | grep -q -- '--no-mdns' && extra+=(--no-mdns)

# Waits (up to $3 seconds) for a line matching $2 in log $1; prints it.
wait_for() {
  local log=$1 pattern=$2 limit=$3 line
  local deadline=$((SECONDS + limit))
  while [ "$SECONDS" -le "$deadline" ]; do
    line=$(grep -m1 -- "$pattern" "$log" 2>/dev/null || true)
    if [ -n "$line" ]; then
      echo "$line"
      return 0
    fi
    sleep 0.05
  done
  echo "no \"$pattern\" in $log after ${limit}s:" >&2
  tail -20 "$log" >&2
  return 1
}
# Seconds since the epoch of a tracing log line (its leading RFC 3339 stamp).
stamp() { date -d "$(echo "$1" | awk '{print $1}')" +%s.%N; }
peak_mib() { awk '/^VmHWM:/ {print $2/1024}' "/proc/$1/status"; }

sync
export CHAPAR_LOG=info NO_COLOR=1
"$relay" --data-dir "$work/A" --listen /ip4/127.0.0.1/tcp/0 "${extra[@]}" 2>"$work/A.log" &
pid_a=$!
pids+=("$pid_a")
addr_a=$(wait_for "$work/A.log" 'listening.*/p2p/' 30 | grep -o '/ip4/[^ ]*/p2p/[A-Za-z0-9]*')

start=$(date +%s.%N)
"$relay" --data-dir "$work/B" --listen /ip4/127.0.0.1/tcp/0 --peer "$addr_a" "${extra[@]}" 2>"$work/B.log" &
pid_b=$!
pids+=("$pid_b")
done_line=$(wait_for "$work/B.log" 'bundle complete' 600)
end=$(stamp "$done_line")
connected=$(stamp "$(grep -m1 'peer connected' "$work/B.log")")
rss_a=$(peak_mib "$pid_a")
rss_b=$(peak_mib "$pid_b")
kill "$pid_a" "$pid_b"
wait "$pid_a" "$pid_b" 2>/dev/null || true
pids=()
"$chapar" --json status --data-dir "$work/B" | grep -q '"complete":true' ||
  { echo "relay B does not hold the whole bundle" >&2; exit 1; }
got=$(chunk_bytes "$work/B/chunks")
[ "$got" -eq "$bytes" ] || { echo "relay B holds $got bytes of chunks, A $bytes" >&2; exit 1; }
rm -rf "$work/A" "$work/B"

secs=$(echo "$start $end" | awk '{print $2-$1}')
xfer=$(echo "$connected $end" | awk '{print $2-$1}')
rate=$(echo "$bytes $secs" | awk '{print $1/$2/1e6}')
xrate=$(echo "$bytes $xfer" | awk '{print $1/$2/1e6}')

"$baseline" serve >"$work/serve.out" 2>&1 &
pids+=($!)
addr_s=$(wait_for "$work/serve.out" '^listening' 30 | awk '{print $2}')
raws=()
for _ in 1 2 3; do
  raws+=("$("$baseline" send "$addr_s" "$bytes" | awk '{print $7}')")
done
raw=$(printf '%s\n' "${raws[@]}" | sort -n | sed -n 2p)

printf 'bundle: %s MiB of input, %d bytes of chunk files (parity included)\n' "$mib" "$bytes"
printf 'raw libp2p-stream (TCP+Noise+Yamux), 3 runs: %s MB/s; median %.1f MB/s\n' \
  "$(printf '%s ' "${raws[@]}" | sed 's/ $//; s/ /, /g')" "$raw"
printf 'relay replication: %.2f s from B start: %8.1f MB/s  (%.2fx raw)\n' \
  "$secs" "$rate" "$(echo "$rate $raw" | awk '{print $1/$2}')"
printf '                   %.2f s from connect:  %8.1f MB/s  (%.2fx raw)\n' \
  "$xfer" "$xrate" "$(echo "$xrate $raw" | awk '{print $1/$2}')"
printf 'peak RSS: relay A (serving) %.1f MiB, relay B (fetching) %.1f MiB\n' "$rss_a" "$rss_b"
