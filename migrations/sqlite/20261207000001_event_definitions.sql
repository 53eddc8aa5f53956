-- Custom events defined by event definition files (the original's config/tasker/events/*.yml):
-- one row per event name, replaced when registered again.
CREATE TABLE event_definitions (
    name          TEXT    PRIMARY KEY,
    definition    TEXT    NOT NULL,   -- events::EventDefinition as JSON
    registered_at INTEGER NOT NULL
);
