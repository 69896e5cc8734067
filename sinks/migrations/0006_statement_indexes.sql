-- 0006: indexes for balances at an instant and statements (GET /v1/accounts/{n}/balance
-- and /statement, gateway/store.py).
--
-- Both read one account's postings. A balance is a sum over the postings stamped up
-- to an instant; a statement page is the postings of a time window in the account's
-- own order (`sequence`) after a cursor.
--
--   * The time index of 0001 (account_id, occurred_at, event_id) found the rows of a
--     sum but fetched every one from the heap for its amount; nothing else reads it.
--     It is replaced by one that carries the amount and the sequence, so the sums
--     are index-only scans (a 300,000-posting account, 17,000 of them summed: 2,152
--     buffers -> 252).
--   * (account_id, sequence) reads a page in order from its cursor instead of
--     sorting the whole window for every page: 58 ms -> 0.3 ms for the first page of
--     a year of that account, and paging a window stays linear in its length.
--
-- The sink pays for one more index per posting: 7.6-8.8 -> 12.3-13.0 us per posting
-- inserted in a synthetic test (1M postings over 5,000 accounts, batches of 5,000).
-- Building them locks `postings` against the sink's writes for the duration; on a
-- large read model, run the migration when a pause of the sink is acceptable.

DROP INDEX postings_account_time_idx;
CREATE INDEX postings_account_time_idx ON postings (account_id, occurred_at) INCLUDE (amount, sequence);
CREATE INDEX postings_account_seq_idx ON postings (account_id, sequence) INCLUDE (occurred_at, amount);
