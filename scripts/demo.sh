#!/usr/bin/env bash
# The offline path, end to end, on a local default: make a recipient key,
# seal a sample evidence folder, lose some chunks, open it anyway, and open
# it again with stock `age` and `tar` as a recipient without Chapar would.
# Usage: scripts/demo.sh [WORK_DIR]   (default: a fresh temporary folder)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d -t chapar-demo.XXXXXX)}
mkdir -p "$work"
cd "$here"
echo "==> building chapar"
cargo build --quiet --bin chapar
chapar="$here/target/debug/chapar"
cd "$work"

step() { printf '\n==> %s\n' "$*"; }

step "the recipient (a journalist abroad) makes a key; only the public half is shared"
recipient=$("$chapar" keygen -o journalist-key.txt)
echo "recipient: $recipient"

step "sample evidence on the nurse's laptop"
mkdir -p evidence/ct-scans evidence/records
head -c 3000000 /dev/urandom > evidence/ct-scans/patient-017.dcm
head -c 1200000 /dev/urandom > evidence/ct-scans/patient-018.dcm
printf 'Ward 4, night of 14 Nov: 9 gunshot admissions.\n' > evidence/records/admissions.txt
find evidence -type f -exec ls -l {} \; | awk '{print $5, $9}'

step "seal it for the journalist (64 KiB chunks so the demo has many)"
bundle_id=$("$chapar" seal -r "$recipient" --note "CT scans, ward 4" --chunk-size 64KiB -o bundle evidence)
echo "bundle id: $bundle_id"
echo "bundle folder holds $(find bundle/chunks -type f | wc -l) chunk files and a descriptor; none is readable:"
"$chapar" inspect bundle

step "two chunks are lost on the way (a relay vanished); parity covers it"
# awk, not head: head exits early, and under pipefail sort's SIGPIPE fails the script.
find bundle/chunks -type f -size +60k | sort | awk 'NR <= 2' | xargs rm -v

step "the journalist opens the bundle: every chunk verified, the lost ones rebuilt"
"$chapar" open -i journalist-key.txt -o opened bundle
diff -r evidence opened/evidence && echo "opened files are identical to the originals"

step "if Chapar were gone: rebuild the age file, then stock tools"
"$chapar" reassemble bundle -o bundle.age
if command -v age >/dev/null && command -v b3sum >/dev/null; then
  mkdir stock && age -d -i journalist-key.txt bundle.age | tar -x -C stock
  (cd stock && sha256sum -c chapar-manifest.sha256)
  echo "b3sum bundle.age: $(b3sum --no-names bundle.age)"
else
  echo "(install age and b3sum to see the stock-tools step: apt-get install age b3sum)"
fi

step "a relay takes the bundle in from the USB stick (sneakernet) and holds only ciphertext"
"$chapar" import --data-dir relay-store bundle
"$chapar" status --data-dir relay-store
"$chapar" export --data-dir relay-store "$bundle_id" -o second-stick
"$chapar" fsck --data-dir relay-store

printf '\nDemo finished; everything is in %s\n' "$work"
