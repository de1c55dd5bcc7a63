#!/usr/bin/env bash
# The docker compose deployment, tested for real on a machine with no GPU and no image registry:
#   1. docker (dockerd, vfs storage), docker-compose 1.29.2 and debootstrap, installed if missing;
#   2. local stand-ins for the official base images, built once and reused: a Debian bookworm
#      Python 3.11 (for python:3.11-slim), a PyTorch on top of it from the wheels on this disk
#      (for pytorch/pytorch), a Redis from Debian's package (for redis:7);
#   3. the project's three images (compose/Dockerfile) on those bases;
#   4. the stack (docker-compose.yml + compose/cpu.yml: tiny model, no GPU) under a private project
#      name, started and used with the documented commands (docs/deployment.md, "Without a GPU",
#      run as written):
#      a job through the published API port gets the reference answer; with the worker stopped,
#      a long poll on a queued job is answered at once by `docker-compose restart api`, and the
#      job survives a Redis crash (AOF on the volume) and is answered once the worker is back; the
#      API image has no torch;
#   5. the same stack switched to Sentinel (compose/sentinel.yml: a primary, a replica, three
#      sentinels) with the documented commands (docs/deployment.md, "Under docker compose:
#      compose/sentinel.yml", run as written): a job is answered; the primary killed, the
#      sentinels promote the replica; a job submitted then is answered 503 not_durable until the
#      old primary, started again, replicates the new one, then 202 and answered; doctor in the
#      worker container names the new primary;
#   6. everything torn down (containers, networks, volumes), on failure too; images stay cached.
# Run as root (or with sudo at hand). Prints one PASS/FAIL line per check; exits non-zero on any FAIL.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

# Bump a base's revision when its recipe below changes: an existing tag is reused as it is.
PYTHON_BASE=internvl-local/python:3.11-bookworm-r1
TORCH_BASE=internvl-local/pytorch:2.14.1-r1
REDIS_BASE=internvl-local/redis:7-bookworm-r1
IMAGE_TAG=compose-test
state=${COMPOSE_TEST_STATE:-/var/tmp/internvl-compose-test}
wheels=(/opt/pypi/files /opt/pypi-more/files)   # this machine's wheels: torch is never downloaded
host_ca=/etc/ssl/certs/ca-certificates.crt       # PyPI is reachable from containers only with it

