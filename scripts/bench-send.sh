#!/usr/bin/env bash
# `chapar send` to `chapar receive` over loopback, through one relay and
# direct: wall time from the start of `send` until the recipient has
# opened and verified the files, MB/s of the input, peak RSS and CPU time
# of every process, and the sender's uplink efficiency. Baselines in the
# same run: raw loopback TCP (python3, sendfile into recv), raw
# libp2p-stream (TCP + Noise + Yamux, the `stream_baseline` example of
# chapar-mesh) for the same number of bytes, and the disk (dd of the same
# bytes with conv=fsync).
#
# Through one relay: the relay and the recipient (`receive --once`, with
# the relay as its only peer) are up and connected before `send` starts;
# the sender's only peer is the relay. Direct: no relay; the recipient
# listens and dials the sender, and the sender dials the recipient (both
# at fixed ports), so the link comes up as soon as the sender's node
# starts, which is after sealing. Every node runs with --no-mdns
# --sync-interval 1s.
#
# Times come from the processes' JSON progress lines and logs, stamped as
# they arrive, relative to the start of `send`: "sealed" (the sender has
# sealed into its store: encryption, erasure coding, chunk files durable),
# "whole" (the relay's, or in direct mode the recipient's, "bundle
# complete" log line), "fetched" (the recipient's own "bundle complete"),
# "opened" (the recipient's "opened" event: every file rebuilt and its
# hashes verified; the headline time), and the exits of sender and
# recipient (`receive --once` lingers 1 s after opening so the receipt can
# leave; `send --until delivered` exits when the receipt is back). The
# output is also compared byte for byte with the input.
#
# Peak RSS and CPU time come from /usr/bin/time -v around each process;
# RssAnon and RssFile (heap versus mapped code) are polled every 0.25 s
# and the largest of each is shown beside it. The stages of a transfer
# are also run alone, one process each, in the same run: `chapar seal`
# to a folder and `chapar import` of it (what `send` does before its node
# starts), and `chapar open` of the folder (what `receive` does once it
# holds every chunk).
# Floor: a lower bound for this design here, from the same run's figures:
# the seal alone (no chunk can leave before it ends: the descriptor goes
# first and lists every chunk) plus the chunk files' bytes at raw
# libp2p-stream speed (each crosses at least one libp2p connection).
# Page cache: system time to write the input's size without fsync, into
# long-free memory and then into just-freed memory (on a VM that reports
# free pages to its host, the first is several times dearer).
# Uplink: every TCP socket of the sender's process is polled with
# `ss -tinp` every 0.25 s; bytes_sent (TCP payload: Noise, Yamux and the
# protocols' framing included, retransmissions included; IP/TCP headers
# not) is summed over its sockets, taken at the first poll after the
# relay (direct: the recipient) logged "bundle complete", and divided by
# the bytes of the bundle's chunk files in the sender's store (payload +
# parity + index). A socket that closes loses at most its last 0.25 s.
#
# Usage: scripts/bench-send.sh [SIZE_MIB...]   (default: 1024)
# MB = 10^6 bytes. Needs python3, ss (iproute2) and /usr/bin/time. Writes
# into a temp folder under target/ (about 6x the input size at a time)
# and removes it.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/bench-lib.sh
. "$here/scripts/bench-lib.sh"
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1024)
cd "$here"
for tool in python3 ss /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
cargo build --release --quiet -p chapar-cli -p chapar-relay
cargo build --release --quiet -p chapar-mesh --example stream_baseline
work=$(mktemp -d -p "$here/target" bench-send.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# Copies, so that someone rebuilding target/ meanwhile changes nothing here.
mkdir "$work/bin"
cp target/release/chapar target/release/chapar-relay target/release/examples/stream_baseline "$work/bin/"
chapar="$work/bin/chapar"
relay="$work/bin/chapar-relay"
baseline="$work/bin/stream_baseline"

echo "binaries built from $(git rev-parse --short HEAD)$(git status --porcelain -uno | grep . >/dev/null && echo ' with uncommitted changes' || true), $(date -u +%F)"
recipient=$("$chapar" keygen -o "$work/key.txt" 2>/dev/null)

cat >"$work/rawtcp.py" <<'EOF'
# serve: print the port, then read every connection to its end and answer
# with the byte count. send PORT FILE: sendfile FILE, half-close, wait for
# the count; print bytes, seconds, MB/s.
import socket, sys, time
if sys.argv[1] == "serve":
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    print(s.getsockname()[1], flush=True)
    buf = bytearray(1 << 20)
    while True:
        c, _ = s.accept()
        n = 0
        while True:
            k = c.recv_into(buf)
            if not k:
                break
            n += k
        c.sendall(str(n).encode())
        c.close()
else:
    port, path = int(sys.argv[2]), sys.argv[3]
    with open(path, "rb") as f:
        t = time.perf_counter()
        c = socket.create_connection(("127.0.0.1", port))
        n = c.sendfile(f)
        c.shutdown(socket.SHUT_WR)
        got = int(c.recv(64))
        dt = time.perf_counter() - t
    assert got == n, (got, n)
    print(n, round(dt, 3), round(n / dt / 1e6, 1))
EOF

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# Prefixes each line with the time it arrived.
stamped() { while IFS= read -r l; do printf '%s %s\n' "$EPOCHREALTIME" "$l"; done; }
# The arrival stamp of the first line matching $2 in log $1, or empty.
when() { grep -m1 -- "$2" "$1" 2>/dev/null | awk '{print $1}' || true; }
median3() { printf '%s\n' "$@" | sort -n | sed -n 2p; }

# Starts "$@" under /usr/bin/time as process $name, stderr stamped into
# $work/$name.err; sets $tpid (time's pid) and $cpid (the process itself,
# which is what cleanup stops: time outlives a SIGTERM sent to it).
run_as() {
  local name=$1; shift
  /usr/bin/time -v -o "$work/$name.time" "$@" >"$work/$name.out" 2> >(stamped >"$work/$name.err") &
  tpid=$!
  cpid=
  # time's children are the process and the stamping subshell.
  local i p exe
  exe=$(readlink -f "$1")
  for i in $(seq 500); do
    for p in $(pgrep -P "$tpid" || true); do
      if [ "$(readlink "/proc/$p/exe" 2>/dev/null)" = "$exe" ]; then
        cpid=$p
        pids+=("$cpid")
        sample_memory "$cpid" "$work/$name.mem" &
        return 0
      fi
    done
    kill -0 "$tpid" 2>/dev/null || break
    sleep 0.01
  done
  echo "$name did not start" >&2
  cat "$work/$name.err" >&2 || true
  return 1
}
# Polls the TCP sockets of process $1 until it exits: "stamp socket bytes_sent".
sample_sockets() {
  local pid=$1 out=$2
  while kill -0 "$pid" 2>/dev/null; do
    ss -tinpH 2>/dev/null | awk -v pid="pid=$pid," -v t="$EPOCHREALTIME" '
      /^[^ \t]/ { key = index($0, pid) ? $4 "-" $5 : ""; next }
      key != "" {
        if (match($0, /bytes_sent:[0-9]+/)) print t, key, substr($0, RSTART + 11, RLENGTH - 11)
        else if (match($0, /bytes_acked:[0-9]+/)) print t, key, substr($0, RSTART + 12, RLENGTH - 12) - 1
        key = ""
      }' >>"$out"
    sleep 0.25
  done
}
# Polls process $1's resident memory until it exits: "RssAnon RssFile" in KiB.
sample_memory() {
  local pid=$1 out=$2
  while kill -0 "$pid" 2>/dev/null; do
    awk '/^RssAnon:/ {a = $2} /^RssFile:/ {f = $2} END {if (a != "") print a, f}' \
      "/proc/$pid/status" >>"$out" 2>/dev/null || true
    sleep 0.25
  done
}
# "anon A, file F" MiB: the largest of each seen in $work/$1.mem (not at the same moment).
mem_split() {
  awk '$1 > a {a = $1} $2 > f {f = $2} END {printf "anon %.1f, file %.1f", a / 1024, f / 1024}' "$work/$1.mem"
}
# Bytes the sampled sockets had sent at the first poll at or after $2
# (every socket's last value if $2 is empty).
sent_by() {
  awk -v at="${2:-}" '
    { last[$2] = $3; if (at != "" && $1 >= at && !($2 in first)) first[$2] = $3 }
    END { for (k in last) s += (k in first) ? first[k] : last[k]; printf "%.0f\n", s }' "$1"
}
time_field() { awk -F': ' -v f="$2" 'index($0, f) == 2 || index($0, f) == 1 {print $2}' "$work/$1.time"; }
peak_mib() { time_field "$1" 'Maximum resident set size' | awk '{printf "%.1f", $1 / 1024}'; }
# CPU seconds: "user+sys".
cpu_s() {
  echo "$(time_field "$1" 'User time (seconds)') $(time_field "$1" 'System time (seconds)')" |
    awk '{printf "%.1f+%.1f", $1, $2}'
}
# Seconds from $t0 to stamp $1, or "-".
since() { if [ -n "$1" ]; then echo "$1 $t0" | awk '{printf "%.2f", $1 - $2}'; else echo -; fi; }

# Waits for the sender and the recipient (up to $1 seconds); records exit stamps.
wait_exits() {
  local deadline=$((SECONDS + $1))
  send_exit= recv_exit=
  while [ -z "$send_exit" ] || [ -z "$recv_exit" ]; do
    if [ -z "$send_exit" ] && ! kill -0 "$send_tpid" 2>/dev/null; then send_exit=$EPOCHREALTIME; fi
    if [ -z "$recv_exit" ] && ! kill -0 "$recv_tpid" 2>/dev/null; then recv_exit=$EPOCHREALTIME; fi
    if [ "$SECONDS" -gt "$deadline" ]; then
      echo "not finished after $1 s; logs:" >&2
      tail -5 "$work/sender.err" "$work/recipient.err" >&2
      return 1
    fi
    sleep 0.02
  done
  wait "$send_tpid" || { echo "send failed:" >&2; tail -20 "$work/sender.err" >&2; return 1; }
  wait "$recv_tpid" || { echo "receive failed:" >&2; tail -20 "$work/recipient.err" >&2; return 1; }
}

# System seconds to write the input's size of zeros to $1, without fsync.
page_cache_write() {
  /usr/bin/time -f '%S' dd if=/dev/zero of="$1" bs=1M count="$mib" status=none 2>&1 | tail -1
}

# Runs one stage ($1) alone under /usr/bin/time; its wall time goes into stage_secs.
declare -A stage_secs
stage() {
  local name=$1; shift
  sync
  /usr/bin/time -v -o "$work/$name.time" "$@" >/dev/null 2>&1
  stage_secs[$name]=$(time_field "$name" 'Elapsed (wall clock)' |
    awk -F: '{ if (NF == 3) printf "%.2f", $1 * 3600 + $2 * 60 + $3; else printf "%.2f", $1 * 60 + $2 }')
}

# One transfer; $1 is "relay" or "direct". Prints its figures.
transfer() {
  local mode=$1
  rm -rf "$work/S" "$work/R" "$work/RCV" "$work/OUT" "$work"/*.err "$work"/*.time "$work"/*.mem "$work/sockets"
  local sid rid rcv_port snd_port relay_port relay_addr relay_cpid= relay_tpid=
  local common=(--no-mdns --sync-interval 1s)
  sid=$("$relay" id --data-dir "$work/S")
  rid=$("$relay" id --data-dir "$work/RCV")
  rcv_port=$(free_port)
  snd_port=$(free_port)
  export CHAPAR_LOG=info NO_COLOR=1
  local send_peers recv_peers
  if [ "$mode" = relay ]; then
    relay_port=$(free_port)
    relay_addr="/ip4/127.0.0.1/tcp/$relay_port/p2p/$("$relay" id --data-dir "$work/R")"
    run_as relay "$relay" --data-dir "$work/R" --listen "/ip4/127.0.0.1/tcp/$relay_port" "${common[@]}"
    relay_cpid=$cpid
    relay_tpid=$tpid
    wait_for "$work/relay.err" 'listening' 30 >/dev/null
    send_peers=(--peer "$relay_addr")
    recv_peers=(--peer "$relay_addr")
  else
    send_peers=(--peer "/ip4/127.0.0.1/tcp/$rcv_port/p2p/$rid")
    recv_peers=(--peer "/ip4/127.0.0.1/tcp/$snd_port/p2p/$sid")
  fi
  run_as recipient "$chapar" receive -v -i "$work/key.txt" --data-dir "$work/RCV" -o "$work/OUT" \
    --listen "/ip4/127.0.0.1/tcp/$rcv_port" "${recv_peers[@]}" "${common[@]}" --progress json --once
  recv_tpid=$tpid
  local recv_cpid=$cpid
  [ "$mode" = relay ] && wait_for "$work/recipient.err" 'peer connected' 30 >/dev/null
  wait_for "$work/recipient.err" 'listening' 30 >/dev/null
  sync
  sleep 1

  t0=$EPOCHREALTIME
  run_as sender "$chapar" send -v -r "$recipient" --data-dir "$work/S" \
    --listen "/ip4/127.0.0.1/tcp/$snd_port" "${send_peers[@]}" "${common[@]}" \
    --progress json --until delivered "$work/in/evidence.bin"
  send_tpid=$tpid
  local send_cpid=$cpid
  sample_sockets "$send_cpid" "$work/sockets" &
  pids+=($!)
  # The chunk files, counted while the sender still has them (its store
  # frees them once the receipt is back).
  wait_for "$work/sender.err" '"event":"sealed"' $((60 + mib / 10)) >/dev/null
  local bundle_bytes
  bundle_bytes=$(chunk_bytes "$work/S/chunks")
  wait_exits $((600 + mib))
  if [ -n "$relay_cpid" ]; then
    kill "$relay_cpid"
    wait "$relay_tpid" 2>/dev/null || true
  fi
  wait || true # the memory and socket samplers
  pids=()

  local got
  got=$(find "$work/OUT" -type f -name evidence.bin)
  [ -n "$got" ] || { echo "no output file" >&2; exit 1; }
  cmp "$work/in/evidence.bin" "$got" || { echo "the output differs from the input" >&2; exit 1; }

  local sealed whole fetched opened
  sealed=$(when "$work/sender.err" '"event":"sealed"')
  if [ "$mode" = relay ]; then
    whole=$(when "$work/relay.err" 'bundle complete')
  else
    whole=$(when "$work/recipient.err" 'bundle complete')
  fi
  fetched=$(when "$work/recipient.err" 'bundle complete')
  opened=$(when "$work/recipient.err" '"event":"opened"')
  local first_out
  first_out=$(awk '$3 > 1000000 {print $1; exit}' "$work/sockets")
  local up_whole up_all
  up_whole=$(sent_by "$work/sockets" "$whole")
  up_all=$(sent_by "$work/sockets" "")
  local secs rate
  secs=$(since "$opened")
  rate=$(echo "$bytes $secs" | awk '{printf "%.1f", $1 / $2 / 1e6}')

  printf '%s: files verified after %s s: %s MB/s (%.2fx raw TCP, %.2fx libp2p-stream, %.2fx sendme'"'"'s 220 MB/s)\n' \
    "$mode" "$secs" "$rate" "$(echo "$rate $raw_tcp" | awk '{print $1 / $2}')" \
    "$(echo "$rate $raw_p2p" | awk '{print $1 / $2}')" "$(echo "$rate" | awk '{print $1 / 220}')"
  printf '  from the start of send: sealed %s s, first MB out %s s, %s whole %s s, recipient fetched %s s, opened %s s; exits: sender %s s, recipient %s s\n' \
    "$(since "$sealed")" "$(since "$first_out")" "$([ "$mode" = relay ] && echo relay || echo recipient)" \
    "$(since "$whole")" "$(since "$fetched")" "$(since "$opened")" "$(since "$send_exit")" "$(since "$recv_exit")"
  printf '  peak RSS: sender %s MiB (%s), ' "$(peak_mib sender)" "$(mem_split sender)"
  [ "$mode" = relay ] && printf 'relay %s MiB (%s), ' "$(peak_mib relay)" "$(mem_split relay)"
  printf 'recipient %s MiB (%s)\n' "$(peak_mib recipient)" "$(mem_split recipient)"
  printf '  CPU (user+sys): sender %s s, ' "$(cpu_s sender)"
  [ "$mode" = relay ] && printf 'relay %s s, ' "$(cpu_s relay)"
  printf 'recipient %s s\n' "$(cpu_s recipient)"
  printf '  sender uplink: %s bytes until the %s held it whole = %.3fx the %s bytes of chunk files; %s bytes in all (%.3fx)\n' \
    "$up_whole" "$([ "$mode" = relay ] && echo relay || echo recipient)" \
    "$(echo "$up_whole $bundle_bytes" | awk '{print $1 / $2}')" "$bundle_bytes" \
    "$up_all" "$(echo "$up_all $bundle_bytes" | awk '{print $1 / $2}')"
  rm -rf "$work/S" "$work/R" "$work/RCV" "$work/OUT"
}

for mib in "${sizes[@]}"; do
  bytes=$((mib * 1048576))
  rm -rf "$work/in"
  mkdir "$work/in"
  head -c "$bytes" /dev/urandom >"$work/in/evidence.bin"
  echo "== $mib MiB ($bytes bytes of random input); $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"

  sync
  dd_out=$(dd if=/dev/zero of="$work/dd" bs=1M count="$mib" conv=fsync 2>&1 | tail -1)
  rm -f "$work/dd"
  disk=$(echo "$dd_out" | awk -v b="$bytes" '{for (i = 1; i <= NF; i++) if ($i == "s,") print b / $(i - 1) / 1e6}')

  rm -f "$work/raw.port" "$work/serve.out"
  python3 "$work/rawtcp.py" serve >"$work/raw.port" &
  pids+=($!)
  raw_pid=$!
  port=$(wait_for "$work/raw.port" '^[0-9]' 10)
  tcps=()
  for _ in 1 2 3; do tcps+=("$(python3 "$work/rawtcp.py" send "$port" "$work/in/evidence.bin" | awk '{print $3}')"); done
  kill "$raw_pid"
  wait "$raw_pid" 2>/dev/null || true

  "$baseline" serve >"$work/serve.out" 2>&1 &
  pids+=($!)
  p2p_pid=$!
  addr_s=$(wait_for "$work/serve.out" '^listening' 30 | awk '{print $2}')
  p2ps=()
  for _ in 1 2 3; do p2ps+=("$("$baseline" send "$addr_s" "$bytes" | awk '{print $7}')"); done
  kill "$p2p_pid"
  wait "$p2p_pid" 2>/dev/null || true
  pids=()
  raw_tcp=$(median3 "${tcps[@]}")
  raw_p2p=$(median3 "${p2ps[@]}")
  printf 'baselines: raw TCP (python3 sendfile -> recv), 3 runs: %s MB/s, median %s\n' "${tcps[*]}" "$raw_tcp"
  printf '           raw libp2p-stream (TCP+Noise+Yamux), 3 runs: %s MB/s, median %s\n' "${p2ps[*]}" "$raw_p2p"
  printf '           disk: dd %s MiB conv=fsync: %.1f MB/s\n' "$mib" "$disk"
  # What the page cache costs here: the same bytes written (no fsync) into
  # memory the kernel has not handed out for a while, then again into the
  # pages the first file's removal just freed. On a VM whose balloon
  # reports free pages to the host, the first costs several times more
  # system time (each fresh page faults on the host).
  sleep 3
  pc_cold=$(page_cache_write "$work/pc")
  rm -f "$work/pc"
  pc_warm=$(page_cache_write "$work/pc")
  rm -f "$work/pc"
  printf '           page cache: write %s MiB without fsync: %s s of system time into long-free memory, %s s into just-freed memory\n' \
    "$mib" "$pc_cold" "$pc_warm"

  # The stages alone, one process at a time: what `send` does before its
  # node starts (seal into a folder, import it into the store) and what
  # `receive` does once it holds every chunk (open).
  stage seal "$chapar" seal -r "$recipient" -o "$work/bundle" "$work/in/evidence.bin"
  stage import "$chapar" import --data-dir "$work/I" --role sealed "$work/bundle"
  rm -rf "$work/I"
  stage open "$chapar" open -i "$work/key.txt" -o "$work/opened" "$work/bundle"
  folder_bytes=$(chunk_bytes "$work/bundle")
  rm -rf "$work/bundle" "$work/opened"
  printf 'stages alone: seal %s s, import %s s (seal + import %.2f s), open %s s\n' \
    "${stage_secs[seal]}" "${stage_secs[import]}" \
    "$(echo "${stage_secs[seal]} ${stage_secs[import]}" | awk '{print $1 + $2}')" "${stage_secs[open]}"
  printf '              peak RSS: seal %s MiB, import %s MiB, open %s MiB\n' \
    "$(peak_mib seal)" "$(peak_mib import)" "$(peak_mib open)"
  # A lower bound for this design on this machine, from the figures
  # above: no chunk can leave before sealing ends (the descriptor, which
  # goes first, lists every chunk), and every byte of the sealed bundle
  # (payload, parity, index) crosses at least one libp2p connection,
  # which carries no more than raw libp2p-stream. Opening is left out, as
  # if it overlapped the transfer completely.
  printf 'floor: seal alone %s s + %s bytes of chunk files at raw libp2p-stream %.2f s = %.2f s (%.1f MB/s, %.2fx sendme); 1.5x sendme is %.2f s\n' \
    "${stage_secs[seal]}" "$folder_bytes" \
    "$(echo "$folder_bytes $raw_p2p" | awk '{print $1 / $2 / 1e6}')" \
    "$(echo "${stage_secs[seal]} $folder_bytes $raw_p2p" | awk '{print $1 + $2 / $3 / 1e6}')" \
    "$(echo "${stage_secs[seal]} $folder_bytes $raw_p2p $bytes" | awk '{print $4 / ($1 + $2 / $3 / 1e6) / 1e6}')" \
    "$(echo "${stage_secs[seal]} $folder_bytes $raw_p2p $bytes" | awk '{print $4 / ($1 + $2 / $3 / 1e6) / 1e6 / 220}')" \
    "$(echo "$bytes" | awk '{print $1 / 330e6}')"

  transfer relay
  transfer direct
  echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
done
