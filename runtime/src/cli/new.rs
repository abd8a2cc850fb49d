//! `sluice new NAME [--lang rust|python|js] [--dir PATH]`: write a ready handler project.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use super::exit;
use crate::plugin_build::{COMPONENTIZE_JS_VERSION, COMPONENTIZE_PY_VERSION, ROLLDOWN_VERSION};

/// The longest project name (it becomes the crate, package and plugin name).
pub const MAX_NAME_LEN: usize = 64;

/// The checkout this binary was built from; the Rust template depends on its `sdk/` by path.
const CHECKOUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Arguments of `sluice new`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    sluice new triage --lang python\n  \
    sluice run triage --input-file triage/input.json\n\n\
    Every project has a handler, a manifest, input.json (a test input) and a README. It never \
    overwrites: an existing directory is refused (exit code 2).\n\
    Python needs componentize-py (pip); JavaScript needs componentize-js and rolldown (npm); \
    `sluice run` names the exact install command when one is missing.")]
pub struct NewArgs {
    /// The project's name: lowercase letters, digits, `-` and `_`, starting with a letter.
    /// It is also the plugin's name when deployed.
    pub name: String,
    /// The handler's language.
    #[arg(long, short, value_enum, default_value_t = Lang::Rust)]
    pub lang: Lang,
    /// Where to write the project (default: ./NAME). Must not exist yet.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// A handler language `sluice new` has a template for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    /// Rust, with the `sluice-sdk` crate (built with cargo for wasm32-wasip2).
    Rust,
    /// Python, with `sluice_sdk` (built with componentize-py).
    #[value(alias = "py")]
    Python,
    /// JavaScript, with `@sluice/sdk` (bundled with rolldown, built with componentize-js).
    #[value(alias = "javascript")]
    Js,
}

const INPUT: &str = include_str!("../../templates/input.json");

/// The files of each template: (path in the project, text with `{{…}}` placeholders).
fn template(lang: Lang) -> &'static [(&'static str, &'static str)] {
    match lang {
        Lang::Rust => &[
            (
                "Cargo.toml",
                include_str!("../../templates/rust/Cargo.toml"),
            ),
            (
                "src/lib.rs",
                include_str!("../../templates/rust/src/lib.rs"),
            ),
            ("README.md", include_str!("../../templates/rust/README.md")),
            (".gitignore", include_str!("../../templates/rust/gitignore")),
            ("input.json", INPUT),
        ],
        Lang::Python => &[
            ("app.py", include_str!("../../templates/python/app.py")),
            (
                "test_app.py",
                include_str!("../../templates/python/test_app.py"),
            ),
            (
                "pyproject.toml",
                include_str!("../../templates/python/pyproject.toml"),
            ),
            (
                "README.md",
                include_str!("../../templates/python/README.md"),
            ),
            (
                ".gitignore",
                include_str!("../../templates/python/gitignore"),
            ),
            ("input.json", INPUT),
        ],
        Lang::Js => &[
            ("app.js", include_str!("../../templates/js/app.js")),
            (
                "app.test.js",
                include_str!("../../templates/js/app.test.js"),
            ),
            (
                "package.json",
                include_str!("../../templates/js/package.json"),
            ),
            ("README.md", include_str!("../../templates/js/README.md")),
            (".gitignore", include_str!("../../templates/js/gitignore")),
            ("input.json", INPUT),
        ],
    }
}

/// Why a name cannot be a project's, or `None` when it can.
pub fn invalid_name(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Some(format!("a name has 1 to {MAX_NAME_LEN} characters"));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Some("a name starts with a lowercase letter".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        return Some(format!(
            "{c:?} is not allowed; use lowercase letters, digits, `-` and `_`"
        ));
    }
    None
}

