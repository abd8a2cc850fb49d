//! Building a plugin directory into a component, and checking a component's imports before it
//! is run or uploaded.
//!
//! A directory is a Rust crate (`Cargo.toml`: `cargo build --target wasm32-wasip2`), a Python
//! project (`app.py`, built by componentize-py) or a JavaScript project (`package.json`,
//! bundled by rolldown and built by componentize-js). The Python and JavaScript SDKs and the
//! `wit/` world are compiled into this binary and written next to the build's output
//! (`.sluice-build/` in the project), so a project builds anywhere with only the tools
//! installed; a build whose inputs have not changed reuses its component.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

/// The componentize-py release the Python SDK is built and tested with.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";
/// The componentize-js release the JavaScript SDK is built and tested with.
pub const COMPONENTIZE_JS_VERSION: &str = "0.23.0";
/// The rolldown release that bundles JavaScript handlers.
pub const ROLLDOWN_VERSION: &str = "1.3.4";
/// Where Python and JavaScript builds put their output, inside the project.
pub const BUILD_DIR: &str = ".sluice-build";
/// The most files a Python or JavaScript project may hold (outside `node_modules`, hidden
/// folders and caches) for its build fingerprint; past it the build is refused.
pub const MAX_PROJECT_FILES: usize = 5_000;
/// The most bytes those files may hold in total.
pub const MAX_PROJECT_BYTES: u64 = 256 << 20;

/// The checkout this binary was built from: the JS tools installed with
/// `npm ci --prefix <checkout>/sdk-js` are found there.
const CHECKOUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The `sluice:plugin` world, as the guests build against it.
const WIT: &[(&str, &str)] = &[
    ("world.wit", include_str!("../../wit/world.wit")),
    ("types.wit", include_str!("../../wit/types.wit")),
    ("models.wit", include_str!("../../wit/models.wit")),
    ("state.wit", include_str!("../../wit/state.wit")),
    ("effects.wit", include_str!("../../wit/effects.wit")),
    ("usage.wit", include_str!("../../wit/usage.wit")),
    ("events.wit", include_str!("../../wit/events.wit")),
];

/// The Python SDK (`sdk-py/sluice_sdk`).
const PY_SDK: &[(&str, &str)] = &[
    (
        "__init__.py",
        include_str!("../../sdk-py/sluice_sdk/__init__.py"),
    ),
    ("_host.py", include_str!("../../sdk-py/sluice_sdk/_host.py")),
    (
        "errors.py",
        include_str!("../../sdk-py/sluice_sdk/errors.py"),
    ),
    (
        "models.py",
        include_str!("../../sdk-py/sluice_sdk/models.py"),
    ),
    ("state.py", include_str!("../../sdk-py/sluice_sdk/state.py")),
    (
        "effects.py",
        include_str!("../../sdk-py/sluice_sdk/effects.py"),
    ),
    (
        "events.py",
        include_str!("../../sdk-py/sluice_sdk/events.py"),
    ),
    ("usage.py", include_str!("../../sdk-py/sluice_sdk/usage.py")),
    (
        "testing.py",
        include_str!("../../sdk-py/sluice_sdk/testing.py"),
    ),
];

/// The JavaScript SDK (`sdk-js/sluice.js`), imported by handlers as `@sluice/sdk`.
const JS_SDK: &str = include_str!("../../sdk-js/sluice.js");

/// The language of a plugin project directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// A crate: `Cargo.toml`.
    Rust,
    /// `app.py` (or a `pyproject.toml`), built with componentize-py.
    Python,
    /// `package.json`, bundled with rolldown and built with componentize-js.
    JavaScript,
}

impl std::fmt::Display for Language {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Language::Rust => "Rust",
            Language::Python => "Python",
            Language::JavaScript => "JavaScript",
        })
    }
}

