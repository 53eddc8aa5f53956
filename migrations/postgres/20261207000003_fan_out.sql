-- Fan-out and checkpoints (issue 25). A `batch_worker` step of a template has one row per item
-- its `batchable` parent returned: `batch_index` (0-based, NULL for every other step) and
-- `batch` (the item) tell them apart, so a step is unique by (task, position, instance).
-- `checkpoint` is the value a step's handler last saved (`step.save_checkpoint`), seen by its
-- next attempt. Functions of older builds insert and read these rows as before (the columns
-- are NULL for their steps).
ALTER TABLE steps ADD COLUMN batch_index BIGINT;
ALTER TABLE steps ADD COLUMN batch JSONB;
ALTER TABLE steps ADD COLUMN checkpoint JSONB;
CREATE UNIQUE INDEX steps_by_task_position ON steps (task_id, position, COALESCE(batch_index, -1));
ALTER TABLE steps DROP CONSTRAINT steps_task_id_position_key;
