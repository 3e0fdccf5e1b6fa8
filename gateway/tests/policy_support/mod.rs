//! Builds the policy components of `policies/` for `wasm32-wasip2` (once per test binary) and
//! hands out their bytes. The build has a target directory of its own under this workspace's
//! target (`CARGO_TARGET_TMPDIR/policies-target`), so it is cached across runs and never waits
//! for the lock of the build that runs the tests. Without the `wasm32-wasip2` target the tests
//! print SKIPPED and pass, unless `CSPS_E2E_REQUIRED=1` (CI), where they fail; `e2e/setup`
//! installs the target.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Where the built components are, or why there are none.
static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();

fn e2e_required() -> bool {
    std::env::var("CSPS_E2E_REQUIRED").is_ok_and(|v| v == "1")
}

fn build() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the gateway sits in the repository")
        .to_path_buf();
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let libdir = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", "wasm32-wasip2"])
        .output()
        .map_err(|e| format!("running {rustc}: {e}"))?;
    let libdir = String::from_utf8_lossy(&libdir.stdout).trim().to_owned();
    if libdir.is_empty() || !Path::new(&libdir).is_dir() {
        return Err("the wasm32-wasip2 target is not installed (rustup target add wasm32-wasip2; e2e/setup does it)".into());
    }
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("policies-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(root.join("policies").join("Cargo.toml"))
        // From inside policies/, so its .cargo/config.toml (the guests' stack size) applies.
        .current_dir(root.join("policies"))
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .map_err(|e| format!("running cargo: {e}"))?;
    if !out.status.success() {
        panic!(
            "building the policy components failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(target_dir.join("wasm32-wasip2").join("release"))
}

/// The bytes of component `name` (`routing_default`, `test_loop`, …), or `None` after printing
/// SKIPPED when components cannot be built here.
pub fn component(name: &str) -> Option<Vec<u8>> {
    match BUILT.get_or_init(build) {
        Ok(dir) => {
            let path = dir.join(format!("{name}.wasm"));
            Some(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        }
        Err(why) => {
            if e2e_required() {
                panic!("prerequisite missing (CSPS_E2E_REQUIRED=1): {why}");
            }
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}
