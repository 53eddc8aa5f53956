//! `environments.<env>` overrides, merged into a document before it is parsed.

use serde_json::Value;

/// Deep-merges `environments.<env>` into the document: its `step_templates` entries are merged
/// into the base steps with the same name (unknown names are ignored, as in the original), its
/// other keys into the top level.
pub(super) fn apply_environment(doc: &mut Value, env: &str) {
    let Some(overrides) = doc.get("environments").and_then(|e| e.get(env)).cloned() else {
        return;
    };
    let Value::Object(overrides) = overrides else {
        return;
    };
    for (key, over) in overrides {
        if key == "step_templates" || key == "steps" {
            let list_key = if doc.get("step_templates").is_some() {
                "step_templates"
            } else {
                "steps"
            };
            let (Some(Value::Array(base)), Value::Array(over)) = (doc.get_mut(list_key), over)
            else {
                continue;
            };
            for o in over {
                let Some(name) = o.get("name").and_then(Value::as_str) else {
                    continue;
                };
                if let Some(b) = base
                    .iter_mut()
                    .find(|b| b.get("name").and_then(Value::as_str) == Some(name))
                {
                    deep_merge(b, o.clone());
                }
            }
        } else if let Some(slot) = doc.get_mut(key.as_str()) {
            deep_merge(slot, over);
        } else if let Value::Object(m) = doc {
            m.insert(key, over);
        }
    }
}

fn deep_merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => deep_merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}
