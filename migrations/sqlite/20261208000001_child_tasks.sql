-- Child tasks (issue 25). A step whose handler returned ChildTask(...) is `waiting` while the
-- task it created runs; that task names its parent: `parent_task_id` and `parent_step_id`
-- (NULL for a task created any other way). The newest child of a step (the highest task_id)
-- is the one it waits for. The indexes: a step's children, a task's children, the waiting
-- steps (the sweep that hands a finished child's outcome to its parent after a crash).
ALTER TABLE tasks ADD COLUMN parent_task_id INTEGER;
ALTER TABLE tasks ADD COLUMN parent_step_id INTEGER;
CREATE INDEX tasks_by_parent_step ON tasks (parent_step_id, task_id) WHERE parent_step_id IS NOT NULL;
CREATE INDEX tasks_by_parent_task ON tasks (parent_task_id, task_id) WHERE parent_task_id IS NOT NULL;
CREATE INDEX steps_waiting ON steps (step_id) WHERE state = 'waiting';
