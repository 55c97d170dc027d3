#!/usr/bin/env bash
# Builds the CPU container image (docker/Dockerfile) and checks it end to end, on a machine with no Docker
# engine: Debian's podman with runc. About 10-15 minutes the first time on 2 cores (not a CI job).
#
# Usage: scripts/dev/container-check.sh [--keep] [--skip-build] [--bases-only]
#
# 1. Stand-ins for the base images the Dockerfile names (debian:bookworm-slim, rust:1.95-bookworm), made once
#    with `debootstrap --variant=minbase bookworm` + `podman import` and cached in podman's store: no registry
#    but Debian's is reachable here. They carry the host's CA certificates (TLS to crates.io and PyPI inside the
#    build goes through this machine's egress proxy) and, for rust:, the host's Rust toolchain. Where the real
#    images can be pulled, they are used instead (SKILLGRAFT_PULL_BASES=1).
# 2. `podman build` of docker/Dockerfile (timed; image size).
# 3. Runs the image on a non-default address (SKILLGRAFT_ADDR=0.0.0.0:$port, so the HEALTHCHECK must follow
#    it), waits for /ready, checks the health check, imports a graft made by the image's own binary
#    (`skillgraft synthetic`), predicts, restarts the container, predicts again (same answer from the volume).
# 4. Starts it once more on a root-owned bind mount and expects a clear start-up error.
# Prints a summary and writes it to target/container-check.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
keep=0 skip_build=0 bases_only=0
for a in "$@"; do
  case "$a" in
    --keep) keep=1 ;;
    --bases-only) bases_only=1 ;;
    --skip-build) skip_build=1 ;;
    *) echo "unknown option $a" >&2; exit 2 ;;
  esac
done
image=localhost/skillgraft:check
name=skillgraft-check-$$
vol=skillgraft-check-$$
port=$((18000 + RANDOM % 1000))
cache="${SKILLGRAFT_HOME:-$HOME/.cache/skillgraft}/container"
mkdir -p "$cache" target
P=(podman --runtime runc --cgroup-manager=cgroupfs)
LIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024 --network host)

need() { command -v "$1" >/dev/null 2>&1; }
if ! need podman || ! need runc || ! need debootstrap; then
  echo "== installing podman, runc, debootstrap (apt)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null
fi

cleanup() {
  [ "$keep" = 1 ] && return
  "${P[@]}" rm -f "$name" "$name-root" >/dev/null 2>&1 || true
  "${P[@]}" volume rm -f "$vol" >/dev/null 2>&1 || true
  rm -rf "$cache/rootowned-$$"
}
trap cleanup EXIT

# --- 1. stand-in base images -------------------------------------------------------------------------------
have_image() { "${P[@]}" image exists "$1"; }
rootfs="$cache/bookworm-rootfs"
make_rootfs() {
  if [ ! -f "$rootfs/.complete" ]; then
    echo "== debootstrap --variant=minbase bookworm (once)"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
    # The host's extra CAs (TLS interception on this network), kept across update-ca-certificates.
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    touch "$rootfs/.complete"
  fi
}
if [ "${SKILLGRAFT_PULL_BASES:-0}" = 1 ]; then
  "${P[@]}" pull docker.io/library/debian:bookworm-slim docker.io/library/rust:1.95-bookworm
fi
if ! have_image debian:bookworm-slim; then
  make_rootfs
  echo "== podman import debian:bookworm-slim (stand-in)"
  tar -C "$rootfs" --exclude=./.complete -c . | "${P[@]}" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' - debian:bookworm-slim >/dev/null
