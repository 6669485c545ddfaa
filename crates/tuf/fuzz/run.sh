#!/usr/bin/env bash
# Short fuzz run of cairn-tuf's metadata parser (envelope, canonical JSON,
# root/timestamp/snapshot/targets views).
#   crates/tuf/fuzz/run.sh [SECONDS]      (default 20)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec "$here/../../../scripts/fuzz.sh" "$here" metadata "$here/../../../target-fuzz" "${1:-20}"