/// Why a plugin directory could not be built, or a component is refused before upload.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The directory is no project sluice knows how to build.
    #[error(
        "{0} is not a plugin directory: it has no Cargo.toml (Rust), app.py or pyproject.toml \
         (Python) or package.json (JavaScript); `sluice new NAME` writes one"
    )]
    NotAProject(PathBuf),
    /// A tool could not be started.
    #[error("could not run cargo: {0}")]
    Cargo(#[from] std::io::Error),
    /// cargo failed; its diagnostics went to stderr.
    #[error("building {0} for wasm32-wasip2 failed (see cargo's output above)")]
    Failed(PathBuf),
    /// The wasm32-wasip2 target is missing and could not be added.
    #[error(
        "the Rust target wasm32-wasip2 is not installed and could not be added ({0}); \
         run `rustup target add wasm32-wasip2` in {1} and try again"
    )]
    NoTarget(String, PathBuf),
    /// cargo succeeded but produced no `.wasm`.
    #[error("building {0} produced no .wasm component; is it a `cdylib` crate?")]
    NoArtifact(PathBuf),
    /// A build tool for the project's language is not installed.
    #[error("building a {language} handler needs {tool}, which is not installed: {install}")]
    MissingTool {
        /// The project's language.
        language: Language,
        /// The missing tool.
        tool: &'static str,
        /// The exact command that installs it.
        install: String,
    },
    /// A build tool ran and failed; its diagnostics went to stderr.
    #[error("{tool} failed to build {dir} (see its output above)")]
    ToolFailed {
        /// The tool.
        tool: &'static str,
        /// The project.
        dir: PathBuf,
    },
    /// The project is missing its entry point or it is malformed.
    #[error("{dir}: {reason}")]
    BadProject {
        /// The project.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The component imports an interface the engine does not link.
    #[error("{file} imports `{import}`, which the Sluice engine does not provide: {why}")]
    UnlinkedImport {
        /// The component.
        file: PathBuf,
        /// The import, as named in the component (`wasi:http/types@0.2.10`).
        import: String,
        /// Why it is not linked, and what to do.
        why: String,
    },
}

/// Which language the project in `dir` is written in.
pub fn detect(dir: &Path) -> Result<Language, BuildError> {
    if dir.join("Cargo.toml").is_file() {
        Ok(Language::Rust)
    } else if dir.join("app.py").is_file() || dir.join("pyproject.toml").is_file() {
        Ok(Language::Python)
    } else if dir.join("package.json").is_file() {
        Ok(Language::JavaScript)
    } else {
        Err(BuildError::NotAProject(dir.to_path_buf()))
    }
}

/// Build the project in `dir` and return the path of the component it produced. The tools'
/// diagnostics go to this process's stderr.
pub fn build_plugin_dir(dir: &Path) -> Result<PathBuf, BuildError> {
    match detect(dir)? {
        Language::Rust => build_rust(dir),
        Language::Python => build_python(dir),
        Language::JavaScript => build_js(dir),
    }
}

/// Build the crate in `dir` in release mode for `wasm32-wasip2`.
fn build_rust(dir: &Path) -> Result<PathBuf, BuildError> {
    // cargo runs from the plugin's directory, so relative paths would resolve twice.
    let dir = &dir.canonicalize()?;
    let manifest = dir.join("Cargo.toml");
    ensure_wasm_target(dir)?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--message-format=json-render-diagnostics",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        // Run from the plugin's directory so its rust-toolchain.toml and .cargo/config apply.
        .current_dir(dir)
        .env_remove("CARGO_TARGET_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()?;
    if !output.status.success() {
        return Err(BuildError::Failed(dir.to_path_buf()));
    }
    // The last compiler-artifact message with a .wasm file is the plugin itself.
    let mut found = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        if let Some(files) = msg["filenames"].as_array() {
            for f in files.iter().filter_map(|f| f.as_str()) {
                if f.ends_with(".wasm") {
                    found = Some(PathBuf::from(f));
                }
            }
        }
    }
    found.ok_or_else(|| BuildError::NoArtifact(dir.to_path_buf()))
}

/// Where a Python or JavaScript build puts its files, and whether its last output is still
/// current.
struct Staged {
    dir: PathBuf,
    build: PathBuf,
    output: PathBuf,
    stamp_file: PathBuf,
    stamp: String,
}

