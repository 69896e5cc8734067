#!/usr/bin/env bash
# The README's quickstart with curl: two users, money in, a payment, a balance.
# Needs a running stack (`make up`) and an admin (`.venv/bin/paystream admin create-user
# --email admin@example.com --role admin`); CI runs this script as it stands.
#
#   PAYSTREAM_ADMIN_EMAIL=admin@example.com PAYSTREAM_ADMIN_PASSWORD='...' bash examples/quickstart.sh
set -euo pipefail
API=${PAYSTREAM_API_URL:-http://127.0.0.1:8080}
JSON=(-H 'Content-Type: application/json')

get() {  # a field of the JSON on stdin: get account account_number
  python3 -c 'import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1:]:
    v = v[k]
print(v)' "$@"
}
key() { cat /proc/sys/kernel/random/uuid; }  # a fresh Idempotency-Key
login() { curl -sf "$API/v1/auth/login" "${JSON[@]}" -d "{\"email\": \"$1\", \"password\": \"$2\"}" | get access_token; }

# 1. two users; each gets an EUR account at registration
suffix=$(key | cut -c1-8)
for who in alice bob; do
  curl -sf "$API/v1/auth/register" "${JSON[@]}" \
       -d "{\"email\": \"$who-$suffix@example.com\", \"password\": \"Correct horse 42\", \"name\": \"$who\", \"currency\": \"EUR\"}" \
    | get account account_number > "/tmp/quickstart-$suffix-$who"
done
ALICE_ACCOUNT=$(cat "/tmp/quickstart-$suffix-alice") BOB_ACCOUNT=$(cat "/tmp/quickstart-$suffix-bob")
rm -f "/tmp/quickstart-$suffix-"*
ALICE=$(login "alice-$suffix@example.com" "Correct horse 42")
until [ "$(curl -sf "$API/v1/accounts/$ALICE_ACCOUNT" -H "Authorization: Bearer $ALICE" | get status)" = active ]; do
  sleep 0.2  # the ledger opens the account a moment after registration
done

# 2. an admin puts 100.00 EUR on Alice's account
ADMIN=$(login "$PAYSTREAM_ADMIN_EMAIL" "$PAYSTREAM_ADMIN_PASSWORD")
curl -sf "$API/v1/accounts/$ALICE_ACCOUNT/deposits" "${JSON[@]}" -H "Authorization: Bearer $ADMIN" \
     -H "Idempotency-Key: $(key)" -d '{"amount": "100.00", "currency": "EUR"}' | get status

# 3. Alice pays Bob 12.50 EUR: 201 and "completed" once the ledger applied it
curl -sf "$API/v1/payments" "${JSON[@]}" -H "Authorization: Bearer $ALICE" -H "Idempotency-Key: $(key)" \
     -d "{\"from_account\": \"$ALICE_ACCOUNT\", \"to_account\": \"$BOB_ACCOUNT\", \"amount\": \"12.50\", \"currency\": \"EUR\"}" \
  | get status

# 4. her balance, as the read model shows it
balance=$(curl -sf "$API/v1/accounts/$ALICE_ACCOUNT" -H "Authorization: Bearer $ALICE" | get balance)
echo "alice: $balance EUR"
[ "$balance" = "87.50" ]
