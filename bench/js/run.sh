#!/bin/sh
# Run the Langfuse JS SDK end-to-end benchmark against a server that is
# already listening (this script starts nothing).
#
#   bench/js/run.sh URL N [extra e2e.mjs flags...]
#
# Installs the pinned SDK from package-lock.json on first use.
set -eu

if [ $# -lt 2 ]; then
  echo "usage: $0 URL N [--flush-at K] [--flush-interval MS]" \
    "[--mode create|update] [--yield-every K]" >&2
  exit 2
fi
url=$1
traces=$2
shift 2

here=$(cd "$(dirname "$0")" && pwd)
if [ ! -d "$here/node_modules/langfuse" ]; then
  (cd "$here" && npm ci --no-audit --no-fund --ignore-scripts >&2)
fi
exec node "$here/e2e.mjs" --url "$url" --traces "$traces" "$@"
