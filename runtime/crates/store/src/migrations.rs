//! The SQL migrations under `migrations/`, embedded at build time by `build.rs` (in place of
//! `sqlx::migrate!`, whose proc macro costs a second build of sqlx and SQLite for the host).
//! The test below checks the embedded lists against sqlx's own reading of the directories.

use std::borrow::Cow;

use sqlx::SqlStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// One migration file: `<version>_<description>.sql`, underscores in the description read as spaces.
pub(crate) struct Embedded {
    version: i64,
    description: &'static str,
    sql: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// The Postgres schema's migrations, in version order.
pub(crate) fn postgres() -> Migrator {
    migrator(POSTGRES)
}

/// The SQLite schema's migrations, in version order.
pub(crate) fn sqlite() -> Migrator {
    migrator(SQLITE)
}

fn migrator(embedded: &'static [Embedded]) -> Migrator {
    Migrator::with_migrations(
        embedded
            .iter()
            .map(|m| {
                Migration::new(
                    m.version,
                    Cow::Borrowed(m.description),
                    MigrationType::Simple,
                    SqlStr::from_static(m.sql),
                    // sqlx's opt-out of the per-migration transaction.
                    m.sql.starts_with("-- no-transaction"),
                )
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// What a database records and checks for each applied migration must be what
    /// `sqlx::migrate!` embedded before (same versions, descriptions, checksums and SQL), or
    /// existing databases would refuse to start ("migration was previously applied but has been
    /// modified") or re-run a migration.
    async fn assert_same_as_sqlx(embedded: Migrator, dir: &str) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(dir);
        let resolved = Migrator::new(dir.as_path()).await.unwrap();
        let key = |m: &Migration| {
            (
                m.version,
                m.description.to_string(),
                m.migration_type,
                m.sql.as_str().to_owned(),
                m.checksum.to_vec(),
                m.no_tx,
            )
        };
        let ours: Vec<_> = embedded.iter().map(key).collect();
        let theirs: Vec<_> = resolved.iter().map(key).collect();
        assert!(
            !theirs.is_empty(),
            "no migrations found in {}",
            dir.display()
        );
        assert_eq!(ours, theirs);
    }

    #[tokio::test]
    async fn postgres_migrations_match_the_directory() {
        assert_same_as_sqlx(postgres(), "postgres").await;
    }

    #[tokio::test]
    async fn sqlite_migrations_match_the_directory() {
        assert_same_as_sqlx(sqlite(), "sqlite").await;
    }
}
