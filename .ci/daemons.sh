#!/usr/bin/env bash
# Start/stop a private containerd + dockerd for Dockyard's client tests.
#
#   .ci/daemons.sh start    start containerd, then dockerd; print export lines
#   .ci/daemons.sh stop     stop them (by PID only), unmount leftovers under $DIR
#   .ci/daemons.sh status   show what is running
#   .ci/daemons.sh env      print the export lines of a running set
#   .ci/daemons.sh clean    stop, then delete $DIR (images, logs, everything)
#
# No systemd, no iptables, no bridge, no network beyond loopback. Everything
# (roots, state, sockets, logs, pid files) lives under $DOCKYARD_DAEMONS_DIR
# (default /tmp/dockyard-daemons). After `start`, `source "$DIR/env"` gives
# DOCKER_HOST, CONTAINERD_ADDRESS, CONTAINERD_NAMESPACE and DOCKER_CONFIG.
#
# Env knobs:
#   DOCKYARD_DAEMONS_DIR       base dir                     (/tmp/dockyard-daemons)
#   DOCKYARD_DAEMONS_TIMEOUT   seconds to wait for each daemon to answer (60)
#   DOCKYARD_STOP_TIMEOUT      seconds between TERM and KILL on stop (30)
#   DOCKYARD_DOCKER_STORAGE    dockerd storage driver (overlay2; vfs also works)
#   DOCKYARD_CTR_NAMESPACE     namespace exported for ctr (dockyard)
set -euo pipefail

DIR="$(realpath -m "${DOCKYARD_DAEMONS_DIR:-/tmp/dockyard-daemons}")"
[[ "$DIR" != / ]] || { echo "daemons.sh: refusing DOCKYARD_DAEMONS_DIR=/" >&2; exit 2; }
TIMEOUT="${DOCKYARD_DAEMONS_TIMEOUT:-60}"
STOP_TIMEOUT="${DOCKYARD_STOP_TIMEOUT:-30}"
STORAGE="${DOCKYARD_DOCKER_STORAGE:-overlay2}"
CTR_NS="${DOCKYARD_CTR_NAMESPACE:-dockyard}"

CTD_DIR="$DIR/containerd"
CTD_SOCK="$CTD_DIR/containerd.sock"
CTD_PIDFILE="$DIR/containerd.pid"
CTD_LOG="$DIR/containerd.log"
DKR_DIR="$DIR/docker"
DKR_SOCK="$DIR/docker.sock"
DKR_PIDFILE="$DIR/dockerd.pid"          # written by this script
DKR_OWN_PIDFILE="$DKR_DIR/dockerd.pid"  # dockerd's own --pidfile
DKR_LOG="$DIR/dockerd.log"
ENV_FILE="$DIR/env"

# Debian's binaries by absolute path: /usr/local/bin may hold another docker CLI.
CONTAINERD_BIN="${CONTAINERD_BIN:-/usr/bin/containerd}"
CTR_BIN="${CTR_BIN:-/usr/bin/ctr}"
DOCKERD_BIN="${DOCKERD_BIN:-/usr/sbin/dockerd}"
DOCKER_BIN="${DOCKER_BIN:-$(command -v docker || echo /usr/bin/docker)}"

log() { printf 'daemons.sh: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# pid_of NAME PIDFILE -> prints the pid of our NAME daemon: a live process
# whose command line carries our own config file for NAME (so a recycled pid or
# a foreign daemon is never mistaken for ours). Tries PIDFILE first, then scans
# /proc for that marker (and rewrites PIDFILE) in case the file is stale/lost.
pid_of() {
    local name="$1" file="$2" pid="" p marker
    case "$name" in
        containerd) marker="--config $CTD_DIR/config.toml" ;;
        dockerd)    marker="--config-file $DKR_DIR/daemon.json" ;;
        *) return 1 ;;
    esac
    [[ -s "$file" ]] && pid="$(tr -dc '0-9' < "$file")"
    if [[ -n "$pid" ]] && cmdline_has "$pid" "$marker"; then echo "$pid"; return 0; fi
    for p in /proc/[0-9]*; do
        p="${p#/proc/}"
        if cmdline_has "$p" "$marker"; then echo "$p" > "$file"; echo "$p"; return 0; fi
    done
    return 1
}

# cmdline_has PID STRING: does the (space-joined) command line contain STRING
# as a whole argument sequence?
cmdline_has() {
    local cmd
    cmd="$( { tr '\0' ' ' < "/proc/$1/cmdline"; } 2>/dev/null || true)"
    [[ -n "$cmd" && "$cmd" == *" $2 "* ]]
}

ctd_up() { "$CTR_BIN" --address "$CTD_SOCK" --timeout 2s version >/dev/null 2>&1; }
dkr_up() {
    DOCKER_CONFIG="$DIR/docker-client" timeout 5 "$DOCKER_BIN" -H "unix://$DKR_SOCK" info >/dev/null 2>&1
}

