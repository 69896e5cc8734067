#!/bin/sh
# A Kafka password per principal for docker-compose.yml, in .secrets/kafka (git-ignored),
# each readable by its owner only. Existing files are kept: running it again changes nothing.
set -eu
cd "$(dirname "$0")/../.."
umask 077
mkdir -p .secrets/kafka
for p in admin controller ledger gateway sink fraud compensation reviews notifications webhooks outbox-relay; do
  f=.secrets/kafka/$p
  [ -s "$f" ] || head -c 32 /dev/urandom | base64 | tr -d '/+=\n' > "$f"
done
echo "Kafka passwords in $(pwd)/.secrets/kafka"
