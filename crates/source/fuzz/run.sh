#!/usr/bin/env bash
# Short fuzz run of cairn-source's commit-header/SSHSIG parser.
#   crates/source/fuzz/run.sh [SECONDS]      (default 20)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec "$here/../../../scripts/fuzz.sh" "$here" commit_sshsig "$here/../../../target-fuzz" "${1:-20}"
