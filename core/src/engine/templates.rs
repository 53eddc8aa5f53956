//! Registering templates and finding them again (by namespace, name and version).

use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{hex, Engine};
use crate::error::{Error, Result, TemplateError};
use crate::store::{StoreTx, TemplateRow};
use crate::template::{latest_version, TaskTemplate, TemplateSummary, DEFAULT_NAMESPACE};

impl Engine {
    /// Parses YAML text with the engine's environment and registers it.
    pub async fn register_template_yaml(&self, src: &str) -> Result<String> {
        let t = TaskTemplate::from_yaml(src, self.inner.opts.environment.as_deref())?;
        self.register_template(t).await
    }

    /// Reads a YAML file and registers it.
    pub async fn register_template_file(&self, path: &std::path::Path) -> Result<String> {
        let t = TaskTemplate::from_path(path, self.inner.opts.environment.as_deref())?;
        self.register_template(t).await
    }

    /// Registers a parsed document (a dict from a host language).
    pub async fn register_template_value(&self, doc: Value) -> Result<String> {
        let t = TaskTemplate::from_value(doc, self.inner.opts.environment.as_deref())?;
        self.register_template(t).await
    }

    /// Registers a template; returns its key `namespace.name@version`. Registering the same key
    /// again with an identical definition is a no-op; with a different one, an error.
    pub async fn register_template(&self, t: TaskTemplate) -> Result<String> {
        // A broken `command` or `http` config is refused here, whichever host registers it.
        crate::builtin::check_template(&t)?;
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
        let mut tx = self.inner.store.begin(true).await?;
        let id = match tx.find_template(&t.namespace, &t.name, &version).await? {
            Some(row) if row.definition_hash == hash => row.named_task_id,
            Some(_) => return Err(TemplateError::Conflict { key }.into()),
            None => {
                let now = self.now();
                let id = tx
                    .insert_template(
                        &t.namespace,
                        &t.name,
                        &version,
                        t.description.as_deref(),
                        &body,
                        &hash,
                        now,
                    )
                    .await?;
                tx.commit(false, false).await?;
                id
            }
        };
        let mut reg = self.inner.templates.write().unwrap();
        reg.ids
            .insert((t.namespace.clone(), t.name.clone(), version), id);
        reg.by_id.insert(id, Arc::new(t));
        Ok(key)
    }

    /// Every registered template.
    pub async fn templates(&self) -> Result<Vec<TemplateSummary>> {
        self.refresh_templates().await?;
        let reg = self.inner.templates.read().unwrap();
        let mut out: Vec<TemplateSummary> = reg
            .by_id
            .values()
            .map(|t| TemplateSummary {
                namespace: t.namespace.clone(),
                name: t.name.clone(),
                version: t.version.to_string(),
                description: t.description.clone(),
                steps: t.steps.len(),
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
        });
        Ok(out)
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
        let mut reg = self.inner.templates.write().unwrap();
        reg.ids
            .insert((row.namespace, row.name, row.version), row.named_task_id);
        reg.by_id.insert(row.named_task_id, t.clone());
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
        let id = *reg
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
