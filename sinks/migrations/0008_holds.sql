-- 0008: holds (two-phase transfers: AUTHORIZE, CAPTURE, VOID, expiry).
--
-- A hold lowers an account's available balance and leaves its posted balance
-- (`balance`, the sum of postings) alone, so the read model keeps the held total
-- beside it. Hold events carry `held_after`, the total after them; like `status`,
-- the value of the highest sequence wins, so the order batches arrive in does not
-- matter. Available = balance - held.
ALTER TABLE accounts
    ADD COLUMN held          bigint NOT NULL DEFAULT 0,
    ADD COLUMN held_sequence bigint;

-- Hold events state both in `ledger_events` too: the row keeps every field of its
-- event, so that `paystream verify` can recompute the event's hash from the row.
ALTER TABLE ledger_events
    ADD COLUMN held_after bigint,
    ADD COLUMN expires_at timestamptz;

-- A payment made with "capture": false starts REQUIRES_CAPTURE with the authorized
-- amount; `amount` stays null until money moves (the captured amount, which a
-- partial capture makes smaller), and then CANCELED (voided) or EXPIRED end it
-- without moving anything.
ALTER TABLE payments
    ADD COLUMN authorized_amount bigint,
    ADD COLUMN hold_expires_at   timestamptz;

-- REQUIRES_CAPTURE ranks below PENDING: a capture (PENDING) or an end (CANCELED,
-- EXPIRED, and after a capture COMPLETED, FAILED, REVERSED) always replaces it.
CREATE OR REPLACE FUNCTION payment_status_rank(status text) RETURNS int
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT CASE status WHEN 'REQUIRES_CAPTURE' THEN -1 WHEN 'PENDING' THEN 0
                             WHEN 'REVERSED' THEN 2 ELSE 1 END $$;