/// Write the project and return the exit code.
pub fn run(args: NewArgs) -> anyhow::Result<i32> {
    if let Some(why) = invalid_name(&args.name) {
        eprintln!("error: {:?} is not a valid project name: {why}", args.name);
        return Ok(exit::USAGE);
    }
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() || dir.is_symlink() {
        eprintln!(
            "error: {} already exists; `sluice new` never overwrites (choose another NAME or --dir)",
            dir.display()
        );
        return Ok(exit::USAGE);
    }
    match write_project(&dir, &args) {
        Ok(()) => {}
        Err(e) => {
            // Leave nothing half-written behind; the directory did not exist before.
            let _ = std::fs::remove_dir_all(&dir);
            eprintln!("error: could not write {}: {e}", dir.display());
            return Ok(exit::FAILED);
        }
    }
    let shown = dir.display();
    let lang = match args.lang {
        Lang::Rust => "Rust",
        Lang::Python => "Python",
        Lang::Js => "JavaScript",
    };
    println!("created {shown} ({lang} handler)");
    println!("next:   sluice run {shown} --input-file {shown}/input.json");
    if args.lang == Lang::Rust && !Path::new(CHECKOUT).join("sdk/Cargo.toml").is_file() {
        eprintln!(
            "warning: the Sluice checkout this binary was built from ({CHECKOUT}) is gone; point \
             `sluice-sdk` in {shown}/Cargo.toml at a checkout's sdk/ folder"
        );
    }
    Ok(exit::OK)
}

fn write_project(dir: &Path, args: &NewArgs) -> std::io::Result<()> {
    let checkout = Path::new(CHECKOUT)
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from(CHECKOUT));
    // TOML and README text: forward slashes and no quotes to escape on any sane path.
    let path_text = |p: PathBuf| p.to_string_lossy().replace('\\', "/").replace('"', "\\\"");
    let js_install = format!(
        "`npm ci --prefix {}`, or `npm install -g @bytecodealliance/componentize-js@{COMPONENTIZE_JS_VERSION} rolldown@{ROLLDOWN_VERSION}`",
        path_text(checkout.join("sdk-js"))
    );
    let vars = [
        ("{{name}}", args.name.clone()),
        ("{{dir}}", dir.to_string_lossy().into_owned()),
        ("{{sdk_path}}", path_text(checkout.join("sdk"))),
        ("{{sdk_py_path}}", path_text(checkout.join("sdk-py"))),
        ("{{sdk_js_path}}", path_text(checkout.join("sdk-js"))),
        ("{{cpy_version}}", COMPONENTIZE_PY_VERSION.to_owned()),
        ("{{js_install}}", js_install),
    ];
    std::fs::create_dir_all(dir)?;
    for (rel, text) in template(args.lang) {
        let mut text = (*text).to_owned();
        for (key, value) in &vars {
            text = text.replace(key, value);
        }
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert_eq!(invalid_name("triage-v2_x"), None);
        assert!(invalid_name("").is_some());
        assert!(invalid_name("Triage").is_some());
        assert!(invalid_name("9lives").is_some());
        assert!(invalid_name("../escape").is_some());
        assert!(invalid_name("a/../b").unwrap().contains("'/'"));
        assert!(invalid_name(&"a".repeat(MAX_NAME_LEN + 1)).is_some());
        assert_eq!(invalid_name(&"a".repeat(MAX_NAME_LEN)), None);
    }

    #[test]
    fn every_template_has_the_same_kinds_of_files_and_no_placeholder_left() {
        let dir = tempfile::tempdir().unwrap();
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            let target = dir.path().join(format!("{lang:?}").to_lowercase());
            let args = NewArgs {
                name: "demo".into(),
                lang,
                dir: Some(target.clone()),
            };
            assert_eq!(run(args).unwrap(), exit::OK);
            for rel in ["README.md", "input.json", ".gitignore"] {
                let text = std::fs::read_to_string(target.join(rel)).unwrap();
                assert!(!text.contains("{{"), "{lang:?} {rel}: {text}");
            }
            let readme = std::fs::read_to_string(target.join("README.md")).unwrap();
            assert_eq!(readme.lines().count(), 3, "{readme}");
            serde_json::from_str::<serde_json::Value>(
                &std::fs::read_to_string(target.join("input.json")).unwrap(),
            )
            .unwrap();
            // Never overwrite.
            let again = NewArgs {
                name: "demo".into(),
                lang,
                dir: Some(target.clone()),
            };
            assert_eq!(run(again).unwrap(), exit::USAGE);
        }
    }
}
