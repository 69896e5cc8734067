-- 0005: one offsets table for every Kafka-to-Postgres intake.
--
-- The read-model sink kept its positions in `sink_offsets` (0001), the reviews and
-- webhooks intakes theirs in `downstream_offsets` (0003): two tables of the same
-- shape, written by two copies of one loop. The loop is now one
-- (`paystream/stream/pg_intake.py`) and so is the table. `sink_offsets` stays, under
-- its name (docs/CONTRACTS.md documents it as the read model's position and
-- `paystream verify` reads it), and takes the downstream positions over; the
-- `consumer` column tells the intakes apart (`paystream-sink`, `reviews`,
-- `webhooks`). Intakes refuse to start until this migration is applied
-- (`pg_intake.check_schema`): looking for their positions here before the copy, they
-- would find none and replay their topics from the beginning.
--
-- Positions carry over exactly, as they were committed. The lock comes first: a
-- worker still running the old code cannot then commit a batch (its rows with its
-- offset in `downstream_offsets`) between the copy and the drop, which would lose
-- that offset and make the batch be applied twice. Such a worker waits, and once the
-- table is gone its transaction fails and rolls back (rows too); the new code reads
-- the batch again from the copied position. Nothing is skipped either: a position
-- the read model's table already holds for the same consumer, topic and partition
-- would be two owners of one name, so the migration stops instead of guessing which
-- one is right.

LOCK TABLE downstream_offsets IN ACCESS EXCLUSIVE MODE;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM downstream_offsets d
               JOIN sink_offsets s USING (consumer, topic, partition)) THEN
        RAISE EXCEPTION 'sink_offsets already holds positions of consumers in downstream_offsets;'
            ' resolve the clash by hand before migrating';
    END IF;
END $$;

INSERT INTO sink_offsets (consumer, topic, partition, next_offset, updated_at)
SELECT consumer, topic, partition, next_offset, updated_at FROM downstream_offsets;

DROP TABLE downstream_offsets;

COMMENT ON TABLE sink_offsets IS
    'Next offset to read per (consumer, topic, partition) of every Kafka-to-Postgres intake'
    ' (paystream/stream/pg_intake.py: the sink, reviews, webhooks), committed in the same'
    ' transaction as the rows it produced. Kafka''s group offsets are informational only.';
