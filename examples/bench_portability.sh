#!/usr/bin/env bash
# Backup and import-distribution figures (issue 11) by hand; the same measurements are workload 8
# of examples/bench (`--only portability`), which is what to run:
#   1. import-distribution of an N-repository Distribution store, against `skopeo sync` of the
#      same store (served by Debian's docker-registry) into a running Dockyard;
#   2. backup of the resulting root (plus a 512 MiB image) to the same filesystem and to
#      /dev/shm (the copy path), against `cp -a` of the same root.
# Usage: examples/bench_portability.sh [DOCKYARD_BIN] [REPOS]   (needs docker-registry, skopeo)
set -euo pipefail
BIN=${1:-target/release/dockyard}
N=${2:-1000}
W=$(mktemp -d /tmp/dockyard-bench-portability.XXXX)
SHM=$(mktemp -d /dev/shm/dockyard-bench-portability.XXXX)
HERE=$(cd "$(dirname "$0")" && pwd)
trap 'kill $REG $SRV 2>/dev/null || true; rm -rf "$W" "$SHM"' EXIT
secs() { local s e; s=$(date +%s.%N); "$@" > "$W/last.out" 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc; }

python3 "$HERE/bench_portability_gen.py" "$W/dist" "$N" 16
echo "store: $N repositories, $(du -sh "$W/dist" | cut -f1)"
sync
t=$(secs "$BIN" import-distribution "$W/dist" --root "$W/imported")
echo "import-distribution: ${t}s  ($(head -1 "$W/last.out"))"

cat > "$W/reg.yml" <<YML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $W/dist}}
http: {addr: 127.0.0.1:5071}
YML
docker-registry serve "$W/reg.yml" > "$W/reg.log" 2>&1 & REG=$!
"$BIN" serve --root "$W/synced" --listen 127.0.0.1:5072 > "$W/srv.log" 2>&1 & SRV=$!
sleep 2
{ echo "127.0.0.1:5071:"; echo "  tls-verify: false"; echo "  images:";
  for i in $(seq 0 $((N - 1))); do printf '    bench/r%04d: [latest]\n' "$i"; done; } > "$W/src.yaml"
t2=$(secs skopeo sync --src yaml --dest docker --dest-tls-verify=false --preserve-digests "$W/src.yaml" 127.0.0.1:5072/)
echo "skopeo sync: ${t2}s; ratio $(echo "scale=1; $t2 / $t" | bc)x"
kill $REG $SRV; wait $REG $SRV 2>/dev/null || true

root="$W/imported"
python3 - "$W/big" <<'PY'
import hashlib, json, os, sys
d = sys.argv[1]; b = os.path.join(d, "blobs/sha256"); os.makedirs(b)
def put(data):
    h = hashlib.sha256(data).hexdigest(); open(os.path.join(b, h), "wb").write(data); return h, len(data)
ls = [put(os.urandom(256 << 20)) for _ in range(2)]
c = put(b'{"os":"linux","architecture":"amd64"}')
m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + c[0], "size": c[1]},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + h, "size": n} for h, n in ls]}).encode()
mh, mn = put(m)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": "sha256:" + mh, "size": mn, "annotations": {"org.opencontainers.image.ref.name": "v1"}}]},
    open(os.path.join(d, "index.json"), "w"))
open(os.path.join(d, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
PY
"$BIN" import "$W/big" --repo big/image --root "$root" > /dev/null
bytes=$(du -sb "$root" | cut -f1); mb=$(echo "scale=1; $bytes / 1000000" | bc)
sync
for dest in "$W/backup" "$SHM/backup"; do
  t=$(secs "$BIN" backup "$dest" --root "$root")
  echo "backup to $dest: ${t}s, $(echo "scale=0; $mb / $t" | bc) MB/s  ($(head -1 "$W/last.out"))"
done
t=$(secs sh -c "cp -a '$root' '$W/cp' && sync -f '$W/cp'")
echo "cp -a, same filesystem (+ sync): ${t}s, $(echo "scale=0; $mb / $t" | bc) MB/s"
t=$(secs cp -a "$root" "$SHM/cp")
echo "cp -a to /dev/shm: ${t}s, $(echo "scale=0; $mb / $t" | bc) MB/s"
t=$(secs "$BIN" backup "$SHM/backup" --root "$root")
echo "incremental backup, nothing new: ${t}s"