print_env() {
    cat <<EOF
export DOCKER_HOST=unix://$DKR_SOCK
export CONTAINERD_ADDRESS=$CTD_SOCK
export CONTAINERD_NAMESPACE=$CTR_NS
export DOCKER_CONFIG=$DIR/docker-client
EOF
}

fail_with_log() { # NAME LOGFILE MESSAGE
    log "ERROR: $3"
    log "---- last 40 lines of $2 ----"
    tail -n 40 "$2" >&2 2>/dev/null || true
    log "---- end of $1 log ----"
    do_stop || true
    exit 1
}

# wait_for NAME PIDFILE LOGFILE CHECKFN
wait_for() {
    local name="$1" pidfile="$2" logf="$3" check="$4" deadline
    deadline=$(( $(date +%s) + TIMEOUT ))
    while :; do
        if "$check"; then return 0; fi
        pid_of "$name" "$pidfile" >/dev/null || fail_with_log "$name" "$logf" "$name exited during start-up"
        (( $(date +%s) < deadline )) || fail_with_log "$name" "$logf" "$name did not answer within ${TIMEOUT}s"
        sleep 0.3
    done
}

write_containerd_config() {
    mkdir -p "$CTD_DIR/root" "$CTD_DIR/state" "$CTD_DIR/opt"
    cat > "$CTD_DIR/config.toml" <<EOF
version = 2
root = "$CTD_DIR/root"
state = "$CTD_DIR/state"
# No Kubernetes CRI (it wants CNI, /opt/cni, etc.) and no exotic snapshotters.
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "$CTD_SOCK"

[ttrpc]
  address = "$CTD_SOCK.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$CTD_DIR/opt"
EOF
}

write_docker_config() {
    mkdir -p "$DKR_DIR/root" "$DKR_DIR/exec" "$DIR/docker-client"
    [[ -f "$DIR/docker-client/config.json" ]] || echo '{}' > "$DIR/docker-client/config.json"
    cat > "$DKR_DIR/daemon.json" <<EOF
{
  "bridge": "none",
  "iptables": false,
  "ip6tables": false,
  "ip-forward": false,
  "ip-masq": false,
  "ipv6": false,
  "userland-proxy": false,
  "storage-driver": "$STORAGE",
  "exec-opts": ["native.cgroupdriver=cgroupfs"],
  "live-restore": false,
  "shutdown-timeout": 3,
  "log-level": "info",
  "log-driver": "json-file",
  "insecure-registries": ["127.0.0.0/8"],
  "features": { "buildkit": false }
}
EOF
}

start_containerd() {
    local pid
    if pid="$(pid_of containerd "$CTD_PIDFILE")"; then
        if ctd_up; then log "containerd already running (pid $pid)"; return 0; fi
        log "containerd pid $pid alive but not answering; waiting"
        wait_for containerd "$CTD_PIDFILE" "$CTD_LOG" ctd_up
        return 0
    fi
    rm -f "$CTD_PIDFILE" "$CTD_SOCK" "$CTD_SOCK.ttrpc"
    write_containerd_config
    [[ -s "$CTD_LOG" ]] && mv -f "$CTD_LOG" "$CTD_LOG.1"; : > "$CTD_LOG"
    setsid "$CONTAINERD_BIN" --config "$CTD_DIR/config.toml" \
        </dev/null >>"$CTD_LOG" 2>&1 &
    echo $! > "$CTD_PIDFILE"
    wait_for containerd "$CTD_PIDFILE" "$CTD_LOG" ctd_up
    log "containerd up (pid $(cat "$CTD_PIDFILE")), socket $CTD_SOCK"
}

start_dockerd() {
    local pid
    if pid="$(pid_of dockerd "$DKR_PIDFILE")"; then
        if dkr_up; then log "dockerd already running (pid $pid)"; return 0; fi
        log "dockerd pid $pid alive but not answering; waiting"
        wait_for dockerd "$DKR_PIDFILE" "$DKR_LOG" dkr_up
        return 0
    fi
    rm -f "$DKR_PIDFILE" "$DKR_OWN_PIDFILE" "$DKR_SOCK"
    write_docker_config
    [[ -s "$DKR_LOG" ]] && mv -f "$DKR_LOG" "$DKR_LOG.1"; : > "$DKR_LOG"
    # env -u: don't let an inherited DOCKER_HOST/DOCKER_CONFIG leak in.
    setsid env -u DOCKER_HOST -u DOCKER_CONFIG -u DOCKER_TLS_VERIFY -u DOCKER_CERT_PATH \
        "$DOCKERD_BIN" \
        --config-file "$DKR_DIR/daemon.json" \
        --data-root "$DKR_DIR/root" \
        --exec-root "$DKR_DIR/exec" \
        --pidfile "$DKR_OWN_PIDFILE" \
        -H "unix://$DKR_SOCK" \
        --containerd "$CTD_SOCK" \
        </dev/null >>"$DKR_LOG" 2>&1 &
    echo $! > "$DKR_PIDFILE"
    wait_for dockerd "$DKR_PIDFILE" "$DKR_LOG" dkr_up
    log "dockerd up (pid $(cat "$DKR_PIDFILE")), socket $DKR_SOCK"
}