fi
if ! have_image rust:1.95-bookworm; then
  make_rootfs
  echo "== podman import rust:1.95-bookworm (stand-in: bookworm + gcc + the host's Rust toolchain)"
  rust="$cache/rust-rootfs"
  rm -rf "$rust" && cp -a "$rootfs" "$rust"
  chroot "$rust" /bin/sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null && rm -rf /var/lib/apt/lists/*'
  sysroot="$(rustc --print sysroot)"
  mkdir -p "$rust/usr/local/rust" "$rust/usr/local/cargo"
  cp -a "$sysroot"/bin "$sysroot"/lib "$rust/usr/local/rust/"
  tar -C "$rust" --exclude=./.complete -c . | "${P[@]}" import \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'CMD ["bash"]' - rust:1.95-bookworm >/dev/null
  rm -rf "$rust"
fi

[ "$bases_only" = 1 ] && { echo "base images ready"; exit 0; }

# --- 2. build -----------------------------------------------------------------------------------------------
build_s=0
if [ "$skip_build" = 0 ]; then
  echo "== podman build -f docker/Dockerfile"
  t0=$(date +%s)
  pull=--pull=never
  [ "${SKILLGRAFT_PULL_BASES:-0}" = 1 ] && pull=--pull=missing
  "${P[@]}" build --format docker "$pull" "${LIMITS[@]}" -f docker/Dockerfile -t "$image" . > target/container-build.log 2>&1 \
    || { tail -n 30 target/container-build.log; echo "FAIL: build (target/container-build.log)"; exit 1; }
  tail -n 3 target/container-build.log
  build_s=$(( $(date +%s) - t0 ))
fi
size_mb=$(( $("${P[@]}" image inspect "$image" --format '{{.Size}}') / 1000000 ))
user=$("${P[@]}" image inspect "$image" --format '{{.Config.User}}')
echo "image $image: ${size_mb} MB, user $user, built in ${build_s} s"

# --- 3. run, import, predict, restart, predict ---------------------------------------------------------------
url="http://127.0.0.1:$port"
ms() { date +%s%3N; }
wait_ready() {
  local t0 i
  t0=$(ms)
  for i in $(seq 1 600); do
    if curl -fsS "$url/ready" >/dev/null 2>&1; then echo $(( $(ms) - t0 )); return 0; fi
    if ! "${P[@]}" container exists "$name" || [ "$("${P[@]}" inspect "$name" --format '{{.State.Running}}')" != true ]; then
      "${P[@]}" logs "$name" >&2 || true; return 1
    fi
    sleep 0.1
  done
  return 1
}
echo "== run on 0.0.0.0:$port"
"${P[@]}" volume create "$vol" >/dev/null
t_start=$(ms)
# No systemd here to time periodic health checks: the timer is off and the check is run by hand below.
"${P[@]}" run -d --name "$name" "${LIMITS[@]}" --health-interval disable -e SKILLGRAFT_ADDR="0.0.0.0:$port" \
  -e SKILLGRAFT_ADMIN_KEYS=check-admin -v "$vol:/var/lib/skillgraft" "$image" >/dev/null
ready_ms=$(wait_ready) || { echo "FAIL: never ready"; exit 1; }
echo "ready after ${ready_ms} ms (container started $(( $(ms) - t_start )) ms ago)"
"${P[@]}" healthcheck run "$name" && health=healthy || health=unhealthy
echo "health check (follows SKILLGRAFT_ADDR): $health"
[ "$health" = healthy ] || { echo "FAIL: health check"; exit 1; }
uid=$("${P[@]}" exec "$name" id -u)
"${P[@]}" exec "$name" skillgraft synthetic --out /tmp/check.graft --seed 7 >/dev/null
"${P[@]}" cp "$name:/tmp/check.graft" "$cache/check-$$.graft"
auth=(-H "Authorization: Bearer check-admin")
code=$(curl -sS -o /dev/null -w '%{http_code}' "${auth[@]}" -X PUT --data-binary @"$cache/check-$$.graft" \
  -H 'Content-Type: application/octet-stream' "$url/v1/tasks/check/graft")
rm -f "$cache/check-$$.graft"
[ "$code" = 200 ] || [ "$code" = 201 ] || { echo "FAIL: import answered $code"; exit 1; }
predict() {
  curl -fsS "${auth[@]}" -H 'Content-Type: application/json' -d '{"inputs": ["a gorgeous, witty movie", "dull and lifeless"]}' \
    "$url/v1/tasks/check/predict"
}
t0=$(ms); first=$(predict); predict_ms=$(( $(ms) - t0 ))
echo "predict: $predict_ms ms: $(echo "$first" | head -c 160)"
t0=$(ms)
"${P[@]}" restart -t 30 "$name" >/dev/null
restart_ready_ms=$(wait_ready) || { echo "FAIL: not ready after restart"; exit 1; }
restart_ms=$(( $(ms) - t0 ))
second=$(predict)
same=$([ "$(echo "$first" | sed 's/"request_id":"[^"]*"//')" = "$(echo "$second" | sed 's/"request_id":"[^"]*"//')" ] && echo yes || echo no)
echo "restart to ready: ${restart_ms} ms; same prediction after restart: $same"
[ "$same" = yes ] || { echo "FAIL: prediction changed across restart"; echo "$second"; exit 1; }

# --- 4. root-owned bind mount --------------------------------------------------------------------------------
ro="$cache/rootowned-$$"
mkdir -p "$ro" && chown 0:0 "$ro" && chmod 755 "$ro"
set +e
root_out=$("${P[@]}" run --rm --name "$name-root" "${LIMITS[@]}" --health-interval disable -e SKILLGRAFT_ADDR="127.0.0.1:$((port + 1))" \
  -v "$ro:/var/lib/skillgraft" "$image" 2>&1)
root_rc=$?
root_msg=$(echo "$root_out" | tail -n 3)
set -e
echo "root-owned volume: exit $root_rc: $root_msg"
echo "$root_msg" | grep -q "not writable" || { echo "FAIL: no clear error for a root-owned volume"; exit 1; }

cat > target/container-check.json <<EOF
{"date": "$(date -u +%Y-%m-%dT%H:%MZ)", "build_s": $build_s, "image_mb": $size_mb, "user": "$user", "uid": $uid,
 "ready_ms": $ready_ms, "health": "$health", "predict_ms": $predict_ms, "restart_to_ready_ms": $restart_ms,
 "same_after_restart": "$same", "root_owned_volume_exit": $root_rc}
EOF
echo "== container check passed"
cat target/container-check.json
