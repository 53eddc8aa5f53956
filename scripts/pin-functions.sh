#!/usr/bin/env bash
# Rewrites migrations/postgres/functions/REVISIONS from the function files' headers and
# hashes. Run it after giving a changed function file its new revision (or a new _vN name):
# the test `every_function_file_matches_its_pinned_revision_and_hash` holds the two together.
set -euo pipefail
cd "$(dirname "$0")/../migrations/postgres/functions"
{
  echo "# name revision sha256 of the file: pinned, so a changed function file fails a test until it gets a new"
  echo "# revision (or, for a new shape, a new _vN name). See core/src/store/postgres/functions.rs."
  for f in tasker_claim.sql tasker_apply.sql; do
    read -r _ _ name _ rev < <(head -1 "$f")
    echo "$name $rev $(sha256sum "$f" | cut -d' ' -f1)"
  done
} > REVISIONS
cat REVISIONS
