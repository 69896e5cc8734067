-- 0001: the Postgres read model, written only by the sink (`paystream run sink`).
--
-- Postgres is a projection of the `ledger.events` topic, never the source of
-- truth: every row here can be rebuilt by replaying the topic from offset 0
-- (`paystream verify` does exactly that and compares). See docs/READ_MODEL.md.
--
-- Rules the sink follows, which the schema is shaped for:
--   * one Postgres transaction per consumed batch, covering the rows AND the
--     consumed offsets (`sink_offsets`), so a crash at any point leaves either
--     the whole batch or none of it;
--   * events are keyed by their deterministic `event_id`; a replayed event is a
--     no-op (ON CONFLICT DO NOTHING) and money (balance deltas) is derived only
--     from events inserted by the current transaction;
--   * no foreign keys and no CHECK that event data could violate: a constraint
--     the ledger does not guarantee would stop the sink forever on one odd
--     event. Shape checks happen in the sink (bad events go to the dead-letter
--     topic) and consistency checks in `paystream verify`.

-- Every account that has ever appeared in the ledger: user accounts (from
-- ACCOUNT_OPENED) and the per-currency TRANSIT and SETTLEMENT accounts, which
-- the ledger never opens and whose balances exist only as sums of postings.
-- Giving them rows keeps "sum(balance) per currency = 0" a one-line SQL check.
CREATE TABLE accounts (
    account_id      uuid PRIMARY KEY,
    -- The customer-facing number; the gateway looks accounts up by it. Null for
    -- transit/settlement accounts. The ledger cannot enforce uniqueness across
    -- partitions, so the sink stores NULL (and logs) for a second account that
    -- claims a number already taken instead of failing the batch.
    external_number text UNIQUE,
    owner_id        text,
    currency        text,
    kind            text NOT NULL,          -- USER | SETTLEMENT | TRANSIT
    status          text,                   -- ACTIVE | FROZEN; null if never opened
    -- Sum of this account's postings, in minor units. Updated by net deltas of
    -- newly inserted events only, so a replay never double-counts.
    balance         bigint NOT NULL DEFAULT 0,
    last_sequence   bigint,                 -- highest ledger sequence of events keyed by it
    status_sequence bigint,                 -- sequence of the event that set `status`
    opened_at       timestamptz,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX accounts_owner_idx ON accounts (owner_id);

-- Order of payment states for the sink's monotonic merge: a status may only be
-- replaced by one of higher rank. Partitions are consumed independently, so a
-- transfer's TRANSFER_COMPLETED (receiver's partition) may be read before its
-- TRANSFER_DEBITED (sender's), and TRANSFER_REVERSED before either; ranking
-- makes the result independent of that order.
CREATE FUNCTION payment_status_rank(status text) RETURNS int
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT CASE status WHEN 'PENDING' THEN 0 WHEN 'REVERSED' THEN 2 ELSE 1 END $$;

-- One row per money movement (payment_id = the command id of the movement).
CREATE TABLE payments (
    payment_id   uuid PRIMARY KEY,
    kind         text NOT NULL,             -- TRANSFER | DEPOSIT | WITHDRAW
    -- Money leaves `from_account` and reaches `to_account`; deposits come from
    -- and withdrawals go to the currency's settlement account.
    from_account uuid,
    to_account   uuid,
    amount       bigint,
    currency     text,
    -- PENDING (debited, in transit) -> COMPLETED | FAILED (refunded) | REJECTED,
    -- and COMPLETED -> REVERSED after a chargeback. Never backwards.
    status       text NOT NULL,
    reason       text,                      -- reason code of FAILED/REJECTED, note of REVERSED
    requested_by text,
    description  text,                      -- movement metadata["description"], if any
    created_at   timestamptz NOT NULL,      -- earliest event seen for it
    updated_at   timestamptz NOT NULL       -- latest event seen for it
);
CREATE INDEX payments_from_idx ON payments (from_account, created_at);
CREATE INDEX payments_to_idx ON payments (to_account, created_at);

-- Every ledger event, as emitted: the per-account history that
-- GET /transactions pages through (by account_id, sequence), including
-- rejections and replays, which move no money.
CREATE TABLE ledger_events (
    event_id        uuid PRIMARY KEY,       -- deterministic, the idempotency key of the sink
    account_id      uuid NOT NULL,          -- the account whose partition emitted it
    sequence        bigint NOT NULL,        -- per account, gapless from 1
    type            text NOT NULL,
    command_type    text NOT NULL,
    command_id      uuid NOT NULL,
    payment_id      uuid NOT NULL,
    status          text NOT NULL,
    terminal        boolean NOT NULL,
    replay          boolean NOT NULL,
    reason          text,
    amount          bigint,
    currency        text,
    counterparty_id uuid,
    balance_after   bigint,
    requested_by    text NOT NULL,
    note            text,
    metadata        jsonb NOT NULL DEFAULT '{}',
    occurred_at     timestamptz NOT NULL,
    topic_partition int NOT NULL,           -- where the sink read it: audit trail back to Kafka
    topic_offset    bigint NOT NULL
);
CREATE INDEX ledger_events_account_seq_idx ON ledger_events (account_id, sequence);
CREATE INDEX ledger_events_payment_idx ON ledger_events (payment_id);

-- The double-entry journal: each event's postings, which sum to zero per
-- currency. `idx` is the posting's position inside its event.
CREATE TABLE postings (
    event_id     uuid NOT NULL,
    idx          smallint NOT NULL,
    payment_id   uuid NOT NULL,
    account_id   uuid NOT NULL,
    account_kind text NOT NULL,
    amount       bigint NOT NULL,           -- signed change of account_id's balance
    currency     text NOT NULL,
    sequence     bigint NOT NULL,           -- sequence of the event (on its emitting account)
    occurred_at  timestamptz NOT NULL,
    PRIMARY KEY (event_id, idx)
);
CREATE INDEX postings_account_time_idx ON postings (account_id, occurred_at, event_id);

-- The sink's position: the next offset to read per partition, committed in the
-- same transaction as the rows it produced. Kafka's committed group offsets are
-- informational only; on (re)assignment the sink seeks to these.
CREATE TABLE sink_offsets (
    consumer    text NOT NULL,
    topic       text NOT NULL,
    partition   int NOT NULL,
    next_offset bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition)
);

-- Administrative actions: every non-replay event of a FREEZE, UNFREEZE or
-- REVERSE_TRANSFER command, with who asked and why. These command types are
-- administrative by nature (admins and the fraud service issue them), so all of
-- them are recorded, refusals included: an audit that trusted a role check
-- would miss exactly the request that should not have happened.
CREATE TABLE audit_log (
    event_id     uuid PRIMARY KEY,
    occurred_at  timestamptz NOT NULL,
    actor        text NOT NULL,             -- requested_by / actor of the command
    action       text NOT NULL,             -- event type, e.g. ACCOUNT_FROZEN, TRANSFER_REVERSED
    command_type text NOT NULL,             -- FREEZE | UNFREEZE | REVERSE_TRANSFER
    command_id   uuid NOT NULL,
    account_id   uuid NOT NULL,
    payment_id   uuid,                      -- the reversed payment, for reversals
    outcome      text NOT NULL,             -- event status: COMPLETED | PENDING | REJECTED
    reason       text                       -- the admin's free-text reason, or the refusal code
);
CREATE INDEX audit_log_account_idx ON audit_log (account_id, occurred_at);
CREATE INDEX audit_log_actor_idx ON audit_log (actor, occurred_at);

-- Fraud reviews and notification deliveries get their own migrations (0003+)
-- from the components that own them; nothing here depends on them.
