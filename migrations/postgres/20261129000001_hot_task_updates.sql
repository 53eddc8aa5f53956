-- Fewer index writes per step (issue 13). Every step changes its task row twice (claimed,
-- finished) and writes four transition rows; each of those wrote an entry into every index of
-- its table.
--
-- * A task's updates become HOT (heap-only: no index entry at all) once no index covers a
--   column they change. `tasks_by_state` was the only one (state); it goes, and task pages keep
--   room for the new row versions (fillfactor 70). Listing tasks by state reads the tasks
--   newest first and filters (the API lists by id order with a limit anyway).
-- * Transition rows keep their `id` (it orders rows written in one instant), but no longer
--   carry a primary-key index: nothing looks them up by id; a history is read through
--   (step_id, sort_key) and (task_id, sort_key).
DROP INDEX tasks_by_state;
ALTER TABLE tasks SET (fillfactor = 70);
ALTER TABLE task_transitions DROP CONSTRAINT task_transitions_pkey;
ALTER TABLE step_transitions DROP CONSTRAINT step_transitions_pkey;
