-- 0004: the owner of a review's sending account, carried by the alert since
-- fraud.alerts v2, so the decision can be told to that user (REVIEW_DECIDED).
ALTER TABLE reviews ADD COLUMN IF NOT EXISTS sender_owner_id text;
