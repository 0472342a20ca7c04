#!/usr/bin/env bash
# `chapar import` of a sealed bundle into a fresh store: MB/s and peak RSS,
# against raw sequential write + fsync of the same number of bytes (dd)
# measured in the same run.
# Usage: scripts/bench-import.sh [SIZE_MIB]   (default: 1024)
# Needs /usr/bin/time (apt-get install time).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
mib=${1:-1024}
cd "$here"
cargo build --release --quiet --bin chapar
chapar="$here/target/release/chapar"
work=$(mktemp -d -p "$here/target" bench-import.XXXXXX)
trap 'rm -rf "$work"' EXIT
recipient=$("$chapar" keygen -o "$work/key.txt" 2>/dev/null)
mkdir "$work/in"
head -c "$((mib * 1048576))" /dev/urandom >"$work/in/evidence.bin"
"$chapar" seal -r "$recipient" -o "$work/bundle" "$work/in" 2>/dev/null >/dev/null
rm -rf "$work/in"
bytes=$(du -sb "$work/bundle/chunks" | cut -f1)

sync
# Drop the bundle's pages so both runs read or write cold where it matters.
start=$(date +%s.%N)
dd if=/dev/zero of="$work/dd.bin" bs=1M count="$((bytes / 1048576))" conv=fsync status=none
end=$(date +%s.%N)
raw=$(echo "$bytes $start $end" | awk '{print $1/($3-$2)/1e6}')
rm -f "$work/dd.bin"

sync
/usr/bin/time -v "$chapar" import --data-dir "$work/data" "$work/bundle" >/dev/null 2>"$work/time.txt"
"$chapar" --json status --data-dir "$work/data" | grep "\"complete\":true" >/dev/null || { echo "import did not complete" >&2; cat "$work/time.txt" >&2; exit 1; }
wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$work/time.txt" |
  awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
rss=$(awk -F': ' '/Maximum resident set size/ {print $2/1024}' "$work/time.txt")
rate=$(echo "$bytes $wall" | awk '{print $1/$2/1e6}')
printf 'bundle on disk: %d MiB (%s MiB of input, parity included)\n' "$((bytes / 1048576))" "$mib"
printf 'raw dd write+fsync: %8.1f MB/s\n' "$raw"
printf 'chapar import:      %8.1f MB/s  (%.2fx raw)  wall %.2f s  peak RSS %.1f MiB\n' \
  "$rate" "$(echo "$rate $raw" | awk '{print $1/$2}')" "$wall" "$rss"
