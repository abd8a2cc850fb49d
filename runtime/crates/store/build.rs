//! Embeds the SQL migrations in the crate, as `sqlx::migrate!` would, without sqlx's proc macros
//! (its `macros` feature compiles a second copy of sqlx, its drivers and SQLite for the host:
//! minutes of a cold build). Writes `$OUT_DIR/migrations.rs` with one list per backend;
//! `src/migrations.rs` turns them into `sqlx::migrate::Migrator`s. Reruns when a migration is
//! added or changed.

use std::fmt::Write as _;
use std::path::Path;
use std::{env, fs};

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    let dir = Path::new(&env::var("CARGO_MANIFEST_DIR").unwrap()).join("migrations");
    let mut out = String::new();
    for (name, sub) in [("POSTGRES", "postgres"), ("SQLITE", "sqlite")] {
        let sub = dir.join(sub);
        println!("cargo:rerun-if-changed={}", sub.display());
        let mut files: Vec<_> = fs::read_dir(&sub)
            .unwrap_or_else(|e| panic!("reading {}: {e}", sub.display()))
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.is_file())
            .collect();
        files.sort();
        writeln!(out, "pub(crate) const {name}: &[Embedded] = &[").unwrap();
        for path in files {
            let file_name = path
                .file_name()
                .unwrap()
                .to_str()
                .expect("UTF-8 migration name");
            // sqlx's naming rule: `<VERSION>_<DESCRIPTION>.sql`; anything else is not a migration.
            let Some((version, rest)) = file_name.split_once('_') else {
                continue;
            };
            let Some(description) = rest.strip_suffix(".sql") else {
                continue;
            };
            // Only simple (forward) migrations are embedded; reversible pairs would need
            // `MigrationType::ReversibleUp`/`Down`, which nothing here uses.
            assert!(
                !description.ends_with(".up") && !description.ends_with(".down"),
                "{file_name}: reversible migrations are not supported by build.rs"
            );
            let version: i64 = version
                .parse()
                .unwrap_or_else(|_| panic!("{file_name}: the version prefix is not an integer"));
            writeln!(
                out,
                "    Embedded {{ version: {version}, description: {:?}, sql: include_str!({:?}) }},",
                description.replace('_', " "),
                path.display().to_string(),
            )
            .unwrap();
        }
        writeln!(out, "];").unwrap();
    }
    let dest = Path::new(&env::var("OUT_DIR").unwrap()).join("migrations.rs");
    fs::write(dest, out).unwrap();
}
