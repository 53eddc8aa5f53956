-- The engine's PL/pgSQL functions now live one per file in migrations/postgres/functions/,
-- each under a versioned name (`tasker_apply_v1`), installed by the engine after these table
-- migrations (`core/src/store/postgres/functions.rs`; ARCHITECTURE.md, "How a change to a SQL
-- function ships"). From here on, table migrations change tables only.
--
-- This one retires the functions the migrations before it defined: the cycle, creation and
-- claim functions with parallel-array parameters (up to 54 of them) and their helpers, whose
-- work `tasker_apply_v1` and `tasker_claim_v1` now do. A worker of an older build still
-- running when this migration is applied loses them: stop older workers before upgrading
-- past this migration (once; later upgrades keep both builds' functions).
DROP FUNCTION IF EXISTS tasker_cycle;
DROP FUNCTION IF EXISTS tasker_create;
DROP FUNCTION IF EXISTS tasker_claim;
DROP FUNCTION IF EXISTS tasker_write_final;
DROP FUNCTION IF EXISTS tasker_update_steps;
DROP FUNCTION IF EXISTS tasker_decrement_parents;
DROP FUNCTION IF EXISTS tasker_park;
DROP FUNCTION IF EXISTS tasker_unpark;
DROP TYPE IF EXISTS tasker_claimed;

-- Which revision of each function file is installed (see functions.rs).
CREATE TABLE tasker_functions (
    name         TEXT PRIMARY KEY,
    revision     INTEGER NOT NULL,
    sha256       TEXT    NOT NULL,
    installed_at BIGINT  NOT NULL
);
