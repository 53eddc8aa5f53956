//! The template registry: registering templates in the database (revisions, strict mode)
//! and finding them again by namespace, name and version, or by id, through the engine's cache.
//! (Parsing and validating a template is [`crate::template`]'s.)

use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{hex, Engine};
use crate::error::{Error, Result, TemplateError};
use crate::store::{NewTemplate, StoreTx, TemplateRow};
use crate::template::{latest_version, TaskTemplate, TemplateSummary, DEFAULT_NAMESPACE};

/// What [`Engine::register_template_revision`] did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Registration {
    /// `namespace.name@version`.
    pub key: String,
    /// The revision of `key` that holds this body.
    pub revision: i64,
    /// When the body was new under an existing version: the revision it replaces for new
    /// tasks.
    pub replaced_revision: Option<i64>,
    /// What parsing only warned about ([`TaskTemplate::warnings`]: unknown keys, kept).
    pub warnings: Vec<String>,
}

/// The key of `r`, its warnings logged: for the entry points that return only the key.
fn logged(r: Registration) -> String {
    for w in &r.warnings {
        tracing::warn!(template = %r.key, "template {}: {w}", r.key);
    }
    r.key
}

/// A template as a host hands it over ([`Engine::register_source`]).
#[derive(Debug, Clone)]
pub enum TemplateSource<'a> {
    /// YAML (or JSON) text.
    Yaml(&'a str),
    /// A YAML or JSON file.
    File(&'a std::path::Path),
    /// An already-parsed document (a dict from a host language).
    Value(Value),
}

impl Engine {
    /// Parses a template with the engine's environment and registers it, saying which
    /// revision it is and what parsing warned about ([`Registration::warnings`]): what the
    /// bindings call, each showing the warnings its language's way.
    pub async fn register_source(&self, src: TemplateSource<'_>) -> Result<Registration> {
        let env = self.inner.opts.environment.as_deref();
        let t = match src {
            TemplateSource::Yaml(text) => TaskTemplate::from_yaml(text, env)?,
            TemplateSource::File(path) => TaskTemplate::from_path(path, env)?,
            TemplateSource::Value(doc) => TaskTemplate::from_value(doc, env)?,
        };
        self.register_template_revision(t).await
    }

    /// Parses YAML text with the engine's environment and registers it. Warnings are logged
    /// (`tracing`, level warn); [`Engine::register_source`] returns them instead.
    pub async fn register_template_yaml(&self, src: &str) -> Result<String> {
        Ok(logged(
            self.register_source(TemplateSource::Yaml(src)).await?,
        ))
    }

    /// Reads a YAML file and registers it (warnings logged).
    pub async fn register_template_file(&self, path: &std::path::Path) -> Result<String> {
        Ok(logged(
            self.register_source(TemplateSource::File(path)).await?,
        ))
    }

    /// Registers a parsed document (a dict from a host language; warnings logged).
    pub async fn register_template_value(&self, doc: Value) -> Result<String> {
        Ok(logged(
            self.register_source(TemplateSource::Value(doc)).await?,
        ))
    }

    /// Registers a template; returns its key `namespace.name@version`. Registering the same
    /// body again is a no-op. A changed body under the same version becomes a new *revision*
    /// (see [`Engine::register_template_revision`]), or is refused with
    /// [`EngineOptions::strict_templates`](super::EngineOptions).
    pub async fn register_template(&self, t: TaskTemplate) -> Result<String> {
        Ok(logged(self.register_template_revision(t).await?))
    }

    /// [`Engine::register_template`], saying which revision the body is and whether it was
    /// new. New tasks of `namespace.name@version` use its latest revision; a task keeps the
    /// exact body it was created with.
    pub async fn register_template_revision(&self, t: TaskTemplate) -> Result<Registration> {
        // A broken `command` or `http` config is refused here, whichever host registers it.
        crate::builtin::check_template(&t)?;
        if !t.warnings.is_empty() {
            if self.inner.opts.strict_templates {
                return Err(TemplateError::UnknownKeys {
                    template: t.key(),
                    warnings: t.warnings.clone(),
                }
                .into());
            }
        }
        let warnings = t.warnings.clone();
        let body = t.canonical_json();
        if body.contains("\\u0000") {
            return Err(TemplateError::Shape {
                template: t.key(),
                path: "$".into(),
                message: "contains a NUL character (\\u0000), which cannot be stored".into(),
            }
            .into());
        }
        let key = t.key();
        let hash = hex(&Sha256::digest(body.as_bytes()));
        let version = t.version.to_string();
        let schedules = t.schedule_specs();
        let mut tx = self.inner.store.begin(true).await?;
        let latest = tx.find_template(&t.namespace, &t.name, &version).await?;
        let (id, revision, created, previous) = match latest {
            Some(row) if row.definition_hash == hash => {
                (row.named_task_id, row.revision, row.created_at, None)
            }
            Some(row) if self.inner.opts.strict_templates => {
                let _ = row;
                return Err(TemplateError::Conflict { key }.into());
            }
            latest => {
                let now = self.now();
                let revision = latest.as_ref().map_or(1, |r| r.revision + 1);
                let id = tx
                    .insert_template(&NewTemplate {
                        namespace: &t.namespace,
                        name: &t.name,
                        version: &version,
                        description: t.description.as_deref(),
                        definition: &body,
                        definition_hash: &hash,
                        revision,
                        now,
                    })
                    .await?;
                tx.commit().await?;
                if let Some(prev) = &latest {
                    tracing::warn!(
                        template = %key,
                        revision,
                        "template {key} changed without a version bump: registered as revision {revision}; new tasks use it, tasks created before keep revision {}",
                        prev.revision
                    );
                }
                (id, revision, now, latest.map(|r| r.revision))
            }
        };
        self.cache_template(
            t.namespace.clone(),
            t.name.clone(),
            version,
            id,
            revision,
            created,
            Arc::new(t),
        );
        self.sync_template_schedules(&key, &schedules).await?;
        Ok(Registration {
            key,
            revision,
            replaced_revision: previous,
            warnings,
        })
    }

    fn cache_template(
        &self,
        namespace: String,
        name: String,
        version: String,
        id: i64,
        revision: i64,
        created_at: i64,
        t: Arc<TaskTemplate>,
    ) {
        let mut reg = self.inner.templates.write().unwrap();
        let slot = reg
            .ids
            .entry((namespace, name, version))
            .or_insert((revision, id));
        if revision >= slot.0 {
            *slot = (revision, id);
        }
        reg.revisions.insert(id, (revision, created_at));
        reg.by_id.insert(id, t);
    }

    /// Every registered template, each revision of a version on its own line (oldest first).
    pub async fn templates(&self) -> Result<Vec<TemplateSummary>> {
        self.refresh_templates().await?;
        let reg = self.inner.templates.read().unwrap();
        let mut out: Vec<TemplateSummary> = reg
            .by_id
            .iter()
            .map(|(id, t)| {
                let (revision, created_at) = reg.revisions.get(id).copied().unwrap_or((1, 0));
                let latest = reg
                    .ids
                    .get(&(t.namespace.clone(), t.name.clone(), t.version.to_string()))
                    .is_some_and(|(_, l)| l == id);
                TemplateSummary {
                    namespace: t.namespace.clone(),
                    name: t.name.clone(),
                    version: t.version.to_string(),
                    revision,
                    current: latest,
                    description: t.description.clone(),
                    steps: t.steps.len(),
                    custom_events: t.definition().custom_events.clone(),
                    compat: t.definition().compat.clone(),
                    registered_at: crate::clock::format_ms(created_at),
                }
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.namespace, &a.name)
                .cmp(&(&b.namespace, &b.name))
                .then_with(|| {
                    semver::Version::parse(&a.version)
                        .ok()
                        .cmp(&semver::Version::parse(&b.version).ok())
                })
                .then(a.revision.cmp(&b.revision))
        });
        Ok(out)
    }

    /// Every handler name a registered template's step names (all revisions), sorted. A host
    /// that resolves names itself (the Ruby gem maps `handler_class: "Payments::Charge"` to a
    /// class) asks this to know which steps it can run.
    pub async fn handler_names(&self) -> Result<Vec<String>> {
        self.refresh_templates().await?;
        let reg = self.inner.templates.read().unwrap();
        let names: std::collections::BTreeSet<&str> = reg
            .by_id
            .values()
            .flat_map(|t| t.steps.iter().map(|s| s.handler.as_str()))
            .collect();
        Ok(names.into_iter().map(str::to_owned).collect())
    }

    /// The template `namespace.name@version` (latest version when `version` is None).
    pub async fn template(
        &self,
        namespace: Option<&str>,
        name: &str,
        version: Option<&str>,
    ) -> Result<Arc<TaskTemplate>> {
        Ok(self.resolve_template(namespace, name, version).await?.1)
    }

    pub(super) async fn refresh_templates(&self) -> Result<()> {
        let rows = self.inner.store.templates().await?;
        let missing: Vec<TemplateRow> = {
            let reg = self.inner.templates.read().unwrap();
            rows.into_iter()
                .filter(|r| !reg.by_id.contains_key(&r.named_task_id))
                .collect()
        };
        for row in missing {
            self.cache_template_row(row)?;
        }
        Ok(())
    }

    pub(super) fn cache_template_row(&self, row: TemplateRow) -> Result<Arc<TaskTemplate>> {
        let def = serde_json::from_str(&row.definition)
            .map_err(|e| Error::Corrupt(format!("template {}: {e}", row.named_task_id)))?;
        let t = Arc::new(TaskTemplate::from_definition(def)?);
        self.cache_template(
            row.namespace,
            row.name,
            row.version,
            row.named_task_id,
            row.revision,
            row.created_at,
            t.clone(),
        );
        Ok(t)
    }

    pub(super) fn cached_template(
        &self,
        namespace: &str,
        name: &str,
        version: Option<&str>,
    ) -> Option<(i64, Arc<TaskTemplate>)> {
        let reg = self.inner.templates.read().unwrap();
        let version = match version {
            Some(v) => v.to_owned(),
            None => latest_version(
                reg.ids
                    .keys()
                    .filter(|(ns, n, _)| ns == namespace && n == name)
                    .map(|(_, _, v)| v.as_str()),
            )?
            .to_owned(),
        };
        let (_, id) = *reg
            .ids
            .get(&(namespace.to_owned(), name.to_owned(), version))?;
        Some((id, reg.by_id.get(&id)?.clone()))
    }

    pub(super) async fn resolve_template(
        &self,
        namespace: Option<&str>,
        name: &str,
        version: Option<&str>,
    ) -> Result<(i64, Arc<TaskTemplate>)> {
        let ns = namespace.unwrap_or(DEFAULT_NAMESPACE);
        if let Some(found) = self.cached_template(ns, name, version) {
            return Ok(found);
        }
        self.refresh_templates().await?;
        if let Some(found) = self.cached_template(ns, name, version) {
            return Ok(found);
        }
        let reg = self.inner.templates.read().unwrap();
        let mut versions: Vec<&str> = reg
            .ids
            .keys()
            .filter(|(n2, n, _)| n2 == ns && n == name)
            .map(|(_, _, v)| v.as_str())
            .collect();
        versions.sort();
        Err(Error::NotFound(match (version, versions.is_empty()) {
            (_, true) => format!("no template named {name:?} in namespace {ns:?} is registered"),
            (Some(v), false) => format!(
                "template {ns}.{name} has no version {v:?} (registered: {})",
                versions.join(", ")
            ),
            (None, false) => unreachable!("latest exists when versions do"),
        }))
    }

    /// The template with this id if this engine has it loaded.
    pub(super) fn template_cached(&self, id: i64) -> Option<Arc<TaskTemplate>> {
        self.inner.templates.read().unwrap().by_id.get(&id).cloned()
    }

    pub(super) async fn template_in_tx(
        &self,
        tx: &mut dyn StoreTx,
        id: i64,
    ) -> Result<Arc<TaskTemplate>> {
        if let Some(t) = self.inner.templates.read().unwrap().by_id.get(&id) {
            return Ok(t.clone());
        }
        let row = tx
            .template_by_id(id)
            .await?
            .ok_or_else(|| Error::Corrupt(format!("task refers to missing template {id}")))?;
        self.cache_template_row(row)
    }
}
