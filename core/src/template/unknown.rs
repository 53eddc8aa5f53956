//! Keys a template's shape does not know.
//!
//! The original engine accepts any key (its YAML schema and `Dry::Struct`s ignore the rest), and
//! its own files carry some (`retry_strategies`, `monitoring` at the top level). So an unknown
//! key never makes registration fail by default: it is taken out of the document, kept in the
//! definition's `compat.unknown_keys` (by its path, shown with the template) and named in a
//! warning ([`super::TaskTemplate::warnings`]); with strict templates the warning is an error
//! at registration.
//!
//! Two kinds of unknown key stay errors, because ignoring them would silently change what runs:
//! the other format's name for something this engine honours (`depends_on` or `dependencies`
//! in a `step_templates` entry drops a dependency), and a near miss of a known key (a typo of
//! `default_retry_limit`). The error names the key to use.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Keys that mean something in one of the two formats (or will, for fan-out): unknown where
/// they appear, an error rather than a warning, with what to write instead.
const MEANINGFUL: &[(&str, &str)] = &[
    ("depends_on", DEPENDENCY),
    ("dependencies", DEPENDENCY),
    ("depends_on_step", DEPENDENCY),
    ("depends_on_steps", DEPENDENCY),
    ("handler_class", HANDLER),
    ("handler", HANDLER),
    ("callable", HANDLER),
    ("default_retry_limit", RETRY),
    ("default_retryable", RETRY),
    ("retry", RETRY),
    ("max_attempts", RETRY),
    ("retry_limit", RETRY),
    ("step_templates", STEPS),
    ("steps", STEPS),
];
const DEPENDENCY: &str = "a step's parents are `depends_on_step` / `depends_on_steps` in the \
     original format (`step_templates`) and `dependencies` in tasker-core's (`steps`)";
const HANDLER: &str = "a step's handler is `handler_class` in the original format and \
     `handler: {callable: ...}` in tasker-core's";
const RETRY: &str = "retries are `default_retryable` / `default_retry_limit` in the original \
     format and `retry: {retryable, max_attempts}` in tasker-core's";
const STEPS: &str = "a template has either `step_templates` (the original format) or `steps` \
     (tasker-core's), not both";

/// Unknown keys found while parsing one document.
#[derive(Debug, Default)]
pub(super) struct Unknown {
    /// Path -> the value taken out.
    pub kept: Map<String, Value>,
    /// One message per key, naming it and its place.
    pub warnings: Vec<String>,
}

/// Deserializes `value` as `T`, taking out each key `T` (or a part of it) does not know. The
/// error is serde's, with its path, for anything else, and for an unknown key that
/// [`verdict`] says must not be ignored.
pub(super) fn deserialize_lenient<T: DeserializeOwned>(
    mut value: Value,
    unknown: &mut Unknown,
) -> Result<T, (String, String)> {
    loop {
        let err = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(t) => return Ok(t),
            Err(e) => e,
        };
        // The path ends with the unknown key itself (`step_templates[1].sla`).
        let place = err.path().to_string();
        let message = err.inner().to_string();
        let Some((key, expected)) = parse_unknown_field(&message) else {
            return Err((place, message));
        };
        let parent = match place.strip_suffix(key.as_str()) {
            Some(p) => p.strip_suffix('.').unwrap_or("."),
            None => return Err((place, message)),
        };
        if let Some(why) = verdict(&key, &expected) {
            return Err((place, format!("unknown field `{key}`: {why}")));
        }
        let Some(taken) = take(&mut value, parent, &key) else {
            return Err((place, message));
        };
        unknown.warnings.push(format!(
            "unknown key `{place}`: kept (compat.unknown_keys), no effect here"
        ));
        unknown.kept.insert(place, taken);
    }
}

/// Why an unknown `key` must not be ignored (`expected`: the keys of the mapping it is in),
/// or `None` when a warning is enough.
fn verdict(key: &str, expected: &[String]) -> Option<String> {
    if let Some((_, why)) = MEANINGFUL.iter().find(|(k, _)| *k == key) {
        return Some((*why).to_owned());
    }
    if key.len() >= 4 {
        let near = expected
            .iter()
            .filter(|k| distance(k, key) <= 2)
            .min_by_key(|k| distance(k, key))?;
        return Some(format!("did you mean `{near}`?"));
    }
    None
}

/// serde's "unknown field `x`, expected one of `a`, `b`" (or "expected `a`", or "there are no
/// fields") -> (`x`, [`a`, `b`]).
fn parse_unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let end = rest.find('`')?;
    let key = rest[..end].to_owned();
    let expected = rest[end + 1..]
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    Some((key, expected))
}

/// Removes `key` from the mapping at `path` (serde_path_to_error's form: `a.b[2].c`, `.` for
/// the top).
fn take(doc: &mut Value, path: &str, key: &str) -> Option<Value> {
    let mut at = doc;
    if path != "." && !path.is_empty() {
        for part in path.split('.') {
            let (name, indexes) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if !name.is_empty() {
                at = at.get_mut(name)?;
            }
            for ix in indexes.split('[').filter(|s| !s.is_empty()) {
                at = at.get_mut(ix.trim_end_matches(']').parse::<usize>().ok()?)?;
            }
        }
    }
    at.as_object_mut()?.remove(key)
}

/// Levenshtein distance (keys are short).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for j in 0..b.len() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != b[j]))
                .min(row[j] + 1)
                .min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_parse_into_key_and_expected() {
        let (k, e) =
            parse_unknown_field("unknown field `foo`, expected one of `name`, `steps`").unwrap();
        assert_eq!(
            (k.as_str(), e),
            ("foo", vec!["name".to_owned(), "steps".to_owned()])
        );
        let (k, e) = parse_unknown_field("unknown field `x`, there are no fields").unwrap();
        assert_eq!((k.as_str(), e.len()), ("x", 0));
        assert!(parse_unknown_field("missing field `name`").is_none());
    }

    #[test]
    fn near_misses_and_the_other_formats_keys_are_errors() {
        let expected = vec!["default_retry_limit".to_owned(), "name".to_owned()];
        assert_eq!(
            verdict("default_retry_limt", &expected).as_deref(),
            Some("did you mean `default_retry_limit`?")
        );
        assert!(verdict("dependencies", &expected)
            .unwrap()
            .contains("depends_on_steps"));
        assert_eq!(verdict("monitoring", &expected), None);
        assert_eq!(
            verdict("nme", &expected),
            None,
            "short keys are not guessed at"
        );
    }

    #[test]
    fn take_follows_sequences_and_mappings() {
        let mut doc = serde_json::json!({"a": [{"b": {"x": 1, "y": 2}}]});
        assert_eq!(take(&mut doc, "a[0].b", "x"), Some(Value::from(1)));
        assert_eq!(doc, serde_json::json!({"a": [{"b": {"y": 2}}]}));
        let mut doc = serde_json::json!({"x": 1});
        assert_eq!(take(&mut doc, ".", "x"), Some(Value::from(1)));
    }
}