impl Staged {
    fn new(dir: &Path, language: Language, sdk: &[(&str, &str)]) -> Result<Staged, BuildError> {
        let dir = dir.canonicalize()?;
        let build = dir.join(BUILD_DIR);
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "plugin".into());
        let output = build.join(format!("{name}.wasm"));
        let stamp_file = build.join("inputs.sha256");
        let stamp = fingerprint(&dir, language, sdk)?;
        Ok(Staged {
            dir,
            build,
            output,
            stamp_file,
            stamp,
        })
    }

    /// The last build's component, when every input is as it was then.
    fn current(&self) -> Option<PathBuf> {
        let stamp = std::fs::read_to_string(&self.stamp_file).ok()?;
        (stamp == self.stamp && self.output.is_file()).then(|| self.output.clone())
    }

    /// Write the world and the SDK files for the tools to read.
    fn write_inputs(&self, sdk_dir: &Path, sdk: &[(&str, &str)]) -> Result<PathBuf, BuildError> {
        let wit = self.build.join("wit");
        std::fs::create_dir_all(&wit)?;
        for (name, text) in WIT {
            std::fs::write(wit.join(name), text)?;
        }
        std::fs::create_dir_all(sdk_dir)?;
        for (name, text) in sdk {
            std::fs::write(sdk_dir.join(name), text)?;
        }
        // The build folder is output: keep it out of the user's version control.
        std::fs::write(self.build.join(".gitignore"), "*\n")?;
        let _ = std::fs::remove_file(&self.stamp_file);
        Ok(wit)
    }

    fn done(&self) -> Result<PathBuf, BuildError> {
        std::fs::write(&self.stamp_file, &self.stamp)?;
        Ok(self.output.clone())
    }
}

/// A hash of everything a build reads: the project's files, the SDK and the world compiled
/// into this binary, and the tool versions it expects.
fn fingerprint(dir: &Path, language: Language, sdk: &[(&str, &str)]) -> Result<String, BuildError> {
    let mut files = Vec::new();
    collect_files(dir, dir, &mut files)?;
    files.sort();
    let mut hash = Sha256::new();
    hash.update(format!(
        "{language} {COMPONENTIZE_PY_VERSION} {COMPONENTIZE_JS_VERSION} {ROLLDOWN_VERSION}\0"
    ));
    for (name, text) in WIT.iter().chain(sdk) {
        hash.update(name.as_bytes());
        hash.update([0]);
        hash.update(text.as_bytes());
        hash.update([0]);
    }
    let mut total = 0u64;
    for rel in &files {
        let bytes = std::fs::read(dir.join(rel))?;
        total += bytes.len() as u64;
        if total > MAX_PROJECT_BYTES {
            return Err(BuildError::BadProject {
                dir: dir.to_path_buf(),
                reason: format!(
                    "the project's files hold more than {} MiB (node_modules, hidden folders \
                     and caches not counted); is this the right directory?",
                    MAX_PROJECT_BYTES >> 20
                ),
            });
        }
        hash.update(rel.to_string_lossy().as_bytes());
        hash.update([0]);
        hash.update(&bytes);
    }
    Ok(hex::encode(hash.finalize()))
}

/// Every file under `dir` that a build may read: not hidden, not dependencies or caches.
fn collect_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), BuildError> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "node_modules" || name == "__pycache__" {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect_files(root, &entry.path(), out)?;
        } else if kind.is_file() {
            if out.len() >= MAX_PROJECT_FILES {
                return Err(BuildError::BadProject {
                    dir: root.to_path_buf(),
                    reason: format!(
                        "the project has more than {MAX_PROJECT_FILES} files (node_modules, \
                         hidden folders and caches not counted); is this the right directory?"
                    ),
                });
            }
            let path = entry.path();
            out.push(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
        }
    }
    Ok(())
}

