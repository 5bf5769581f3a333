#!/usr/bin/env bash
# A three-node Garage cluster on loopback, for the S3 backend's tests and benchmark.
#
#   .ci/garage.sh start          install Garage if missing, start three nodes (replication
#                                factor 3), connect them, apply a layout, create a bucket and a
#                                key; write the DOCKYARD_S3_* variables to $DIR/env and print
#                                that path as the LAST line. Idempotent: a running cluster
#                                answers with the same env file.
#   .ci/garage.sh stop           stop the nodes this script started (by PID; keeps the data)
#   .ci/garage.sh kill-node N    SIGKILL node N (1..3), for the fault tests
#   .ci/garage.sh start-node N   start node N again (its data and identity are kept)
#   .ci/garage.sh status         which nodes run, and `garage status`
#   .ci/garage.sh env            print the path of the env file of a running cluster
#   .ci/garage.sh clean          stop, then delete $DIR (all objects)
#
# The env file holds DOCKYARD_S3_ENDPOINT (node 1's S3 API), DOCKYARD_S3_REGION (Garage's
# s3_region), DOCKYARD_S3_BUCKET, DOCKYARD_S3_ACCESS_KEY_ID and DOCKYARD_S3_SECRET_ACCESS_KEY,
# as `export` lines; the tests read it (tests/util.rs `require_s3`).
#
# Env knobs:
#   DOCKYARD_GARAGE_DIR        state dir (data, metadata, configs, logs, pids) (/tmp/dockyard-garage)
#   DOCKYARD_GARAGE_PORT       base port: node N uses BASE+10N (S3), +1 (RPC), +3 (admin)   (39000)
#   DOCKYARD_GARAGE_TIMEOUT    seconds to wait for each step (60)
#   GARAGE_BIN                 the garage binary (garage on PATH, else ~/.cargo/bin/garage)
set -euo pipefail

DIR="$(realpath -m "${DOCKYARD_GARAGE_DIR:-/tmp/dockyard-garage}")"
[[ "$DIR" != / ]] || { echo "garage.sh: refusing DOCKYARD_GARAGE_DIR=/" >&2; exit 2; }
BASE="${DOCKYARD_GARAGE_PORT:-39000}"
TIMEOUT="${DOCKYARD_GARAGE_TIMEOUT:-60}"
ENV_FILE="$DIR/env"
REGION="garage"
BUCKET="dockyard"
KEY_NAME="dockyard-tests"
NODES=(1 2 3)
# The one build the project uses: LMDB metadata, bundled libraries, nothing else (no Consul,
# Kubernetes, telemetry or SQLite), so that a machine compiles it once, in about 9 minutes on
# 2 cores (.ci/CLIENTS.md).
GARAGE_VERSION="2.5.0"
GARAGE_FEATURES="bundled-libs,lmdb"

