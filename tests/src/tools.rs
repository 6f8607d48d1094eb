//! Third-party tools for tests, installed on first use into the build cache (next to `target/`,
//! never into the system Python or a global `node_modules`), pinned, created once under a file
//! lock so concurrent test binaries do not race, and reused afterwards.
//!
//! - [`python`]: a virtual environment (without system site-packages) with pinned packages.
//! - [`node_modules`]: an npm install of pinned packages.

use std::path::{Path, PathBuf};
use std::process::Command;

/// PyPI packages the tests use, pinned.
pub const PY_GRPC: &[&str] = &[
    "grpcio==1.85.1",
    "grpcio-tools==1.85.1",
    "googleapis-common-protos==1.76.0",
];
/// PyPI packages the deployment test uses, pinned.
pub const PY_KUBE: &[&str] = &["kubernetes-validate==1.37.0", "PyYAML==6.0.2"];
/// npm packages the Node client uses, pinned (the same as `tests/clients/node/package.json`).
pub const NPM_GRPC: &[(&str, &str)] = &[
    ("@grpc/grpc-js", "1.14.7"),
    ("@grpc/proto-loader", "0.7.15"),
];

/// npm package of the protobuf contract checks (`buf lint`, `buf breaking`), pinned.
pub const NPM_BUF: &[(&str, &str)] = &[("@bufbuild/buf", "1.75.0")];

/// The build cache's tool directory: `$CARGO_TARGET_DIR/tools`, found from the running test
/// executable (`<target>/<profile>/deps/<test>`) when the variable is not set.
pub fn tools_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.parent()?.to_path_buf())
        })
        .unwrap_or_else(std::env::temp_dir);
    target.join("tools")
}

fn key(parts: &[String]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Run `make` into `dir` once: under an exclusive lock, skipped when `dir/.ready` exists; a
/// failed attempt is removed so the next run starts clean.
fn once(dir: &Path, what: &str, make: impl FnOnce(&Path) -> Result<(), String>) -> PathBuf {
    let base = dir.parent().expect("tools dir");
    std::fs::create_dir_all(base).expect("create the tools directory");
    let lock = std::fs::File::create(base.join(".lock")).expect("tools lock file");
    lock.lock().expect("lock the tools directory");
    if !dir.join(".ready").exists() {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).expect("create tool directory");
        eprintln!("installing {what} into {} (once)", dir.display());
        if let Err(e) = make(dir) {
            let _ = std::fs::remove_dir_all(dir);
            panic!("installing {what} failed: {e}");
        }
        std::fs::write(dir.join(".ready"), what).expect("mark tool directory ready");
    }
    drop(lock);
    dir.to_path_buf()
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} exited with {}:\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The Python interpreter of a virtual environment holding `packages` (pinned requirement
/// strings), created on first use.
pub fn python(packages: &[&str]) -> PathBuf {
    let parts: Vec<String> = packages.iter().map(|s| s.to_string()).collect();
    let dir = tools_dir().join(format!("py-{}", key(&parts)));
    let venv = once(&dir, &format!("PyPI packages {packages:?}"), |dir| {
        run(Command::new("python3").args(["-m", "venv"]).arg(dir))?;
        run(Command::new(dir.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(packages))
    });
    venv.join("bin/python")
}

/// A directory whose `node_modules` holds `packages` (name, exact version), installed on first
/// use. Use it as the working directory or through `NODE_PATH`.
pub fn node_modules(packages: &[(&str, &str)]) -> PathBuf {
    let parts: Vec<String> = packages.iter().map(|(n, v)| format!("{n}@{v}")).collect();
    let dir = tools_dir().join(format!("node-{}", key(&parts)));
    once(&dir, &format!("npm packages {parts:?}"), |dir| {
        let deps: Vec<String> = packages
            .iter()
            .map(|(n, v)| format!("\"{n}\": \"{v}\""))
            .collect();
        std::fs::write(
            dir.join("package.json"),
            format!(
                "{{\"name\": \"musig2-test-tools\", \"private\": true, \"dependencies\": {{{}}}}}\n",
                deps.join(", ")
            ),
        )
        .map_err(|e| e.to_string())?;
        run(Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund"])
            .current_dir(dir))
    })
}