/// The first of `dirs` that holds an executable `name`, else `name` on `PATH`.
fn find_tool(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    dirs.iter()
        .cloned()
        .chain(std::env::split_paths(&path))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Build `app.py` with componentize-py.
fn build_python(dir: &Path) -> Result<PathBuf, BuildError> {
    let staged = Staged::new(dir, Language::Python, PY_SDK)?;
    if !staged.dir.join("app.py").is_file() {
        return Err(BuildError::BadProject {
            dir: staged.dir,
            reason: "a Python handler lives in app.py (a function decorated with \
                     @sluice_sdk.handler); there is no app.py"
                .into(),
        });
    }
    if let Some(done) = staged.current() {
        eprintln!(
            "sluice: {} is unchanged since its last build",
            staged.dir.display()
        );
        return Ok(done);
    }
    let tool = find_tool("componentize-py", &[]).ok_or_else(|| BuildError::MissingTool {
        language: Language::Python,
        tool: "componentize-py",
        install: format!(
            "install it with `pip install componentize-py=={COMPONENTIZE_PY_VERSION}`"
        ),
    })?;
    let sdk_root = staged.build.join("py");
    let wit = staged.write_inputs(&sdk_root.join("sluice_sdk"), PY_SDK)?;
    eprintln!(
        "sluice: building {} with componentize-py",
        staged.dir.display()
    );
    let status = Command::new(tool)
        .arg("-d")
        .arg(&wit)
        .args(["-w", "plugin", "componentize"])
        // The project first, so its own modules win; then the SDK.
        .arg("-p")
        .arg(&staged.dir)
        .arg("-p")
        .arg(&sdk_root)
        .arg("app")
        .arg("-o")
        .arg(&staged.output)
        .current_dir(&staged.dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()?;
    if !status.success() {
        return Err(BuildError::ToolFailed {
            tool: "componentize-py",
            dir: staged.dir,
        });
    }
    staged.done()
}

/// Bundle the project's entry (package.json `main`, else `app.js`) with rolldown, resolving
/// `@sluice/sdk` to the SDK in this binary, then build it with componentize-js.
fn build_js(dir: &Path) -> Result<PathBuf, BuildError> {
    let js_sdk: &[(&str, &str)] = &[("sluice.js", JS_SDK)];
    let staged = Staged::new(dir, Language::JavaScript, js_sdk)?;
    let package: serde_json::Value =
        serde_json::from_slice(&std::fs::read(staged.dir.join("package.json"))?).map_err(|e| {
            BuildError::BadProject {
                dir: staged.dir.clone(),
                reason: format!("package.json is not valid JSON: {e}"),
            }
        })?;
    let entry = package["main"].as_str().unwrap_or("app.js");
    let entry = staged.dir.join(entry);
    if !entry.is_file() {
        return Err(BuildError::BadProject {
            dir: staged.dir.clone(),
            reason: format!(
                "the handler's module {} does not exist (package.json `main`, or app.js)",
                entry.display()
            ),
        });
    }
    if let Some(done) = staged.current() {
        eprintln!(
            "sluice: {} is unchanged since its last build",
            staged.dir.display()
        );
        return Ok(done);
    }
    let install = format!(
        "run `npm ci --prefix {}/sdk-js` (the versions this Sluice is tested with), or \
         `npm install -g @bytecodealliance/componentize-js@{COMPONENTIZE_JS_VERSION} \
         rolldown@{ROLLDOWN_VERSION}`",
        Path::new(CHECKOUT)
            .canonicalize()
            .unwrap_or_else(|_| CHECKOUT.into())
            .display()
    );
    if find_tool("node", &[]).is_none() {
        return Err(BuildError::MissingTool {
            language: Language::JavaScript,
            tool: "Node.js (node)",
            install: "install Node.js 18 or later (e.g. `apt-get install nodejs npm`)".into(),
        });
    }
    let bins = [
        staged.dir.join("node_modules/.bin"),
        Path::new(CHECKOUT).join("sdk-js/node_modules/.bin"),
    ];
    let missing = |tool| BuildError::MissingTool {
        language: Language::JavaScript,
        tool,
        install: install.clone(),
    };
    let componentize =
        find_tool("componentize-js", &bins).ok_or_else(|| missing("componentize-js"))?;
    let rolldown = find_tool("rolldown", &bins).ok_or_else(|| missing("rolldown"))?;

    let sdk_dir = staged.build.join("js");
    let wit = staged.write_inputs(&sdk_dir, js_sdk)?;
    let bundle = staged.build.join("bundle.js");
    let config = staged.build.join("rolldown.config.mjs");
    // Host imports stay imports; `@sluice/sdk` is the SDK written above; anything else
    // resolves from the project's node_modules as usual.
    let js = |p: &Path| serde_json::Value::from(p.to_string_lossy()).to_string();
    std::fs::write(
        &config,
        format!(
            "export default {{\n  input: {},\n  external: [/^sluice:plugin\\//, /^wasi:/],\n  \
             resolve: {{ alias: {{ '@sluice/sdk': {} }} }},\n  \
             output: {{ file: {}, format: 'esm' }},\n}};\n",
            js(&entry),
            js(&sdk_dir.join("sluice.js")),
            js(&bundle)
        ),
    )?;
    eprintln!("sluice: bundling {} with rolldown", staged.dir.display());
    let status = Command::new(rolldown)
        .arg("-c")
        .arg(&config)
        .current_dir(&staged.dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()?;
    if !status.success() {
        return Err(BuildError::ToolFailed {
            tool: "rolldown",
            dir: staged.dir,
        });
    }
    eprintln!(
        "sluice: building {} with componentize-js",
        staged.dir.display()
    );
    let status = Command::new(componentize)
        .arg(&bundle)
        .arg("-w")
        .arg(&wit)
        .args(["-n", "plugin"])
        // componentize-js imports wasi:http for `fetch` unless told not to; the engine links
        // no HTTP (a handler reaches the network only through `models`).
        .args(["-d", "http", "fetch-event"])
        .arg("-o")
        .arg(&staged.output)
        .current_dir(&staged.dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()?;
    if !status.success() {
        return Err(BuildError::ToolFailed {
            tool: "componentize-js",
            dir: staged.dir,
        });
    }
    staged.done()
}

/// The Rust target plugins build for.
pub const WASM_TARGET: &str = "wasm32-wasip2";

/// Make sure the toolchain that builds `dir` has the wasm32-wasip2 target, adding it through
/// rustup when it is missing (saying so): rustup adds the targets a `rust-toolchain.toml`
/// names only when it installs the toolchain, not to one already installed, and a build
/// without the target fails only after compiling for a while, with `can't find crate for std`.
/// Without rustup (a toolchain from elsewhere) nothing is checked: cargo will say.
pub fn ensure_wasm_target(dir: &Path) -> Result<(), BuildError> {
    let listed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(dir)
        .stderr(Stdio::null())
        .output();
    let Ok(listed) = listed else {
        return Ok(());
    };
    if !listed.status.success()
        || String::from_utf8_lossy(&listed.stdout)
            .lines()
            .any(|l| l.trim() == WASM_TARGET)
    {
        return Ok(());
    }
    eprintln!(
        "sluice: the Rust target {WASM_TARGET} is missing; adding it with `rustup target add {WASM_TARGET}`"
    );
    let added = Command::new("rustup")
        .args(["target", "add", WASM_TARGET])
        .current_dir(dir)
        .status()
        .map_err(|e| BuildError::NoTarget(e.to_string(), dir.to_path_buf()))?;
    if !added.success() {
        return Err(BuildError::NoTarget(
            format!("rustup exited with {added}"),
            dir.to_path_buf(),
        ));
    }
    Ok(())
}

/// The WASI 0.2 packages the engine links (`wasmtime_wasi::p2::add_to_linker_async`).
const LINKED_WASI: &[&str] = &[
    "wasi:io",
    "wasi:clocks",
    "wasi:random",
    "wasi:cli",
    "wasi:filesystem",
    "wasi:sockets",
];

/// The names a component imports at its top level (`wasi:cli/environment@0.2.3`, …); empty
/// when the bytes are not a component (the engine says what they are instead).
pub fn component_imports(bytes: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else {
            return names;
        };
        match payload {
            wasmparser::Payload::Version {
                encoding: wasmparser::Encoding::Module,
                ..
            } if depth == 0 => return names,
            wasmparser::Payload::ModuleSection { .. }
            | wasmparser::Payload::ComponentSection { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader.into_iter().flatten() {
                    names.push(import.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    names
}

/// Why the engine would refuse to link `import`, or `None` when it links it. Only interfaces
/// (`namespace:package/name`) outside `sluice:` are judged here; the world's own imports and
/// plain names (the types a world `use`s, such as `job-info`) the engine checks itself.
pub fn unlinked_import_reason(import: &str) -> Option<String> {
    let (path, version) = import.split_once('@').unwrap_or((import, ""));
    let (package, _) = path.split_once('/')?;
    if package.starts_with("sluice:") || !package.contains(':') {
        return None;
    }
    if package == "wasi:http" {
        return Some(
            "the engine links no HTTP client or server: a handler reaches the network only \
             through the host's `models` interface, so every call passes budgets, rate limits \
             and the journal (componentize-js adds wasi:http for `fetch` unless built with \
             `--disable http fetch-event`, as `sluice run` does)"
                .into(),
        );
    }
    if !package.starts_with("wasi:") {
        return Some(format!(
            "it is neither WASI 0.2 nor part of the sluice:plugin world; a handler may import \
             only {} and sluice:plugin",
            LINKED_WASI.join(", ")
        ));
    }
    if !LINKED_WASI.contains(&package) {
        return Some(format!(
            "the engine links only these WASI 0.2 packages: {}",
            LINKED_WASI.join(", ")
        ));
    }
    if !version.is_empty() && !version.starts_with("0.2.") {
        return Some(format!(
            "the engine links WASI 0.2 (preview 2) only, not {version}; build against WASI 0.2"
        ));
    }
    None
}

/// Refuse a component that imports an interface the engine does not link, naming it and why,
/// before it is run or uploaded.
pub fn check_imports(file: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    for import in component_imports(bytes) {
        if let Some(why) = unlinked_import_reason(&import) {
            return Err(BuildError::UnlinkedImport {
                file: file.to_path_buf(),
                import,
                why,
            });
        }
    }
    Ok(())
}

/// Read a component from a `.wasm` file, or build it first when `path` is a directory, and
/// check that the engine links everything it imports.
pub fn component_bytes(path: &Path) -> Result<(PathBuf, Vec<u8>), BuildError> {
    let file = if path.is_dir() {
        build_plugin_dir(path)?
    } else {
        path.to_path_buf()
    };
    let bytes = std::fs::read(&file)?;
    check_imports(&file, &bytes)?;
    Ok((file, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files compiled into the binary are all there are: a new `.wit` or SDK module that is
    /// not listed would silently be missing from every Python and JavaScript build.
    #[test]
    fn embedded_files_match_the_tree() {
        let list = |dir: &str, ext: &str| {
            let mut names: Vec<String> = std::fs::read_dir(Path::new(CHECKOUT).join(dir))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(ext))
                .collect();
            names.sort();
            names
        };
        let names = |files: &[(&str, &str)]| {
            let mut n: Vec<String> = files.iter().map(|(n, _)| n.to_string()).collect();
            n.sort();
            n
        };
        assert_eq!(names(WIT), list("wit", ".wit"));
        assert_eq!(names(PY_SDK), list("sdk-py/sluice_sdk", ".py"));
    }

    #[test]
    fn detects_the_language_by_its_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            detect(dir.path()),
            Err(BuildError::NotAProject(_))
        ));
        std::fs::write(dir.path().join("package.json"), "{}").unwrap();
        assert_eq!(detect(dir.path()).unwrap(), Language::JavaScript);
        std::fs::write(dir.path().join("app.py"), "").unwrap();
        assert_eq!(detect(dir.path()).unwrap(), Language::Python);
        std::fs::write(dir.path().join("Cargo.toml"), "").unwrap();
        assert_eq!(detect(dir.path()).unwrap(), Language::Rust);
    }

    #[test]
    fn imports_the_engine_does_not_link_are_named() {
        for ok in [
            "wasi:cli/environment@0.2.3",
            "wasi:io/streams@0.2.0",
            "wasi:clocks/monotonic-clock@0.2.10",
            "sluice:plugin/models@0.1.0",
            "job-info",
        ] {
            assert_eq!(unlinked_import_reason(ok), None, "{ok}");
        }
        let why = unlinked_import_reason("wasi:http/types@0.2.10").unwrap();
        assert!(why.contains("no HTTP") && why.contains("models"), "{why}");
        let why = unlinked_import_reason("wasi:keyvalue/store@0.2.0-draft").unwrap();
        assert!(why.contains("only these WASI 0.2 packages"), "{why}");
        let why = unlinked_import_reason("wasi:io/streams@0.3.0").unwrap();
        assert!(why.contains("preview 2"), "{why}");
        let why = unlinked_import_reason("acme:secrets/vault").unwrap();
        assert!(why.contains("neither WASI"), "{why}");
    }

    #[test]
    fn a_module_or_garbage_has_no_component_imports() {
        assert!(component_imports(b"definitely not wasm").is_empty());
        // A core module header: the engine explains that one.
        assert!(component_imports(b"\0asm\x01\0\0\0").is_empty());
    }

    #[test]
    fn the_fingerprint_follows_the_project_files_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.py"), "a = 1").unwrap();
        let first = fingerprint(dir.path(), Language::Python, PY_SDK).unwrap();
        std::fs::create_dir_all(dir.path().join(BUILD_DIR)).unwrap();
        std::fs::write(dir.path().join(BUILD_DIR).join("x.wasm"), "out").unwrap();
        std::fs::create_dir_all(dir.path().join("__pycache__")).unwrap();
        std::fs::write(dir.path().join("__pycache__/app.pyc"), "c").unwrap();
        assert_eq!(
            fingerprint(dir.path(), Language::Python, PY_SDK).unwrap(),
            first
        );
        std::fs::write(dir.path().join("app.py"), "a = 2").unwrap();
        assert_ne!(
            fingerprint(dir.path(), Language::Python, PY_SDK).unwrap(),
            first
        );
    }
}
