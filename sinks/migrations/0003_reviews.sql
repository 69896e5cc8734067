-- 0003: fraud reviews (review queue and decision outbox) and webhook deliveries.
-- Owned by pipelines/fraud and pipelines/notifications; nothing here references
-- the read model (0001) or the gateway tables (0002).
--
-- The Kafka-to-Postgres consumers here (`paystream run reviews`, `paystream run
-- webhooks`) are exactly-once the way the sink is: rows and the consumed offsets
-- (`downstream_offsets`) commit in one Postgres transaction, rows are keyed by
-- deterministic ids and inserted with ON CONFLICT DO NOTHING, and on assignment a
-- consumer seeks to the offsets stored here, not to Kafka's.

CREATE TABLE downstream_offsets (
    consumer    text NOT NULL,
    topic       text NOT NULL,
    partition   int NOT NULL,
    next_offset bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition)
);

-- One row per fraud alert (MEDIUM or HIGH), from topic fraud.alerts.
-- state: open -> approved | rejected; a decided review never changes again
-- (enforced by the trigger below, not only by the API).
CREATE TABLE reviews (
    alert_id        uuid PRIMARY KEY,           -- uuid5 of the payment id: one per payment
    payment_id      uuid NOT NULL,
    account_id      uuid NOT NULL,              -- the sender (frozen when risk = HIGH)
    counterparty_id uuid NOT NULL,              -- the receiver
    amount          bigint NOT NULL,
    currency        text NOT NULL,
    score           int NOT NULL,
    risk            text NOT NULL,              -- MEDIUM | HIGH
    reasons         jsonb NOT NULL,             -- [{rule, score, detail}]
    detected_at     timestamptz NOT NULL,       -- event time of the debit
    state           text NOT NULL DEFAULT 'open'
                    CHECK (state IN ('open', 'approved', 'rejected')),
    decision_id     uuid UNIQUE,                -- uuid5 of the alert id: one decision per alert
    decided_by      text,                       -- admin user id
    decided_at      timestamptz,
    note            text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((state = 'open') = (decided_at IS NULL)),
    CHECK ((state = 'open') = (decided_by IS NULL))
);
CREATE INDEX reviews_page_idx ON reviews (detected_at DESC, alert_id DESC);
CREATE INDEX reviews_state_idx ON reviews (state, detected_at DESC, alert_id DESC);
CREATE INDEX reviews_account_idx ON reviews (account_id, detected_at DESC, alert_id DESC);

CREATE FUNCTION reviews_decisions_are_terminal() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state <> 'open' THEN
        RAISE EXCEPTION 'review % is already %', OLD.alert_id, OLD.state
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER reviews_terminal BEFORE UPDATE ON reviews
    FOR EACH ROW EXECUTE FUNCTION reviews_decisions_are_terminal();

-- Transactional outbox for ReviewDecision events: written in the same transaction
-- as the decision, published to fraud.decisions by `paystream run reviews`.
CREATE TABLE review_outbox (
    decision_id  uuid PRIMARY KEY,
    alert_id     uuid NOT NULL UNIQUE,
    message_key  text NOT NULL,                 -- the sender's account id
    payload      jsonb NOT NULL,                -- the ReviewDecision; Avro-encoded at publish
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    attempts     int NOT NULL DEFAULT 0,
    last_error   text
);
CREATE INDEX review_outbox_pending_idx ON review_outbox (created_at) WHERE published_at IS NULL;

-- Webhook endpoints users register (POST /v1/webhooks). The secret signs every
-- delivery (HMAC-SHA256), so it is stored as given out, shown to the user once.
CREATE TABLE webhook_endpoints (
    endpoint_id uuid PRIMARY KEY,
    user_id     text NOT NULL,
    url         text NOT NULL,
    secret      text NOT NULL,
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- per-endpoint scheduling: a worker leases an endpoint, sends its due
    -- deliveries one at a time, then releases it
    lease_owner text,
    lease_until timestamptz
);
CREATE INDEX webhook_endpoints_user_idx ON webhook_endpoints (user_id) WHERE active;

-- One row per (notification, endpoint). pending -> delivered | dead.
CREATE TABLE webhook_deliveries (
    delivery_id     uuid PRIMARY KEY,           -- uuid5 of notification id and endpoint id
    endpoint_id     uuid NOT NULL,
    notification_id uuid NOT NULL,              -- the Paystream-Event-Id header
    user_id         text NOT NULL,
    kind            text NOT NULL,
    body            text NOT NULL,              -- the exact JSON body signed and sent
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    dead_at         timestamptz,                -- the dead-letter record: gave up after the retry period
    last_error      text
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (endpoint_id, next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_notification_idx ON webhook_deliveries (notification_id);

-- Every attempt, for support and for the retry policy's audit.
CREATE TABLE webhook_attempts (
    delivery_id uuid NOT NULL,
    attempt     int NOT NULL,
    started_at  timestamptz NOT NULL,
    duration_ms int NOT NULL,
    status_code int,                            -- null when no HTTP answer (timeout, refused)
    error       text,
    PRIMARY KEY (delivery_id, attempt)
);
