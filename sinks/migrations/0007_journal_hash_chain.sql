-- 0007: the ledger's hash chain in the read model (docs/LEDGER.md, "Tamper-evident
-- journal"). Each event carries `prev_hash` (the hash of the event before it on
-- its account) and `hash` (SHA-256 of its canonical JSON); `paystream verify`
-- recomputes every row's hash from the row itself (with its postings) and follows
-- the links, so an edited row is named. That needs every field the hash covers:
-- all were columns already except `account`, the new account of ACCOUNT_OPENED,
-- which only the `accounts` table held (and not always: a second account claiming
-- a taken number is stored there without it).
--
-- Rows written before the chain existed keep NULLs: unchained, as their events are.
ALTER TABLE ledger_events ADD COLUMN IF NOT EXISTS prev_hash text;
ALTER TABLE ledger_events ADD COLUMN IF NOT EXISTS hash text;
ALTER TABLE ledger_events ADD COLUMN IF NOT EXISTS account jsonb;
