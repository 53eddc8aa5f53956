//! The engine's PL/pgSQL functions, one current file each in `migrations/postgres/functions/`,
//! installed after the table migrations whenever a store opens.
//!
//! Each file starts with `-- tasker:function NAME revision N`. `NAME` carries a shape version
//! (`tasker_apply_v2`): its parameters, its result and the composite types it declares never
//! change under that name, so an older build still running keeps calling the shape it was
//! built for. `N` counts changes of the body under the same shape. Installing, under an
//! advisory lock (processes starting together install once):
//!
//! * a function the database does not have, or has at a lower revision: the file runs
//!   (`CREATE OR REPLACE FUNCTION`, types created if missing) and `tasker_functions` records
//!   the revision and the file's SHA-256;
//! * the same revision: nothing (a different body under the same revision is refused: a
//!   changed file needs a new revision);
//! * a higher revision (a newer build installed it): nothing, the newer body stays.
//!
//! `REVISIONS` beside the files pins each file's revision and hash; a test fails when a file
//! changes without both being updated. ARCHITECTURE.md says how a change ships.

use sha2::{Digest, Sha256};
use sqlx::{Executor, PgConnection, Row};

use crate::error::{Error, Result};

/// The function files, in the order they install (a function after the ones it calls).
pub(crate) const FILES: [(&str, &str); 2] = [
    (
        "tasker_claim.sql",
        include_str!("../../../../migrations/postgres/functions/tasker_claim.sql"),
    ),
    (
        "tasker_apply.sql",
        include_str!("../../../../migrations/postgres/functions/tasker_apply.sql"),
    ),
];

/// The name and revision a function file declares on its first line.
pub(crate) fn header(file: &str, text: &str) -> Result<(String, i32)> {
    let first = text.lines().next().unwrap_or_default();
    let words: Vec<&str> = first.split_whitespace().collect();
    match words.as_slice() {
        ["--", "tasker:function", name, "revision", n] => n
            .parse()
            .map(|n| ((*name).to_owned(), n))
            .map_err(|_| Error::Internal(format!("{file}: revision {n:?} is not a number"))),
        _ => Err(Error::Internal(format!(
            "{file}: the first line must be `-- tasker:function NAME revision N`, got {first:?}"
        ))),
    }
}

pub(crate) fn sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Installs what the database lacks (see the module docs). Runs after the table migrations.
pub(super) async fn install(conn: &mut PgConnection) -> Result<()> {
    // One lock per schema: processes opening other schemas need not wait.
    sqlx::query("SELECT pg_advisory_lock(hashtext(current_schema() || '.tasker_functions'))")
        .execute(&mut *conn)
        .await?;
    let result = install_locked(conn).await;
    let unlock =
        sqlx::query("SELECT pg_advisory_unlock(hashtext(current_schema() || '.tasker_functions'))")
            .execute(&mut *conn)
            .await;
    result?;
    unlock?;
    Ok(())
}

async fn install_locked(conn: &mut PgConnection) -> Result<()> {
    for (file, text) in FILES {
        let (name, revision) = header(file, text)?;
        let hash = sha256(text);
        let row = sqlx::query("SELECT revision, sha256 FROM tasker_functions WHERE name = $1")
            .bind(&name)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(r) = row {
            let (have, have_hash): (i32, String) = (r.try_get(0)?, r.try_get(1)?);
            if have > revision || (have == revision && have_hash == hash) {
                continue;
            }
            if have == revision {
                return Err(Error::Internal(format!(
                    "{name} revision {revision} is installed with another body than this build's \
                     migrations/postgres/functions/{file}: a changed function needs a new revision"
                )));
            }
        }
        conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(text)))
            .await?;
        sqlx::query(
            "INSERT INTO tasker_functions (name, revision, sha256, installed_at) \
             VALUES ($1, $2, $3, (extract(epoch from now()) * 1000)::bigint) \
             ON CONFLICT (name) DO UPDATE SET revision = EXCLUDED.revision, \
               sha256 = EXCLUDED.sha256, installed_at = EXCLUDED.installed_at",
        )
        .bind(&name)
        .bind(revision)
        .bind(&hash)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `REVISIONS` pins each file: editing a function file without a new revision fails here.
    #[test]
    fn every_function_file_matches_its_pinned_revision_and_hash() {
        let pinned = include_str!("../../../../migrations/postgres/functions/REVISIONS");
        let lines: Vec<Vec<&str>> = pinned
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines.len(), FILES.len(), "one REVISIONS line per file");
        for (file, text) in FILES {
            let (name, revision) = header(file, text).unwrap();
            let line = lines
                .iter()
                .find(|l| l[0] == name)
                .unwrap_or_else(|| panic!("REVISIONS has no line for {name}"));
            assert_eq!(
                (line[1], line[2]),
                (revision.to_string().as_str(), sha256(text).as_str()),
                "{file} changed: give it a new revision in its first line and pin it in REVISIONS \
                 (`{name} {} {}`), or a new _vN name if its shape changed",
                revision + 1,
                "<sha256 of the file>"
            );
        }
    }
}