do_start() {
    local t0 t1
    t0=$(date +%s.%N)
    [[ $EUID -eq 0 ]] || die "must run as root"
    for b in "$CONTAINERD_BIN" "$CTR_BIN" "$DOCKERD_BIN" "$DOCKER_BIN"; do
        [[ -x "$b" ]] || die "$b not found (apt-get install -y containerd docker.io)"
    done
    # unix socket paths are limited to 108 bytes
    (( ${#CTD_SOCK} + 6 < 108 )) || die "DOCKYARD_DAEMONS_DIR too long for a unix socket path: $DIR"
    mkdir -p "$DIR"
    start_containerd
    start_dockerd
    print_env > "$ENV_FILE"
    t1=$(date +%s.%N)
    log "ready in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')s; env in $ENV_FILE"
    print_env
}

# stop_pid NAME PIDFILE
stop_pid() {
    local name="$1" file="$2" pid deadline
    if ! pid="$(pid_of "$name" "$file")"; then
        [[ -e "$file" ]] && log "$name: stale pid file $file removed"
        rm -f "$file"
        return 0
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$(( $(date +%s) + STOP_TIMEOUT ))
    while kill -0 "$pid" 2>/dev/null; do
        if (( $(date +%s) >= deadline )); then
            log "$name (pid $pid) still alive after ${STOP_TIMEOUT}s: KILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
    rm -f "$file"
}

# containerd shims re-parent to init and outlive containerd; ours carry our
# socket path in their command line, so they can be told apart from others.
# Their children are the containers' init processes: kill those first.
stop_shims() {
    local p cmd argv0 kids
    for p in /proc/[0-9]*; do
        p="${p#/proc/}"
        cmd="$( { tr '\0' ' ' < "/proc/$p/cmdline"; } 2>/dev/null || true)"
        argv0="${cmd%% *}"
        if [[ "${argv0##*/}" == containerd-shim* && "$cmd" == *" -address $CTD_SOCK"* ]]; then
            kids="$(cat /proc/"$p"/task/*/children 2>/dev/null | tr -s ' \n' ' ' || true)"
            log "killing leftover shim pid $p and its children: ${kids:-none}"
            [[ -n "${kids// /}" ]] && kill -KILL $kids 2>/dev/null || true
            kill -KILL "$p" 2>/dev/null || true
        fi
    done
}

# Unmount anything still mounted below $DIR (deepest first).
unmount_leftovers() {
    local m
    awk -v d="$DIR/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r |
    while read -r m; do
        log "unmounting leftover $m"
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
}

do_stop() {
    local ids
    # Containers of *our* dockerd would each take 10 s to honour SIGTERM: kill them.
    if pid_of dockerd "$DKR_PIDFILE" >/dev/null && dkr_up; then
        ids="$(DOCKER_CONFIG="$DIR/docker-client" timeout 10 "$DOCKER_BIN" -H "unix://$DKR_SOCK" ps -q 2>/dev/null || true)"
        if [[ -n "$ids" ]]; then
            log "killing running containers: $(echo $ids)"
            DOCKER_CONFIG="$DIR/docker-client" timeout 20 "$DOCKER_BIN" -H "unix://$DKR_SOCK" kill $ids >/dev/null 2>&1 || true
        fi
    fi
    stop_pid dockerd "$DKR_PIDFILE"
    rm -f "$DKR_OWN_PIDFILE"
    stop_pid containerd "$CTD_PIDFILE"
    stop_shims
    unmount_leftovers
    rm -f "$ENV_FILE" "$DKR_SOCK" "$CTD_SOCK" "$CTD_SOCK.ttrpc"
    log "stopped"
}

do_status() {
    local rc=0 pid
    if pid="$(pid_of containerd "$CTD_PIDFILE")"; then
        echo "containerd: pid $pid, $(ctd_up && echo answering || echo NOT answering)"
    else echo "containerd: not running"; rc=1; fi
    if pid="$(pid_of dockerd "$DKR_PIDFILE")"; then
        echo "dockerd: pid $pid, $(dkr_up && echo answering || echo NOT answering)"
    else echo "dockerd: not running"; rc=1; fi
    return $rc
}

case "${1:-}" in
    start)  do_start ;;
    stop)   do_stop ;;
    restart) do_stop; do_start ;;
    clean)  do_stop; rm -rf --one-file-system "$DIR" ;;
    status) do_status ;;
    env)    [[ -f "$ENV_FILE" ]] || die "not started ($ENV_FILE missing)"; cat "$ENV_FILE" ;;
    *) echo "usage: $0 start|stop|restart|status|env|clean" >&2; exit 2 ;;
esac