started=$(date +%s)
failures=0
sudo_cmd=""
[ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"

say() { printf '[%4ss] %s\n' "$(($(date +%s) - started))" "$*"; }
pass() { say "PASS: $*"; }
fail() {
    say "FAIL: $*"
    failures=$((failures + 1))
}
die() {
    fail "$*"
    exit 1
}

# -- 1. tools and the daemon -------------------------------------------------------------------

ensure_tools() {
    local missing=()
    command -v docker >/dev/null || missing+=(docker.io)
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v docker-compose >/dev/null || missing+=(docker-compose)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        $sudo_cmd apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

dockerd_pid=""
ensure_docker() {
    docker info >/dev/null 2>&1 && return
    mkdir -p "$state"
    say "starting dockerd (vfs storage; log: $state/dockerd.log)"
    # vfs: the one storage driver that works on every filesystem (no overlay mounts needed here).
    $sudo_cmd dockerd --storage-driver vfs >"$state/dockerd.log" 2>&1 &
    dockerd_pid=$!
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && return
        kill -0 "$dockerd_pid" 2>/dev/null || die "dockerd exited; see $state/dockerd.log"
        sleep 1
    done
    die "dockerd did not answer within 60 s; see $state/dockerd.log"
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# -- 2. the local base images ------------------------------------------------------------------

build_python_base() {
    image_exists "$PYTHON_BASE" && return
    local rootfs="$state/rootfs"
    say "building $PYTHON_BASE (debootstrap bookworm + python3)"
    $sudo_cmd rm -rf "$rootfs"
    $sudo_cmd debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" http://deb.debian.org/debian >"$state/debootstrap.log" 2>&1 ||
        die "debootstrap failed; see $state/debootstrap.log"
    # Like the official images: `python` and `pip` on PATH (here a venv's, first on PATH). The
    # host's CA bundle, for pip (which otherwise trusts only its own bundle) to reach PyPI from
    # inside containers here; no pip configuration file is carried over from the host.
    $sudo_cmd chroot "$rootfs" python3 -m venv /opt/venv
    $sudo_cmd cp "$host_ca" "$rootfs/etc/ssl/certs/host-ca-bundle.crt"
    $sudo_cmd rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    $sudo_cmd tar -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt' \
        --change 'CMD ["python3"]' - "$PYTHON_BASE" >/dev/null
    $sudo_cmd rm -rf "$rootfs"
}

# A base made by running one command in a container and committing it: one layer, and the wheel
# directories are mounted read-only rather than sent as a build context (gigabytes, copied twice).
# Arguments: base, tag, script, then `docker run` options; $commit_changes: `docker commit` ones.
commit_changes=()
commit_base() {
    local from=$1 tag=$2 script=$3
    shift 3
    local name="internvl-base-build-$$"
    docker rm -f "$name" >/dev/null 2>&1 || true
    if ! docker run --name "$name" "$@" "$from" sh -euc "$script" >"$state/$name.log" 2>&1; then
        docker rm -f "$name" >/dev/null 2>&1 || true
        die "building $tag failed; see $state/$name.log"
    fi
    docker commit --change 'CMD ["python3"]' "${commit_changes[@]}" "$name" "$tag" >/dev/null
    docker rm "$name" >/dev/null
    commit_changes=()
}

build_torch_base() {
    image_exists "$TORCH_BASE" && return
    say "building $TORCH_BASE (torch 2.14.1, torchvision 0.29.1 from the wheels on this disk)"
    local mounts=() dir
    for dir in "${wheels[@]}"; do
        [ -d "$dir" ] || die "no wheel directory $dir: the torch base needs this machine's wheels"
        mounts+=(-v "$dir:$dir:ro")
    done
    # cuda-bindings is the one dependency of torch not on this disk: it comes from PyPI, alone;
    # everything else (torch, torchvision, nvidia-*, triton) only from the local wheels.
    commit_base "$PYTHON_BASE" "$TORCH_BASE" "
        pip install --no-cache-dir --no-deps 'cuda-bindings>=13.0.3,<14'
        pip install --no-cache-dir --no-index --find-links ${wheels[0]} --find-links ${wheels[1]} \
            torch==2.14.1 torchvision==0.29.1
        python -c 'import torch, torchvision; print(torch.__version__, torchvision.__version__)'
        find /opt/venv -name __pycache__ -prune -exec rm -rf {} +
    " "${mounts[@]}"
}

build_redis_base() {
    image_exists "$REDIS_BASE" && return
    say "building $REDIS_BASE (Debian's redis-server)"
    # Like the official image: runs as redis in /data.
    commit_changes=(--change 'USER redis' --change 'WORKDIR /data' --change 'CMD ["redis-server"]')
    commit_base "$PYTHON_BASE" "$REDIS_BASE" "
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server
        rm -rf /var/lib/apt/lists/*
        mkdir -p /data /usr/local/etc/redis
        chown redis:redis /data
    "
}

# -- 3. the project's images -------------------------------------------------------------------

build_images() {
    local target tag old
    for target in api webhook-worker worker; do
        tag="internvl-queue/$target:$IMAGE_TAG"
        old=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
        say "building $tag (log: $state/build-$target.log)"
        # The classic builder, as docker-compose 1.29 uses it (and no buildx is needed).
        DOCKER_BUILDKIT=0 docker build -f compose/Dockerfile --target "$target" \
            --build-arg "PYTHON_IMAGE=$PYTHON_BASE" --build-arg "BASE_IMAGE=$TORCH_BASE" \
            -t "$tag" . >"$state/build-$target.log" 2>&1 ||
            die "building the $target image failed; see $state/build-$target.log"
        # The image this tag named before, now untagged, goes (gigabytes on vfs), with the layers
        # no other image uses.
        if [ -n "$old" ] && [ "$old" != "$(docker image inspect -f '{{.Id}}' "$tag")" ]; then
            docker rmi "$old" >/dev/null 2>&1 || true
        fi
    done
}

# -- 4. the stack --------------------------------------------------------------------------------

# The project name and the settings reach docker-compose through the environment, so that the
# documented commands run here as written.
project="internvl-compose-test-$$"
export COMPOSE_PROJECT_NAME=$project
compose_files=(-f docker-compose.yml -f compose/cpu.yml)
compose() { docker-compose "${compose_files[@]}" "$@"; }
stack_started=""

# The compose commands are documented here, under "### Without a GPU" (the stack) and under
# "### Under docker compose: compose/sentinel.yml" (the same stack under Sentinel).
docs_file=docs/deployment.md
cpu_section="### Without a GPU"
sentinel_section="### Under docker compose: compose/sentinel.yml"

# The line of section $2's documented commands (default: "Without a GPU") that starts with $1,
# as written there.
documented_command() {
    local heading=${2:-$cpu_section}
    awk -v start="$1" -v heading="$heading" '$0 == heading { section = 1; next } /^##/ { section = 0 }
        section && index($0, start) == 1 { print; found = 1; exit } END { exit !found }' "$docs_file" ||
        die "$docs_file's \"$heading\" section has no command starting with: $1"
}

# Runs a documented command (START [SECTION]) as written, but for the API's address: this stack
# publishes a free port.
run_documented_command() {
    local line
    line=$(documented_command "$@") || return 1
    line=${line//http:\/\/localhost:8000/$api}
    say "$docs_file: $line" >&2
    NO_PROXY='*' no_proxy='*' eval "$line"
}

# A small HTTP client of the API (Python's standard library only): submits a job as JSON, reads
# a job's status, waits for its answer.
client() {
    python3 - "$@" <<'PY'
import base64, json, os, sys, time, urllib.error, urllib.request

command, args = sys.argv[1], sys.argv[2:]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
headers = {"Content-Type": "application/json"}
if os.environ.get("API_KEY"):  # the stack requires API keys (INTERNVL_AUTH=required)
    headers["Authorization"] = f"Bearer {os.environ['API_KEY']}"


def call(method, url, body=None, with_headers=False):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, headers, method=method)
    try:
        with opener.open(request, timeout=30) as reply:
            found = reply.status, json.load(reply), reply.headers
    except urllib.error.HTTPError as refused:
        found = refused.code, json.load(refused), refused.headers
    return found if with_headers else found[:2]


def job(api, job_id):
    for attempt in range(5):  # the API's first request after a Redis restart may fail once
        try:
            return call("GET", f"{api}/v1/jobs/{job_id}")[1]
        except OSError:
            if attempt == 4:
                raise
            time.sleep(1)


if command == "submit":  # API IMAGE QUESTION MAX_NEW_TOKENS MAX_TILES -> the job id
    api, image, question, tokens, tiles = args
    data = base64.b64encode(open(image, "rb").read()).decode()
    body = {"question": question, "images": [{"data": data}], "max_new_tokens": int(tokens), "max_tiles": int(tiles)}
    status, accepted = call("POST", f"{api}/v1/jobs", body)
    assert status == 202, (status, accepted)
    print(accepted["id"])
elif command == "submit-retrying":  # API IMAGE QUESTION MAX_NEW_TOKENS MAX_TILES TIMEOUT_S
    # -> the job id and the codes of the 503s it was answered first (each on stderr as it came).
    # One Idempotency-Key for every attempt: a 503 not_durable job is kept, and a retry with its
    # key gets that job (202 once a replica holds it) rather than a second one.
    api, image, question, tokens, tiles, timeout = args
    data = base64.b64encode(open(image, "rb").read()).decode()
    body = {"question": question, "images": [{"data": data}], "max_new_tokens": int(tokens), "max_tiles": int(tiles)}
    headers["Idempotency-Key"] = f"compose-test-{time.time_ns()}"
    deadline = time.monotonic() + float(timeout)
    refusals = []
    while (answer := call("POST", f"{api}/v1/jobs", body, with_headers=True))[0] == 503:
        status, refused, reply_headers = answer
        refusals.append(refused["error"]["code"])
        print(f"503 {refusals[-1]}: {refused['error']['message']}", file=sys.stderr, flush=True)
        if time.monotonic() > deadline:
            sys.exit(f"still 503 after {timeout} s")
        time.sleep(float(reply_headers.get("Retry-After", "1")))
    status, accepted, _ = answer
    assert status == 202, (status, accepted)
    print(accepted["id"], ",".join(refusals) or "-")
elif command == "refused":  # API -> the status and code of a keyless read
    status, body = call("GET", f"{args[0]}/v1/jobs/none")
    print(status, body["error"]["code"])
elif command == "long-poll":  # API ID WAIT_S -> HTTP status, job status, seconds taken
    api, job_id, wait = args
    started = time.monotonic()
    status, found = call("GET", f"{api}/v1/jobs/{job_id}?wait={wait}")
    print(status, found["status"], f"{time.monotonic() - started:.1f}")
elif command == "status":  # API ID
    print(job(*args)["status"])
elif command == "answer":  # API ID TIMEOUT_S -> the answer, once the job succeeded
    api, job_id, timeout = args
    deadline = time.monotonic() + float(timeout)
    while (found := job(api, job_id))["status"] in ("queued", "running"):
        if time.monotonic() > deadline:
            sys.exit(f"job {job_id} still {found['status']} after {timeout} s")
        time.sleep(0.5)
    if found["status"] != "succeeded":
        sys.exit(f"job {job_id} {found['status']}: {found['error']}")
    print(found["result"]["answer"])
PY
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# What .env would hold: this run's images and bases, a free API port, a webhook secret.
configure_stack() {
    export INTERNVL_IMAGE_TAG=$IMAGE_TAG REDIS_IMAGE=$REDIS_BASE INTERNVL_API_PORT=$api_port
    export PYTHON_IMAGE=$PYTHON_BASE BASE_IMAGE=$TORCH_BASE
    # `up --build` finds the images built above in the classic builder's cache (no BuildKit here).
    export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0
    WEBHOOK_SECRETS="whsec_$(head -c 32 /dev/urandom | base64 -w0)"
    export WEBHOOK_SECRETS
}

container() { compose ps -q "$1"; }

# Waits until every named service's container is healthy; false after $1 seconds, or as soon as
# one keeps restarting (a process that cannot start).
wait_healthy() {
    local deadline=$((SECONDS + $1)) service id status restarts
    shift
    for service in "$@"; do
        while :; do
            id=$(container "$service")
            status=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id" 2>/dev/null || true)
            [ "$status" = healthy ] && break
            restarts=$(docker inspect -f '{{.RestartCount}}' "$id" 2>/dev/null || echo 0)
            if [ "$restarts" -ge 3 ]; then
                say "$service keeps restarting ($restarts restarts)"
                return 1
            fi
            if [ "$SECONDS" -ge "$deadline" ]; then
                say "$service is ${status:-not running} after the wait"
                return 1
            fi
            sleep 2
        done
    done
}

show_logs() {
    say "the stack's last log lines:"
    compose logs --no-color --tail 40 2>&1 | sed 's/^/    /' || true
}

teardown() {
    local code=$?
    if [ -n "$stack_started" ]; then
        [ "$failures" -gt 0 ] && show_logs
        say "tearing down $project (containers, networks, volumes)"
        compose down --volumes --remove-orphans --timeout 30 >"$state/down.log" 2>&1 ||
            say "compose down failed; see $state/down.log"
    fi
    say "images:"
    docker images --format '    {{.Repository}}:{{.Tag}}  {{.Size}}' |
        grep -E 'internvl-(local|queue)/' || true
    say "disk after: $(df -h / | awk 'NR==2 {print $4 " free of " $2}')"
    if [ -n "$dockerd_pid" ]; then
        say "stopping the dockerd started here"
        $sudo_cmd kill "$dockerd_pid" 2>/dev/null || true
        wait "$dockerd_pid" 2>/dev/null || true
    fi
    if [ "$failures" -gt 0 ] || [ "$code" -ne 0 ]; then
        say "compose test: FAILED ($failures failed checks, exit $code) in $((SECONDS))s"
        exit 1
    fi
    say "compose test: all checks passed in $((SECONDS))s"
}

check() { # DESCRIPTION COMMAND...: PASS if the command succeeds, FAIL otherwise
    local what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}

# Run in the service's running container (on vfs, a new container would copy the image first).
no_torch_in() {
    ! compose exec -T "$1" pip show torch >/dev/null 2>&1 &&
        compose exec -T "$1" pip show flask >/dev/null 2>&1
}

not_root() { [ "$(docker exec "$(container "$1")" id -u)" != 0 ]; }

only_api_published() {
    local published
    published=$(docker ps --filter "label=com.docker.compose.project=$project" \
        --format '{{.Label "com.docker.compose.service"}} {{.Ports}}' | grep -- '->' || true)
    say "published: $published"
    [ "$(echo "$published" | wc -l)" = 1 ] && [[ "$published" == "api "*":$api_port->8000/tcp"* ]]
}

redis_is_durable() {
    [ "$(compose exec -T redis redis-cli config get appendonly | tail -1 | tr -d '\r')" = yes ] &&
        [ "$(compose exec -T redis redis-cli config get appendfsync | tail -1 | tr -d '\r')" = everysec ] &&
        [ "$(compose exec -T redis redis-cli config get dir | tail -1 | tr -d '\r')" = /data ]
}

# INTERNVL_AUTH defaults to required: a request without a key is refused, even before any key
# exists; a key made with `internvl-queue keys create` in the api container is accepted.
keys_required() { [ "$(API_KEY='' client refused "$api")" = "401 unauthorized" ]; }

# The documented line: KEY=$(docker-compose ... exec -T api internvl-queue keys create ...)
make_key() {
    run_documented_command 'KEY=$(' >"$state/keys.log" 2>&1 || return 1
    export API_KEY=$KEY
    [[ "$API_KEY" == iq_* ]]
}

# The documented curl, as written (with this stack's port): a JSON job, queued, running or done.
documented_curl_submits() {
    local reply
    reply=$(run_documented_command 'curl ') || return 1
    say "the documented curl got: $reply"
    python3 -c 'import json, sys; job = json.loads(sys.argv[1]); assert job["id"] and job["status"] in ("queued", "running", "succeeded"), job' "$reply"
}

# `docker-compose restart api` with a long poll open on a queued job: the poll gets the job as it
# is (200, queued) at once, not an empty reply after gunicorn's 10 s graceful timeout.
long_poll_survives_api_restart() {
    local job_id=$1 poll_pid took status job_status seconds
    client long-poll "$api" "$job_id" 30 >"$state/long-poll.out" 2>&1 &
    poll_pid=$!
    sleep 2 # the poll is held
    took=$SECONDS
    compose restart api >"$state/restart-api.log" 2>&1 || return 1
    took=$((SECONDS - took))
    wait "$poll_pid" || {
        say "the long poll failed: $(cat "$state/long-poll.out")"
        return 1
    }
    read -r status job_status seconds <"$state/long-poll.out"
    say "restart api took ${took}s; the long poll got $status $job_status after ${seconds}s"
    [ "$status" = 200 ] && [ "$job_status" = queued ] &&
        python3 -c 'import sys; sys.exit(float(sys.argv[1]) >= 9)' "$seconds"
}

same_answer() { [ -n "$1" ] && [ "$1" = "$2" ]; }

worker_logs_on_volume() { compose exec -T worker sh -c 'test -s /logs/worker-$HOSTNAME.log'; }

# The start script ran `internvl-queue doctor` (its verdict is in the log) before the worker.
doctor_ran_first() {
    compose exec -T worker sh -c 'cat /logs/worker-$HOSTNAME.log' >"$state/worker-start.log"
    grep -q '^A worker could start here' "$state/worker-start.log"
}

# -- 5. the same stack under Sentinel ----------------------------------------------------------

# The documented Sentinel commands (docs/deployment.md, "Under docker compose: compose/sentinel.yml")
# start with this; the running stack is switched over in place (its images, its volumes).
sentinel_compose='docker-compose -f docker-compose.yml -f compose/cpu.yml -f compose/sentinel.yml'
master_name=internvl # REDIS_MASTER_NAME's default

sentinel_command() { run_documented_command "$sentinel_compose $1" "$sentinel_section"; }

# "host:port" of the primary sentinel-$1 names (docker exec: a second quicker than compose exec).
primary_named_by() {
    docker exec "$(container "sentinel-$1")" redis-cli -p 26379 --raw \
        sentinel get-master-addr-by-name "$master_name" 2>/dev/null | paste -sd: - || true
}

# Waits until the three sentinels name $1 the primary; false after $2 seconds.
all_sentinels_name() {
    local deadline=$((SECONDS + $2)) n agreed
    while :; do
        agreed=0
        for n in 1 2 3; do
            [ "$(primary_named_by "$n")" = "$1" ] && agreed=$((agreed + 1))
        done
        [ "$agreed" = 3 ] && return 0
        [ "$SECONDS" -ge "$deadline" ] && return 1
        sleep 1
    done
}

# Waits until the three sentinels know redis-replica as a replica in good standing (flags just
# "slave": not down, not disconnected); false after $1 seconds. Before that, a dead primary has
# no replica to fail over to, and a failed failover is retried only after 2 x failover-timeout.
all_sentinels_know_replica() {
    local deadline=$((SECONDS + $1)) n good
    while :; do
        good=0
        for n in 1 2 3; do
            docker exec "$(container "sentinel-$n")" redis-cli -p 26379 --raw \
                sentinel replicas "$master_name" 2>/dev/null |
                awk 'prev == "name" && $0 == "redis-replica:6379" { ours = 1 }
                    ours && prev == "flags" { ok = ($0 == "slave"); ours = 0 }
                    { prev = $0 } END { exit !ok }' && good=$((good + 1))
        done
        [ "$good" = 3 ] && return 0
        [ "$SECONDS" -ge "$deadline" ] && return 1
        sleep 1
    done
}

# Node $1's replication role and, for a replica, the primary it follows: "master" or "slave HOST".
role_of() {
    compose exec -T "$1" redis-cli info replication | tr -d '\r' |
        awk -F: '$1 == "role" { role = $2 } $1 == "master_host" { host = " " $2 }
            END { print role host }'
}

# The documented failover: the primary killed; the sentinels promote the replica, and the
# documented question to a sentinel names it.
failover_promotes_replica() {
    local took=$SECONDS named
    sentinel_command 'kill redis' >"$state/kill-redis.log" 2>&1 || return 1
    all_sentinels_name redis-replica:6379 60 || {
        say "the sentinels name: $(primary_named_by 1), $(primary_named_by 2), $(primary_named_by 3)"
        return 1
    }
    named=$(sentinel_command "exec -T sentinel-1 redis-cli -p 26379 sentinel get-master-addr-by-name $master_name" |
        tr -d '\r' | paste -sd: -) || return 1
    say "$((SECONDS - took))s after the kill, the three sentinels name redis-replica; sentinel-1 answers: $named"
    [ "$named" = redis-replica:6379 ]
}

# A job submitted after the failover, while the old primary is down: answered 503 not_durable
# (INTERNVL_REDIS_MIN_REPLICAS=1: no replica holds it yet) and retried after Retry-After with its
# Idempotency-Key; the old primary started again (documented) joins the new one as its replica,
# and the retry gets 202. Leaves the job's id in $failover_job.
submit_across_failover() {
    local submit_pid deadline=$((SECONDS + 60)) out
    client submit-retrying "$api" "$1" "$2" 12 12 180 >"$state/failover-submit.out" \
        2>"$state/failover-submit.err" &
    submit_pid=$!
    until grep -q '^503 not_durable' "$state/failover-submit.err"; do
        if ! kill -0 "$submit_pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
            say "no 503 not_durable with the old primary down: $(cat "$state/failover-submit.err")"
            kill "$submit_pid" 2>/dev/null || true
            return 1
        fi
        sleep 1
    done
    say "with the old primary down: $(head -1 "$state/failover-submit.err")"
    sentinel_command 'start redis' >"$state/start-redis.log" 2>&1 || return 1
    wait "$submit_pid" || {
        say "the submit failed: $(tail -3 "$state/failover-submit.err")"
        return 1
    }
    read -r failover_job out <"$state/failover-submit.out"
    say "job $failover_job accepted (202) after these 503s: $out"
}

# `internvl-queue doctor` in the worker container: a worker could start, and its Redis Sentinel
# line names the new primary, with the old one as its replica.
doctor_sees_new_primary() {
    sentinel_command 'exec -T worker internvl-queue doctor' >"$state/doctor.log" 2>&1 || {
        say "doctor failed: $(tail -5 "$state/doctor.log")"
        return 1
    }
    say "doctor: $(grep 'Redis Sentinel' "$state/doctor.log")"
    grep -q "primary '$master_name' at redis-replica:6379; replicas: redis:6379 (online)" \
        "$state/doctor.log"
}

sentinel_layout() {
    local image=$1 question=$2 expected=$3 earlier_job=$4 job_id answer
    # From here on every compose command (teardown too) takes the Sentinel override.
    compose_files=(-f docker-compose.yml -f compose/cpu.yml -f compose/sentinel.yml)
    say "switching the stack to Sentinel with the documented command"
    sentinel_command 'up -d' >"$state/up-sentinel.log" 2>&1 ||
        die "compose up with compose/sentinel.yml failed; see $state/up-sentinel.log"
    if wait_healthy 300 redis redis-replica sentinel-1 sentinel-2 sentinel-3 api webhook-worker worker; then
        pass "under Sentinel, every service healthy (redis, redis-replica, sentinel-1..3, api, webhook-worker, worker)"
    else
        die "the Sentinel stack did not become healthy"
    fi
    check "the three sentinels name redis the primary" all_sentinels_name redis:6379 30
    check "redis-replica replicates redis" test "$(role_of redis-replica)" = "slave redis"
    check "the three sentinels know redis-replica, in good standing" all_sentinels_know_replica 60
    check "job $earlier_job, answered before the switch, is still there (the same redis-data)" \
        test "$(client status "$api" "$earlier_job")" = succeeded
    job_id=$(client submit-retrying "$api" "$image" "$question" 12 12 60 | cut -d' ' -f1) || true
    answer=$(client answer "$api" "$job_id" 120) || true
    check "under Sentinel, a job through the API gets the reference answer" \
        same_answer "$expected" "$answer"

    check "the documented kill of the primary: the sentinels promote redis-replica" \
        failover_promotes_replica
    failover_job=""
    check "a job submitted after the failover: 503 not_durable while no replica, then 202 once the restarted old primary replicates" \
        submit_across_failover "$image" "$question"
    answer=$(client answer "$api" "$failover_job" 120) || true
    check "the job submitted after the failover gets the reference answer" \
        same_answer "$expected" "$answer"
    check "the old primary came back as the new primary's replica" \
        test "$(role_of redis)" = "slave redis-replica"
    check "internvl-queue doctor in the worker container sees the new primary and its replica" \
        doctor_sees_new_primary
}

main() {
    mkdir -p "$state"
    trap teardown EXIT
    ensure_tools
    ensure_docker
    say "disk before: $(df -h / | awk 'NR==2 {print $4 " free of " $2}')"
    build_python_base
    build_torch_base
    build_redis_base
    say "bases ready"
    build_images
    say "images ready"

    api_port=$(free_port)
    api="http://127.0.0.1:$api_port"
    configure_stack
    say "starting the stack $project (API on port $api_port) with the documented command"
    stack_started=1
    run_documented_command 'docker-compose -f docker-compose.yml -f compose/cpu.yml up -d' \
        >"$state/up.log" 2>&1 || die "compose up failed; see $state/up.log"
    if wait_healthy 300 redis api webhook-worker worker; then
        pass "every service healthy (redis, api, webhook-worker, worker)"
    else
        die "the stack did not become healthy"
    fi
    check "only the API port is published" only_api_published
    for service in api webhook-worker worker; do
        check "$service runs as a non-root user" not_root "$service"
    done
    check "the API image has no torch (pip show torch fails, pip show flask works)" no_torch_in api
    check "the webhook-worker image has no torch" no_torch_in webhook-worker
    check "a request without an API key is refused (401): keys are required by default" \
        keys_required
    check "the documented keys create (exec -T, no terminal) makes a key" make_key
    check "the documented curl, with that key, submits a job" documented_curl_submits
    check "Redis: AOF on, appendfsync everysec, data in /data" redis_is_durable
    check "the worker logs to the logs volume" worker_logs_on_volume
    check "the worker ran internvl-queue doctor at start (a worker could start)" doctor_ran_first

    local image=examples/cat.jpg question="What animal is this?" model expected answer
    # The directory the worker loaded (INTERNVL_MODEL=demo: the checkpoint it built at start).
    model=$(compose exec -T worker python -c 'import os
from internvl_queue.core.data_dir import default_data_dir
from internvl_queue.worker.model_source import resolve_model
print(resolve_model(os.environ["INTERNVL_MODEL"], default_data_dir()))' | tail -1 | tr -d '\r')
    expected=$(compose exec -T worker python -m internvl_queue.testing.reference --model "$model" \
        --question "$question" --max-new-tokens 12 --max-tiles 12 - <"$image" 2>"$state/reference.log")
    say "reference answer (transformers' generate in the worker container): '$expected'"
    local job_id
    job_id=$(client submit "$api" "$image" "$question" 12 12)
    answer=$(client answer "$api" "$job_id" 120) || true
    say "the API's answer for job $job_id: '$answer'"
    check "a job through the published API port gets the reference answer" \
        same_answer "$expected" "$answer"

    say "stopping the worker (warm shutdown)"
    compose stop worker >/dev/null 2>&1
    check "the worker stopped cleanly (exit 0, not killed)" \
        test "$(docker inspect -f '{{.State.ExitCode}}' "$(container worker)")" = 0
    job_id=$(client submit "$api" "$image" "$question" 12 12)
    sleep 2 # longer than appendfsync everysec
    check "with no worker, job $job_id is queued" test "$(client status "$api" "$job_id")" = queued
    say "restarting the API with a long poll open on job $job_id"
    check "docker-compose restart api answers the open long poll at once (200, queued)" \
        long_poll_survives_api_restart "$job_id"
    wait_healthy 120 api || fail "the API did not come back"
    say "killing Redis (SIGKILL: no shutdown save) and starting it again"
    compose kill -s SIGKILL redis >/dev/null 2>&1
    compose start redis >/dev/null 2>&1
    wait_healthy 120 redis || fail "Redis did not come back"
    check "after the Redis restart, job $job_id is still queued (AOF on the volume)" \
        test "$(client status "$api" "$job_id")" = queued
    say "starting the worker again"
    compose start worker >/dev/null 2>&1
    wait_healthy 300 worker || fail "the worker did not come back"
    answer=$(client answer "$api" "$job_id" 120) || true
    check "the queued job succeeds once the worker is back, with the reference answer" \
        same_answer "$expected" "$answer"

    sentinel_layout "$image" "$question" "$expected" "$job_id"
}

main "$@"
