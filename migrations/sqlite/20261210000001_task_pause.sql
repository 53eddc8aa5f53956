-- A paused task (issue 27): no new step of it starts (its claimable steps are parked, as a
-- blocked task's are), running ones finish.
ALTER TABLE tasks ADD COLUMN paused INTEGER NOT NULL DEFAULT 0;
