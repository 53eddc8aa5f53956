//! The task context against the template's schema: defaults filled in, violations listed.

use serde_json::Value;

use super::TaskTemplate;

impl TaskTemplate {
    /// Fills in the `default`s the template's schema declares for properties the context
    /// lacks, nested objects included (as the original engine's `insert_defaults`). A default
    /// is only inserted where the schema says `properties`, into an object.
    pub fn complete_context(&self, context: &mut Value) {
        if let Some(schema) = &self.schema {
            insert_defaults(schema, context);
        }
    }

    /// True when the template declares the custom event `name`.
    pub fn declares_event(&self, name: &str) -> bool {
        self.custom_event_names.iter().any(|n| n == name)
    }

    /// Validates a task context against the template's JSON Schema (standard `format`s
    /// included). The error lists every violation with its JSON path.
    pub fn validate_context(&self, context: &Value) -> Result<(), Vec<String>> {
        let Some(v) = &self.validator else {
            return Ok(());
        };
        let errors: Vec<String> = v
            .iter_errors(context)
            .map(|e| {
                let path = e.instance_path().to_string();
                let path = if path.is_empty() {
                    "/".to_owned()
                } else {
                    path
                };
                format!("{path}: {e}")
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// See [`TaskTemplate::complete_context`].
fn insert_defaults(schema: &Value, value: &mut Value) {
    if let (Some(props), Value::Object(obj)) = (
        schema.get("properties").and_then(Value::as_object),
        &mut *value,
    ) {
        for (key, sub) in props {
            // As the original: an absent property with a default gets it; an absent one
            // without is not created (its nested defaults apply once it is given).
            if !obj.contains_key(key) {
                if let Some(d) = sub.get("default") {
                    obj.insert(key.clone(), d.clone());
                }
            }
            if let Some(v) = obj.get_mut(key) {
                insert_defaults(sub, v);
            }
        }
    }
    if let Some(Value::Array(subs)) = schema.get("allOf") {
        for sub in subs {
            insert_defaults(sub, value);
        }
    }
}
