//! Fingerprints the worker's code: a hash of its sources and of the crates
//! it is built from (this crate, the dispatcher and supervise crates, the
//! lock file), as `CIRCLES_WORKER_SOURCE_ID`. The `worker` binary prints it
//! in `--version`, and the launcher, which embeds the same worker, compares
//! it with a `worker` binary beside it that is older than itself: cargo
//! relinks only binaries whose code changed, so an older file may still be
//! current — or left from an earlier build.

use std::hash::{DefaultHasher, Hasher};
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest
        .parent()
        .expect("the worker crate is in the workspace");
    let inputs = [
        manifest.join("src"),
        manifest.join("Cargo.toml"),
        workspace.join("dispatcher/src"),
        workspace.join("dispatcher/Cargo.toml"),
        workspace.join("supervise/src"),
        workspace.join("supervise/Cargo.toml"),
        workspace.join("Cargo.lock"),
    ];
    let mut files = Vec::new();
    for input in &inputs {
        println!("cargo:rerun-if-changed={}", input.display());
        collect(input, &mut files);
    }
    files.sort();
    // DefaultHasher's keys are fixed: the same sources give the same id
    // with the same toolchain, which is all a comparison between two
    // binaries of one build needs.
    let mut hasher = DefaultHasher::new();
    for file in &files {
        hasher.write(
            file.strip_prefix(workspace)
                .unwrap_or(file)
                .to_string_lossy()
                .as_bytes(),
        );
        hasher.write(&std::fs::read(file).unwrap_or_default());
    }
    println!(
        "cargo:rustc-env=CIRCLES_WORKER_SOURCE_ID={:016x}",
        hasher.finish()
    );
}

/// Every file at or under `path` (a missing path adds nothing).
fn collect(path: &Path, files: &mut Vec<PathBuf>) {
    match std::fs::read_dir(path) {
        Ok(entries) => {
            for entry in entries.flatten() {
                collect(&entry.path(), files);
            }
        }
        Err(_) if path.is_file() => files.push(path.to_path_buf()),
        Err(_) => {}
    }
}
