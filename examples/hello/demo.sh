#!/usr/bin/env bash
# The README demo: add three items, run (they stop at the `approve` review),
# approve them all, run again (they finish). Starts from an empty store each time.
set -euo pipefail
cd "$(dirname "$0")"
rm -rf .treadle

treadle add items.jsonl
treadle run
treadle review list
treadle review approve --all --stage approve
treadle run
treadle status greeting
echo "events journal: examples/hello/.treadle/events.jsonl"