log() { printf 'garage.sh: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

s3_port() { echo $((BASE + 10 * $1)); }
rpc_port() { echo $((BASE + 10 * $1 + 1)); }
admin_port() { echo $((BASE + 10 * $1 + 3)); }
cfg() { echo "$DIR/node$1/garage.toml"; }
pidfile() { echo "$DIR/node$1.pid"; }
logfile() { echo "$DIR/node$1.log"; }

find_garage() {
    if [[ -n "${GARAGE_BIN:-}" ]]; then echo "$GARAGE_BIN"; return 0; fi
    if command -v garage >/dev/null 2>&1; then command -v garage; return 0; fi
    if [[ -x "$HOME/.cargo/bin/garage" ]]; then echo "$HOME/.cargo/bin/garage"; return 0; fi
    return 1
}

# A `cargo install garage` already running (another shell, a previous CI step): wait for it
# rather than compile the same crate twice on the same two cores.
install_in_progress() {
    local p cmd
    for p in /proc/[0-9]*; do
        cmd="$( { tr '\0' ' ' < "$p/cmdline"; } 2>/dev/null || true)"
        [[ "$cmd" == *"cargo install garage"* || "$cmd" == *"cargo-install garage"* ]] && return 0
    done
    return 1
}

ensure_garage() {
    if GARAGE="$(find_garage)"; then return 0; fi
    if install_in_progress; then
        log "a 'cargo install garage' is running: waiting for it"
        while install_in_progress; do sleep 5; done
        GARAGE="$(find_garage)" && return 0
        log "that install ended without a binary: installing"
    fi
    command -v cargo >/dev/null || die "cargo not found: cannot install Garage"
    log "installing garage $GARAGE_VERSION into ~/.cargo/bin (once per machine; ~9 min on 2 cores)"
    cargo install garage --version "$GARAGE_VERSION" --locked --no-default-features \
        --features "$GARAGE_FEATURES" >&2
    GARAGE="$(find_garage)" || die "cargo install garage finished but no garage binary was found"
}

# pid_of N: the pid of our node N: a live process whose command line names our config file
# (so a recycled pid is never taken for ours).
pid_of() {
    local file pid cmd
    file="$(pidfile "$1")"
    [[ -s "$file" ]] || return 1
    pid="$(tr -dc '0-9' < "$file")"
    [[ -n "$pid" ]] || return 1
    cmd="$( { tr '\0' ' ' < "/proc/$pid/cmdline"; } 2>/dev/null || true)"
    [[ "$cmd" == *" -c $(cfg "$1") server"* ]] || return 1
    echo "$pid"
}

g() { # g N ARGS...: the garage CLI against node N (over RPC, with that node's config)
    local n="$1"; shift
    "$GARAGE" -c "$(cfg "$n")" "$@"
}

write_config() {
    local n="$1" secret="$2" d="$DIR/node$1"
    mkdir -p "$d/meta" "$d/data"
    cat > "$(cfg "$n")" <<EOF
# Written by .ci/garage.sh: node $n of a three-node loopback cluster.
metadata_dir = "$d/meta"
data_dir = "$d/data"
db_engine = "lmdb"
replication_factor = 3
consistency_mode = "consistent"
# Registry blobs are compressed layers (the benchmark's are random bytes): zstd would spend
# CPU on every block for nothing, as README advises for a registry's bucket.
compression_level = "none"

rpc_bind_addr = "127.0.0.1:$(rpc_port "$n")"
rpc_public_addr = "127.0.0.1:$(rpc_port "$n")"
rpc_secret = "$secret"

[s3_api]
s3_region = "$REGION"
api_bind_addr = "127.0.0.1:$(s3_port "$n")"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$(admin_port "$n")"
EOF
    chmod 600 "$(cfg "$n")"
}

# wait_until DESCRIPTION NODE COMMAND...: retry COMMAND until it succeeds, failing with the
# node's log when the node dies or the timeout passes.
wait_until() {
    local what="$1" n="$2" deadline; shift 2
    deadline=$(( $(date +%s) + TIMEOUT ))
    until "$@" >/dev/null 2>&1; do
        if [[ "$n" != 0 ]] && ! pid_of "$n" >/dev/null; then
            log "node $n exited while waiting for: $what"; tail -n 30 "$(logfile "$n")" >&2 || true
            exit 1
        fi
        if (( $(date +%s) >= deadline )); then
            log "timed out after ${TIMEOUT}s waiting for: $what"
            [[ "$n" != 0 ]] && { tail -n 30 "$(logfile "$n")" >&2 || true; }
            exit 1
        fi
        sleep 0.3
    done
}

start_node() {
    local n="$1" pid
    if pid="$(pid_of "$n")"; then log "node $n already running (pid $pid)"; return 0; fi
    [[ -f "$(cfg "$n")" ]] || die "node $n has no config: run '$0 start' first"
    [[ -s "$(logfile "$n")" ]] && mv -f "$(logfile "$n")" "$(logfile "$n").1"
    setsid env RUST_LOG="${GARAGE_LOG:-warn}" "$GARAGE" -c "$(cfg "$n")" server \
        </dev/null >>"$(logfile "$n")" 2>&1 &
    echo $! > "$(pidfile "$n")"
    wait_until "node $n to answer RPC" "$n" g "$n" node id -q
    log "node $n up (pid $(cat "$(pidfile "$n")")), S3 on 127.0.0.1:$(s3_port "$n")"
}

healthy_nodes() { g 1 status 2>/dev/null | awk '/HEALTHY NODES/{h=1;next} /====/{h=0} h && /127\.0\.0\.1/' | wc -l; }
all_healthy() { [[ "$(healthy_nodes)" -ge 3 ]]; }
# The S3 API answers once the layout is live: an anonymous request gets an S3 error (403),
# not a refused connection or a 503.
s3_answers() {
    local code
    code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$(s3_port 1)/$BUCKET")"
    [[ "$code" == 403 || "$code" == 200 ]]
}

layout_applied() { g 1 layout show 2>/dev/null | grep -q "Current cluster layout version: [1-9]"; }

write_env() {
    local info id secret
    info="$(g 1 key info --show-secret "$KEY_NAME")"
    id="$(awk -F': *' '/^Key ID/{print $2; exit}' <<<"$info" | tr -d ' ')"
    secret="$(awk -F': *' '/^Secret key/{print $2; exit}' <<<"$info" | tr -d ' ')"
    [[ -n "$id" && -n "$secret" ]] || die "could not read the key from 'garage key info':"$'\n'"$info"
    umask 077
    cat > "$ENV_FILE.tmp" <<EOF
export DOCKYARD_S3_ENDPOINT=http://127.0.0.1:$(s3_port 1)
export DOCKYARD_S3_REGION=$REGION
export DOCKYARD_S3_BUCKET=$BUCKET
export DOCKYARD_S3_ACCESS_KEY_ID=$id
export DOCKYARD_S3_SECRET_ACCESS_KEY=$secret
EOF
    mv -f "$ENV_FILE.tmp" "$ENV_FILE"
}

do_start() {
    local t0 n secret ids
    t0=$(date +%s.%N)
    ensure_garage
    command -v curl >/dev/null || die "curl not found (apt-get install -y curl)"
    mkdir -p "$DIR"; chmod 700 "$DIR"
    if [[ ! -f "$DIR/rpc_secret" ]]; then
        head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DIR/rpc_secret"
        chmod 600 "$DIR/rpc_secret"
    fi
    secret="$(cat "$DIR/rpc_secret")"
    for n in "${NODES[@]}"; do
        [[ -f "$(cfg "$n")" ]] || write_config "$n" "$secret"
        start_node "$n"
    done
    # Nodes 2 and 3 learn of each other through node 1; peers are remembered across restarts.
    if ! all_healthy; then
        for n in 2 3; do
            g 1 node connect "$(g "$n" node id -q)" >/dev/null
        done
        wait_until "three healthy nodes" 0 all_healthy
    fi
    if ! layout_applied; then
        for n in "${NODES[@]}"; do
            g 1 layout assign -z "zone$n" -c 10G "$(g "$n" node id -q | cut -d@ -f1)" >/dev/null
        done
        g 1 layout apply --version 1 >/dev/null
        log "layout applied: three zones, 10G each, replication factor 3"
    fi
    wait_until "the layout to be live on node 1" 0 layout_applied
    if ! g 1 bucket info "$BUCKET" >/dev/null 2>&1; then
        g 1 bucket create "$BUCKET" >/dev/null
    fi
    if ! g 1 key info "$KEY_NAME" >/dev/null 2>&1; then
        g 1 key create "$KEY_NAME" >/dev/null
    fi
    g 1 bucket allow --read --write --owner "$BUCKET" --key "$KEY_NAME" >/dev/null
    wait_until "the S3 API on 127.0.0.1:$(s3_port 1)" 1 s3_answers
    write_env
    log "ready in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')s"
    echo "$ENV_FILE"
}

stop_node() {
    local n="$1" sig="${2:-TERM}" pid deadline
    if ! pid="$(pid_of "$n")"; then rm -f "$(pidfile "$n")"; return 0; fi
    log "stopping node $n (pid $pid, SIG$sig)"
    kill -"$sig" "$pid" 2>/dev/null || true
    deadline=$(( $(date +%s) + 20 ))
    while kill -0 "$pid" 2>/dev/null; do
        if (( $(date +%s) >= deadline )); then kill -KILL "$pid" 2>/dev/null || true; sleep 0.3; break; fi
        sleep 0.1
    done
    rm -f "$(pidfile "$n")"
}

do_stop() {
    local n
    for n in "${NODES[@]}"; do stop_node "$n"; done
    rm -f "$ENV_FILE"
    log "stopped"
}

node_arg() {
    [[ "${1:-}" =~ ^[123]$ ]] || die "node number 1, 2 or 3 expected, got '${1:-}'"
}

case "${1:-}" in
    start) do_start ;;
    stop) do_stop ;;
    kill-node) node_arg "${2:-}"; stop_node "$2" KILL ;;
    start-node)
        node_arg "${2:-}"; GARAGE="$(find_garage)" || die "garage is not installed"
        start_node "$2"
        wait_until "three healthy nodes" 0 all_healthy ;;
    status)
        for n in "${NODES[@]}"; do
            if pid="$(pid_of "$n")"; then echo "node $n: pid $pid"; else echo "node $n: not running"; fi
        done
        GARAGE="$(find_garage)" && g 1 status || true ;;
    env) [[ -f "$ENV_FILE" ]] || die "not started ($ENV_FILE missing)"; echo "$ENV_FILE" ;;
    clean) do_stop; rm -rf --one-file-system "$DIR" ;;
    *) echo "usage: $0 start|stop|kill-node N|start-node N|status|env|clean" >&2; exit 2 ;;
esac
