//! Event definition files: the original engine's `config/tasker/events/*.yml`.
//!
//! ```yaml
//! events:
//!   custom:                            # a category (the original's files use `custom`)
//!     order_processed:                 # a key, for people
//!       constant: "order.processed"    # the event's name
//!       description: "Fired when an order is fully processed"
//!       payload_schema:
//!         order_id: { type: "String", required: true }
//!         total_amount: { type: "Float", required: true }
//!       fired_by: ["OrderService"]
//! ```
//!
//! A defined event may be published by any handler (a template need not declare it), and its
//! payload is checked against `payload_schema` when it is published: each required key present
//! and not null, each present key of its type. Other keys are allowed, as in the original.
//! Definitions are stored ([`crate::Engine::register_events`]), so every process opened after
//! a registration knows them.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One defined custom event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventDefinition {
    /// The event's name (the file's `constant`): namespaced, as the original's
    /// `register_custom_event` asks ([`super::check_custom_event_name`]).
    pub name: String,
    /// The entry's key in the file (`order_processed`).
    pub key: String,
    /// The category the file files it under (`events: <category>: ...`; `custom` in the
    /// original's files).
    #[serde(default = "custom_category")]
    pub category: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Payload keys in the file's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub payload_schema: Vec<PayloadField>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fired_by: Vec<String>,
    /// The file it came from, when it came from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

fn custom_category() -> String {
    "custom".into()
}

/// One key of a payload schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadField {
    pub key: String,
    /// As written in the file (`String`, `Float`, `Time`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    pub required: bool,
}

/// The payload types the original's files use, and the JSON each accepts.
const TYPES: &[(&str, &str)] = &[
    ("String", "a string"),
    ("Symbol", "a string"),
    ("Integer", "an integer"),
    ("Float", "a number"),
    ("Numeric", "a number"),
    ("Boolean", "true or false"),
    (
        "Time",
        "an RFC 3339 time (\"2026-12-07T10:00:00Z\") or epoch seconds",
    ),
    (
        "DateTime",
        "an RFC 3339 time (\"2026-12-07T10:00:00Z\") or epoch seconds",
    ),
    ("Date", "a date (\"2026-12-07\")"),
    ("Array", "an array"),
    ("Hash", "an object"),
    ("Object", "any value"),
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRaw {
    /// Category -> key -> entry.
    events: serde_json::Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryRaw {
    constant: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    payload_schema: serde_json::Map<String, Value>,
    #[serde(default)]
    fired_by: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldRaw {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    required: bool,
}

/// Parses an event definition file's text; `source` names it in errors. The error names the
/// place (`events.custom.order_processed.constant: ...`).
pub fn parse_event_definitions(text: &str, source: &str) -> Result<Vec<EventDefinition>, String> {
    // serde_norway keeps a mapping's order only into its own Value; go through it.
    let yaml: serde_norway::Value =
        serde_norway::from_str(text).map_err(|e| format!("{source}: YAML syntax error: {e}"))?;
    let categories = keys_in_order(yaml.get("events"));
    let doc: Value =
        serde_json::to_value(&yaml).map_err(|e| format!("{source}: not JSON-able YAML: {e}"))?;
    let raw: FileRaw = serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        format!(
            "{source}: {}: {} ({SHAPE})",
            if path == "." {
                "the top level".to_owned()
            } else {
                path
            },
            e.into_inner()
        )
    })?;
    let mut out = Vec::new();
    for (category, entries) in ordered(raw.events, &categories) {
        let Value::Object(entries) = entries else {
            return Err(format!(
                "{source}: events.{category}: expected a mapping of events ({SHAPE})"
            ));
        };
        let order = keys_in_order(yaml.get("events").and_then(|e| e.get(category.as_str())));
        for (key, entry) in ordered(entries, &order) {
            out.push(parse_entry(&yaml, source, &category, key, entry)?);
        }
    }
    let mut seen = BTreeMap::new();
    for d in &out {
        if let Some(first) = seen.insert(d.name.as_str(), (d.category.as_str(), d.key.as_str())) {
            return Err(format!(
                "{source}: events.{}.{} and events.{}.{} both define {:?}",
                d.category, d.key, first.0, first.1, d.name
            ));
        }
    }
    Ok(out)
}

const SHAPE: &str = "an event definition file is `events: <category>: <key>: {constant, description, payload_schema, fired_by}`";

/// One entry `events.<category>.<key>`.
fn parse_entry(
    yaml: &serde_norway::Value,
    source: &str,
    category: &str,
    key: String,
    entry: Value,
) -> Result<EventDefinition, String> {
    let place = format!("{source}: events.{category}.{key}");
    let e: EntryRaw = serde_path_to_error::deserialize(entry).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            place.clone()
        } else {
            format!("{place}.{path}")
        };
        format!("{at}: {}", e.into_inner())
    })?;
    super::check_custom_event_name(&e.constant)
        .map_err(|why| format!("{place}.constant: {why}"))?;
    let field_order = keys_in_order(
        yaml.get("events")
            .and_then(|e| e.get(category))
            .and_then(|c| c.get(key.as_str()))
            .and_then(|e| e.get("payload_schema")),
    );
    let mut payload_schema = Vec::new();
    for (field, spec) in ordered(e.payload_schema, &field_order) {
        let f: FieldRaw = serde_path_to_error::deserialize(spec).map_err(|err| {
            format!(
                "{place}.payload_schema.{field}: {} (a field is {{type: String, required: true}})",
                err.into_inner()
            )
        })?;
        if !TYPES.iter().any(|(t, _)| *t == f.kind) {
            return Err(format!(
                "{place}.payload_schema.{field}.type: unknown type {:?} (one of {})",
                f.kind,
                TYPES.iter().map(|(t, _)| *t).collect::<Vec<_>>().join(", ")
            ));
        }
        payload_schema.push(PayloadField {
            key: field,
            kind: f.kind,
            required: f.required,
        });
    }
    Ok(EventDefinition {
        name: e.constant,
        key,
        category: category.to_owned(),
        description: e.description,
        payload_schema,
        fired_by: e.fired_by,
        source: Some(source.to_owned()),
    })
}

