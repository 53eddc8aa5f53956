-- A paused task (issue 27): no new step of it starts (its claimable steps are parked, as a
-- blocked task's are), running ones finish. Adding a column with a constant default rewrites
-- no rows.
ALTER TABLE tasks ADD COLUMN paused BOOLEAN NOT NULL DEFAULT false;
