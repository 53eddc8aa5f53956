-- Custom events defined by event definition files (the original's config/tasker/events/*.yml):
-- one row per event name, replaced when registered again.
CREATE TABLE event_definitions (
    name          text   PRIMARY KEY,
    definition    text   NOT NULL,   -- events::EventDefinition as JSON
    registered_at bigint NOT NULL
);
