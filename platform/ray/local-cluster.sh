#!/usr/bin/env bash
# Start a single-node Ray head for Assay on this machine, reachable only from this machine.
#   bash platform/ray/local-cluster.sh           # start
#   RAY_ADDRESS=127.0.0.1:6379 assay embed ...   # use it
#   ray stop                                     # stop
set -euo pipefail
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
if [ "$RAY_AUTH_MODE" = "token" ] && [ ! -s "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" ]; then
  ray get-auth-token --generate >/dev/null
fi
exec ray start --head --node-ip-address=127.0.0.1 --port=6379 \
  --dashboard-host=127.0.0.1 --include-dashboard="${ASSAY_DASHBOARD:-false}" "$@"
