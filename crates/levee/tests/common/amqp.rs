//! AMQP client tools for the tests: the Python venv and npm packages that
//! `scripts/amqp-clients.sh` installs under `target/`, and running a client script against a
//! server.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The workspace root.
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn install(what: &str) -> PathBuf {
    let out = Command::new(root().join("scripts/amqp-clients.sh"))
        .arg(what)
        .output()
        .expect("running scripts/amqp-clients.sh");
    assert!(
        out.status.success(),
        "scripts/amqp-clients.sh {what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The venv's python (pika, celery, kombu installed).
pub(crate) fn python() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| install("python"))
}

/// The `node_modules` directory holding amqplib.
pub(crate) fn node_modules() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| install("node"))
}

/// Asserts a client script succeeded, showing its output if not.
pub(crate) fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