/// The definitions of a file, or of every `*.yml` / `*.yaml` file of a directory (by name).
pub fn read_event_definitions(path: &Path) -> Result<Vec<EventDefinition>, String> {
    let files = if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f)
            .map_err(|e| format!("event definition file {}: {e}", f.display()))?;
        out.extend(parse_event_definitions(&text, &f.display().to_string())?);
    }
    Ok(out)
}

impl EventDefinition {
    /// Checks a payload against the schema: every problem, each naming its key.
    pub fn check_payload(&self, payload: &Value) -> Result<(), String> {
        if self.payload_schema.is_empty() {
            return Ok(());
        }
        let Some(obj) = payload.as_object() else {
            return Err(format!(
                "custom event {}: the payload must be an object with {}",
                self.name,
                self.payload_schema
                    .iter()
                    .map(|f| f.key.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        let mut problems = Vec::new();
        for f in &self.payload_schema {
            match obj.get(&f.key) {
                None | Some(Value::Null) if f.required => {
                    problems.push(format!("/{}: required ({})", f.key, f.kind))
                }
                None | Some(Value::Null) => {}
                Some(v) if !matches_type(&f.kind, v) => {
                    let want = TYPES
                        .iter()
                        .find(|(t, _)| *t == f.kind)
                        .map_or("?", |(_, w)| w);
                    problems.push(format!("/{}: {v} is not {} ({want})", f.key, f.kind));
                }
                Some(_) => {}
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "custom event {}: the payload breaks its payload_schema: {}",
                self.name,
                problems.join("; ")
            ))
        }
    }
}

fn matches_type(kind: &str, v: &Value) -> bool {
    match kind {
        "String" | "Symbol" => v.is_string(),
        "Integer" => v.is_i64() || v.is_u64(),
        "Float" | "Numeric" => v.is_number(),
        "Boolean" => v.is_boolean(),
        "Time" | "DateTime" => {
            v.is_number()
                || v.as_str()
                    .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok())
        }
        "Date" => v
            .as_str()
            .is_some_and(|s| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()),
        "Array" => v.is_array(),
        "Hash" => v.is_object(),
        _ => true,
    }
}

/// A YAML mapping's keys in the file's order (serde_json's map sorts them).
fn keys_in_order(v: Option<&serde_norway::Value>) -> Vec<String> {
    v.and_then(serde_norway::Value::as_mapping)
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A map's entries in `order` (keys not in it, if any, after, sorted).
fn ordered(mut map: serde_json::Map<String, Value>, order: &[String]) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = order
        .iter()
        .filter_map(|k| map.remove(k).map(|v| (k.clone(), v)))
        .collect();
    out.extend(map);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FILE: &str = r#"---
# Domain events, as the original's files write them.
events:
  custom:
    order_shipped:
      constant: "order.shipped"
      description: "Fired when an order is shipped"
      payload_schema:
        order_id: { type: "String", required: true }
        weight: { type: "Float", required: false }
        shipped_at: { type: "Time", required: true }
      fired_by: ["FulfillmentService", "ShippingService"]
    order_cancelled:
      constant: order.cancelled
"#;

    #[test]
    fn a_file_parses_in_its_order_with_each_field() {
        let d = parse_event_definitions(FILE, "orders.yml").unwrap();
        assert_eq!(
            d.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
            ["order.shipped", "order.cancelled"]
        );
        assert_eq!(
            d[0].payload_schema
                .iter()
                .map(|f| (f.key.as_str(), f.kind.as_str(), f.required))
                .collect::<Vec<_>>(),
            [
                ("order_id", "String", true),
                ("weight", "Float", false),
                ("shipped_at", "Time", true)
            ]
        );
        assert_eq!(d[0].fired_by, ["FulfillmentService", "ShippingService"]);
        assert_eq!(d[1].description, None);
    }

    #[test]
    fn payloads_are_checked_key_by_key() {
        let d = &parse_event_definitions(FILE, "orders.yml").unwrap()[0];
        assert_eq!(
            d.check_payload(
                &json!({"order_id": "o1", "shipped_at": "2026-12-07T10:00:00Z", "extra": 1})
            ),
            Ok(())
        );
        let err = d
            .check_payload(&json!({"weight": "heavy", "shipped_at": "yesterday"}))
            .unwrap_err();
        assert!(err.contains("/order_id: required (String)"), "{err}");
        assert!(
            err.contains("/weight: \"heavy\" is not Float (a number)"),
            "{err}"
        );
        assert!(
            err.contains("/shipped_at: \"yesterday\" is not Time"),
            "{err}"
        );
        assert!(d
            .check_payload(&json!([1]))
            .unwrap_err()
            .contains("must be an object"));
    }

    #[test]
    fn bad_files_name_the_place() {
        for (text, want) in [
            (
                "events: {custom: {x: {description: d}}}",
                "events.custom.x: missing field `constant`",
            ),
            (
                "events: {custom: {x: {constant: shipped}}}",
                "events.custom.x.constant: \"shipped\" must contain a '.'",
            ),
            ("events: {custom: {x: {constant: task.done}}}", "reserved"),
            (
                "events: {custom: {x: {constant: a.b, payload_schema: {k: {type: Money}}}}}",
                "payload_schema.k.type: unknown type \"Money\"",
            ),
            (
                "events: {custom: [1]}",
                "events.custom: expected a mapping of events",
            ),
            (
                "custom: {}",
                "custom: unknown field `custom`, expected `events`",
            ),
            ("{}", "the top level: missing field `events`"),
            (
                "events: {custom: {x: {constant: a.b}, y: {constant: a.b}}}",
                "both define \"a.b\"",
            ),
        ] {
            let err = parse_event_definitions(text, "f.yml").unwrap_err();
            assert!(
                err.starts_with("f.yml: ") && err.contains(want),
                "{text}: {err}"
            );
        }
    }
}
