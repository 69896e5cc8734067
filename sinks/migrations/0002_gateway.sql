-- Gateway tables: who may log in, which external account number belongs to whom,
-- and the outbox that carries OpenAccount commands to Kafka.
-- Nothing here references the read model (0001): the gateway owns these rows and
-- the ledger stays the source of truth for balances and statuses.

CREATE TABLE IF NOT EXISTS users (
    user_id       uuid PRIMARY KEY,
    email         text NOT NULL UNIQUE,          -- normalised: trimmed, lower-case
    password_hash text NOT NULL,                 -- argon2id PHC string
    name          text NOT NULL,
    role          text NOT NULL CHECK (role IN ('user', 'admin')),
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- The gateway's account-number registry: the only place that maps the public
-- number to the internal id, and the ownership record every request checks.
CREATE TABLE IF NOT EXISTS gateway_accounts (
    account_number text PRIMARY KEY,
    account_id     uuid NOT NULL UNIQUE,
    owner_id       uuid NOT NULL REFERENCES users (user_id),
    currency       text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS gateway_accounts_owner ON gateway_accounts (owner_id, created_at);

-- Transactional outbox: a command is written in the same transaction as the rows
-- that need it and published by `paystream run outbox-relay` afterwards.
CREATE TABLE IF NOT EXISTS gateway_outbox (
    id           bigserial PRIMARY KEY,
    topic        text NOT NULL,
    message_key  text NOT NULL,
    payload      jsonb NOT NULL,                 -- the command as a dict; Avro-encoded at publish
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    attempts     int NOT NULL DEFAULT 0,
    last_error   text
);
CREATE INDEX IF NOT EXISTS gateway_outbox_pending ON gateway_outbox (id) WHERE published_at IS NULL;
