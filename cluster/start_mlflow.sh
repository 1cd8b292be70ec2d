#!/usr/bin/env bash
# Start the MLflow tracking server on the Ray head node and print its tracking URI.
#
# Run on the head, for example: ray exec ray_cluster.yaml 'PROGAN_MLFLOW_ARTIFACTS=s3://my-bucket/mlflow bash ~/progan/cluster/start_mlflow.sh'
# Settings, all from the environment:
#   PROGAN_MLFLOW_ARTIFACTS    required. S3 URI that the server proxies artifacts to, e.g. s3://my-bucket/mlflow.
#   PROGAN_MLFLOW_BACKEND_URI  backend store (default: SQLite in PROGAN_MLFLOW_DIR). For many concurrent
#                              trials use PostgreSQL, e.g. postgresql://mlflow@db.internal:5432/mlflow, and
#                              keep the password out of the URI: put it in ~/.pgpass (mode 600) on the head.
#   PROGAN_MLFLOW_HOST         address to bind (default: the node IP that Ray uses, a private address).
#   PROGAN_MLFLOW_PORT         port (default 5000, the port that the cluster YAMLs put in MLFLOW_TRACKING_URI).
#   PROGAN_MLFLOW_WORKERS      server worker processes (default 4).
#   PROGAN_MLFLOW_DIR          folder for the SQLite file, server.log and server.pid (default ~/progan-mlflow).
# S3 access: on AWS the server uses the head's instance profile. For MinIO or SeaweedFS, set
# AWS_ENDPOINT_URL (or MLFLOW_S3_ENDPOINT_URL) and keep the keys in ~/.aws/credentials on the head.
# Running it again while the server is up only prints the URI. Stop the server with
#   kill -- -$(cat ~/progan-mlflow/server.pid)
set -euo pipefail

readonly HEALTH_TIMEOUT_S=120

fail() {
    echo "start_mlflow.sh: $*" >&2
    exit "${2:-2}"
}

# Print a database URI with its password replaced by ***.
mask_password() {
    sed -E 's#(://[^:/@]+):[^@]*@#\1:***@#' <<<"$1"
}

# Print the address that Ray uses for this node, so that the workers can reach the server there.
node_ip() {
    python3 -c 'import ray.util; print(ray.util.get_node_ip_address())'
}

# Wait until GET /health of $1 returns OK. Fail if process $2 exits or the wait times out.
wait_healthy() {
    local uri=$1 pid=$2 log=$3
    local deadline=$((SECONDS + HEALTH_TIMEOUT_S))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$log" >&2 || true
            fail "MLflow server exited during start-up. Full log: $log" 1
        fi
        # An empty ProxyHandler keeps http_proxy settings from routing this request elsewhere.
        if python3 - "$uri/health" <<'EOF' 2>/dev/null; then
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
with opener.open(sys.argv[1], timeout=2) as response:
    sys.exit(0 if response.read().strip() == b"OK" else 1)
EOF
            return 0
        fi
        sleep 1
    done
    kill -- "-$pid" 2>/dev/null || true
    fail "timed out after ${HEALTH_TIMEOUT_S}s waiting for MLflow at $uri, so stopped it. Log: $log" 1
}

command -v python3 >/dev/null || fail "python3 not found. Activate the environment that progan is installed in."
python3 -c 'import mlflow, boto3' 2>/dev/null \
    || fail "python3 ($(command -v python3)) cannot import mlflow and boto3. Run setup_node.sh first."

artifacts=${PROGAN_MLFLOW_ARTIFACTS:-}
[[ -n $artifacts ]] || fail "PROGAN_MLFLOW_ARTIFACTS is not set. Set it to the artifact location, e.g. s3://my-bucket/mlflow"
[[ $artifacts == s3://?* ]] || fail "PROGAN_MLFLOW_ARTIFACTS must be an s3:// URI, got: $artifacts"

state_dir=${PROGAN_MLFLOW_DIR:-$HOME/progan-mlflow}
mkdir -p "$state_dir"
state_dir=$(cd "$state_dir" && pwd)
backend=${PROGAN_MLFLOW_BACKEND_URI:-sqlite:///$state_dir/mlflow.db}
port=${PROGAN_MLFLOW_PORT:-5000}
workers=${PROGAN_MLFLOW_WORKERS:-4}
host=${PROGAN_MLFLOW_HOST:-$(node_ip)}
uri="http://$host:$port"
pid_file=$state_dir/server.pid
uri_file=$state_dir/server.uri
log=$state_dir/server.log

case $backend in
    postgresql://*|postgresql+psycopg2://*)
        python3 -c 'import psycopg2' 2>/dev/null \
            || fail "PostgreSQL backend needs psycopg2: python3 -m pip install psycopg2-binary" ;;
    postgresql+psycopg://*)
        python3 -c 'import psycopg' 2>/dev/null \
            || fail "PostgreSQL backend needs psycopg: python3 -m pip install 'psycopg[binary]'" ;;
esac

if [[ -f $pid_file ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
    echo "start_mlflow.sh: server already running (pid $(cat "$pid_file")), log: $log" >&2
    echo "MLFLOW_TRACKING_URI=$(cat "$uri_file")"
    exit 0
fi

# A non-AWS store (MinIO, SeaweedFS) serves buckets as paths and needs its endpoint for the proxy.
if [[ -n ${AWS_ENDPOINT_URL:-} || -n ${MLFLOW_S3_ENDPOINT_URL:-} ]]; then
    export MLFLOW_S3_ENDPOINT_URL=${MLFLOW_S3_ENDPOINT_URL:-$AWS_ENDPOINT_URL}
    export MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE=${MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE:-path}
fi
# The GenAI job runner starts extra consumer processes that training runs never use.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}

echo "start_mlflow.sh: starting MLflow on $uri, backend $(mask_password "$backend"), artifacts $artifacts" >&2
# setsid gives the server its own process group, so one kill stops it and its workers.
setsid python3 -m mlflow server \
    --host "$host" --port "$port" --workers "$workers" \
    --backend-store-uri "$backend" \
    --serve-artifacts --artifacts-destination "$artifacts" \
    >"$log" 2>&1 </dev/null &
server_pid=$!
echo "$server_pid" >"$pid_file"
echo "$uri" >"$uri_file"

wait_healthy "$uri" "$server_pid" "$log"
echo "start_mlflow.sh: MLflow is up (pid $server_pid), log: $log" >&2
echo "MLFLOW_TRACKING_URI=$uri"
