-- The cycle functions no longer carry `SET enable_seqscan = off` (20261128000003): a function
-- with a SET clause saves, sets and restores the setting at every call, which cost ~0.15 ms a
-- call (pg_stat_statements, W3: tasker_cycle 1.24 -> 0.79 ms with its nested calls). The
-- engine's connections start with `enable_seqscan=off` instead (a startup option, no round
-- trip), so the functions run with the same plans.
ALTER FUNCTION tasker_update_steps RESET enable_seqscan;
ALTER FUNCTION tasker_decrement_parents RESET enable_seqscan;
ALTER FUNCTION tasker_park RESET enable_seqscan;
ALTER FUNCTION tasker_unpark RESET enable_seqscan;
ALTER FUNCTION tasker_write_final RESET enable_seqscan;
ALTER FUNCTION tasker_claim RESET enable_seqscan;
ALTER FUNCTION tasker_cycle RESET enable_seqscan;
ALTER FUNCTION tasker_create RESET enable_seqscan;
