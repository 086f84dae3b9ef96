//! Product logins (PROTOCOL.md §5.13) against a product backend of the test's own
//! (tests/accounts/product.py, PyJWT): tokens signed with every key type log SDK clients
//! in as the product's users; bad tokens are refused with typed errors; a session outlives
//! its token through the app's token provider, or through `set_token` after a reconnect;
//! a new JWKS key works without a restart; password logins can be switched off.
use crate::common;

use std::io::BufRead;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use natter_protocol::pb::{self, ErrorCode};
use natter_sdk::{Client, ClientError, ClientEvent, RequestError, TokenProvider};
use natter_server::security::jwt::{IssuerConfig, PublicKeyConfig};
use natter_server::security::Secret;
use natter_server::RunningServer;

const ISSUER: &str = "https://product.test";
const JWKS_ISSUER: &str = "https://keys.product.test";

/// The product backend: a Python process minting tokens on a loopback port.
struct Product {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Product {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Product {
    fn start() -> Product {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/accounts/product.py");
        let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/py/bin/python");
        let mut child = std::process::Command::new(python)
            .arg(script)
            .arg(dir.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the product backend starts (scripts/test.sh installs PyJWT)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().strip_prefix("port ").expect("port line").parse().unwrap();
        Product { child, port, dir }
    }

    /// Mint a token; `q` is the query (sub=…&alg=…).
    async fn token(&self, q: &str) -> String {
        let url = format!("http://127.0.0.1:{}/token?{q}", self.port);
        reqwest::get(url).await.unwrap().text().await.unwrap()
    }

    async fn rotate(&self) {
        let url = format!("http://127.0.0.1:{}/rotate", self.port);
        let r = reqwest::Client::new().post(url).send().await.unwrap();
        assert!(r.status().is_success());
    }

    /// Two issuers: HS256 + an RS256 PEM key, and one whose keys come from the JWKS.
    fn issuers(&self) -> Vec<IssuerConfig> {
        let secret = std::fs::read_to_string(self.dir.path().join("hs256.secret")).unwrap();
        vec![
            IssuerConfig {
                issuer: ISSUER.into(),
                audience: vec!["natter".into()],
                hs256_secret: Some(Secret(secret)),
                public_keys: vec![PublicKeyConfig {
                    algorithm: "RS256".into(),
                    pem_file: self.dir.path().join("rs256.pem"),
                    kid: None,
                }],
                ..Default::default()
            },
            IssuerConfig {
                issuer: JWKS_ISSUER.into(),
                audience: vec!["natter".into()],
                jwks_url: Some(format!("http://127.0.0.1:{}/jwks.json", self.port)),
                ..Default::default()
            },
        ]
    }
}

async fn server_with(product: &Product, dir: &Path, tune: impl FnOnce(&mut natter_server::Config)) -> RunningServer {
    let mut cfg = config(dir);
    cfg.token_issuers = product.issuers();
    tune(&mut cfg);
    natter_server::start(&cfg).await.expect("server starts")
}

fn code_of(e: &ClientError) -> ErrorCode {
    match e {
        ClientError::Request(RequestError::Server(s)) => s.code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

/// Log in with a token; the client and its login.
async fn token_client(s: &RunningServer, token: &str) -> (Client, natter_sdk::Events, natter_sdk::LoginInfo) {
    let (client, mut events) = Client::connect(client_config(s.addr, &s.fingerprint, None)).unwrap();
    let info = client.login_with_token(token, "phone").await.expect("token login");
    wait_for(&mut events, |e| {
        matches!(e, ClientEvent::Connected { .. }).then_some(())
    })
    .await;
    (client, events, info)
}

#[tokio::test]
async fn tokens_signed_with_every_key_type_log_the_products_users_in() {
    let product = Product::start();
    let dir = tempfile::tempdir().unwrap();
    let s = server_with(&product, dir.path(), |_| {}).await;

    // HS256 first: the user is made, with the username the product suggested.
    let t = product
        .token("sub=product-user-1&alg=HS256&preferred_username=ann&name=Ann%20Lee")
        .await;
    let (ann, _ev, first) = token_client(&s, &t).await;
    let summary = ann.create_channel("general").await.unwrap();
    assert_eq!(summary.my_role, pb::Role::Owner as i32);

    // The same subject with every other key type is the same user, a new device each time.
    let mut devices = vec![first.device_id];
    for (alg, iss) in [("RS256", ISSUER), ("ES256", JWKS_ISSUER), ("EdDSA", JWKS_ISSUER)] {
        let t = product.token(&format!("sub=product-user-1&alg={alg}&iss={iss}")).await;
        let (c, _e, info) = token_client(&s, &t).await;
        assert_eq!(info.user_id, first.user_id, "{alg}");
        devices.push(info.device_id);
        let list = c.conversations().await.unwrap();
        assert!(list.iter().any(|c| c.name == "general"), "{alg}: the same account");
    }
    devices.dedup();
    assert_eq!(devices.len(), 4);

    // Another subject is another user; a taken preferred username falls back to one
    // derived from the subject, and people find each other by username.
    let t = product.token("sub=product-user-2&preferred_username=ann").await;
    let (bob, _bob_ev, second) = token_client(&s, &t).await;
    assert_ne!(second.user_id, first.user_id);
    let dm = bob.direct("ann").await.expect("ann is the first user's username");
    assert_eq!(dm.name, "ann");
    s.shutdown().await;
}

#[tokio::test]
async fn bad_tokens_are_refused_with_typed_errors() {
    let product = Product::start();
    let dir = tempfile::tempdir().unwrap();
    let s = server_with(&product, dir.path(), |c| c.token_leeway_secs = 0).await;
    let none = {
        // alg none: the claims of a good token with no signature.
        let good = product.token("sub=mallory").await;
        let claims = good.split('.').nth(1).unwrap().to_string();
        use base64::Engine;
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        format!("{header}.{claims}.")
    };
    let cases = [
        (
            "wrong audience",
            product.token("sub=mallory&aud=other").await,
            ErrorCode::InvalidToken,
        ),
        (
            "bad HS256 signature",
            product.token("sub=mallory&sign_with=other").await,
            ErrorCode::InvalidToken,
        ),
        (
            "bad RS256 signature",
            product.token("sub=mallory&alg=RS256&sign_with=other").await,
            ErrorCode::InvalidToken,
        ),
        (
            "bad ES256 signature",
            product
                .token(&format!("sub=mallory&alg=ES256&iss={JWKS_ISSUER}&sign_with=other"))
                .await,
            ErrorCode::InvalidToken,
        ),
        (
            "an issuer not trusted",
            product.token("sub=mallory&iss=https://evil.test").await,
            ErrorCode::InvalidToken,
        ),
        ("alg none", none, ErrorCode::InvalidToken),
        (
            "not yet valid",
            product.token("sub=mallory&nbf_in=300").await,
            ErrorCode::InvalidToken,
        ),
        (
            "expired",
            product.token("sub=mallory&exp_in=-5").await,
            ErrorCode::TokenExpired,
        ),
        ("not a JWT", "hello".to_string(), ErrorCode::InvalidToken),
    ];
    let (client, _events) = Client::connect(client_config(s.addr, &s.fingerprint, None)).unwrap();
    for (what, token, code) in cases {
        let err = client.login_with_token(&token, "x").await.expect_err(what);
        assert_eq!(code_of(&err), code, "{what}: {err}");
    }
    // Nothing of it made a user or a device: a good token for the same subject is the
    // first login of a fresh user.
    let t = product.token("sub=mallory&preferred_username=mallory").await;
    let info = client.login_with_token(&t, "x").await.unwrap();
    let devices = client.devices().await.unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].device_id, info.device_id.0);
    s.shutdown().await;
}

#[tokio::test]
async fn the_token_provider_renews_a_token_before_it_expires_and_the_session_goes_on() {
    let product = Arc::new(Product::start());
    let dir = tempfile::tempdir().unwrap();
    // Tokens of 4 s, renewal asked 2 s before expiry, no leeway.
    let s = server_with(&product, dir.path(), |c| {
        c.token_leeway_secs = 0;
        c.token_refresh_ahead_secs = 2;
    })
    .await;
    let (bob, mut bob_ev, _) = token_client(&s, &product.token("sub=bob&preferred_username=bob").await).await;

    let asked = Arc::new(AtomicUsize::new(0));
    let mut cfg = client_config(s.addr, &s.fingerprint, None);
    cfg.token_provider = Some(TokenProvider::new({
        let (product, asked) = (product.clone(), asked.clone());
        move || {
            let (product, asked) = (product.clone(), asked.clone());
            async move {
                asked.fetch_add(1, Ordering::SeqCst);
                Some(product.token("sub=ann&preferred_username=ann&exp_in=4").await)
            }
        }
    }));
    let (ann, mut ann_ev) = Client::connect(cfg).unwrap();
    ann.login_with_token(
        &product.token("sub=ann&preferred_username=ann&exp_in=4").await,
        "laptop",
    )
    .await
    .unwrap();
    let dm = natter_sdk::ConversationId(ann.direct("bob").await.unwrap().conversation_id);

    // Well past the first token's expiry (4 s) and a second one's: the provider was asked
    // each time, the connection never dropped, and messages go both ways.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut n = 0;
    let mut renewals = 0;
    let mut reconnects = 0;
    while tokio::time::Instant::now() < deadline || renewals < 2 {
        n += 1;
        ann.send(dm, &format!("m{n}")).await.expect("the session goes on");
        let got = messages(&mut bob_ev, dm, 1).await;
        assert_eq!(got[0].1, format!("m{n}"));
        while let Ok(Some(ev)) = tokio::time::timeout(std::time::Duration::from_millis(300), ann_ev.next()).await {
            match ev {
                ClientEvent::TokenNeeded { expires_at_ms } => {
                    assert!(expires_at_ms > 0, "told ahead of expiry, not after");
                    renewals += 1;
                }
                ClientEvent::Disconnected { .. } | ClientEvent::ConnectionError(_) => reconnects += 1,
                _ => {}
            }
        }
        assert!(n < 100, "bounded");
    }
    assert!(
        asked.load(Ordering::SeqCst) >= 2,
        "the provider was asked for each renewal"
    );
    assert_eq!(reconnects, 0, "renewed in place, never closed");
    drop(bob);
    s.shutdown().await;
}

#[tokio::test]
async fn an_expired_token_closes_the_connection_and_a_fresh_one_resumes_the_same_device() {
    let product = Product::start();
    let dir = tempfile::tempdir().unwrap();
    let s = server_with(&product, dir.path(), |c| {
        c.token_leeway_secs = 0;
        c.token_refresh_ahead_secs = 1;
    })
    .await;
    let (bob, _bob_ev, _) = token_client(&s, &product.token("sub=bob&preferred_username=bob").await).await;
    // No provider: the app answers TokenNeeded itself — here, only after the token died.
    let t = product.token("sub=ann&preferred_username=ann&exp_in=3").await;
    let (ann, mut ann_ev, info) = token_client(&s, &t).await;
    let dm = natter_sdk::ConversationId(bob.direct("ann").await.unwrap().conversation_id);
    wait_for(&mut ann_ev, |e| {
        matches!(e, ClientEvent::TokenNeeded { expires_at_ms } if *expires_at_ms > 0).then_some(())
    })
    .await;
    let closed = wait_for(&mut ann_ev, |e| match e {
        ClientEvent::ConnectionError(e) => Some(e.code),
        _ => None,
    })
    .await;
    assert_eq!(closed, ErrorCode::TokenExpired);
    // Reconnecting with the dead token waits for a fresh one; meanwhile bob writes.
    wait_for(&mut ann_ev, |e| {
        matches!(e, ClientEvent::TokenNeeded { expires_at_ms: 0 }).then_some(())
    })
    .await;
    bob.send(dm, "while you were out").await.unwrap();
    ann.set_token(&product.token("sub=ann&exp_in=600").await);
    let got = messages(&mut ann_ev, dm, 1).await;
    assert_eq!(got[0].1, "while you were out");
    let devices = ann.devices().await.unwrap();
    assert_eq!(devices.len(), 1, "the same device, not a new login");
    assert_eq!(devices[0].device_id, info.device_id.0);

    // A token for someone else does not renew this device.
    let err = ann
        .refresh_token(&product.token("sub=bob").await)
        .await
        .expect_err("another subject");
    assert_eq!(code_of(&err), ErrorCode::InvalidToken);
    let fresh = product.token("sub=ann&exp_in=900").await;
    let until = ann.refresh_token(&fresh).await.expect("its own subject");
    assert!(until > natter_server::clock::now_ms() + 800_000);
    s.shutdown().await;
}

#[tokio::test]
async fn a_new_jwks_key_works_without_a_restart() {
    let product = Product::start();
    let dir = tempfile::tempdir().unwrap();
    let s = server_with(&product, dir.path(), |_| {}).await;
    let (client, _e) = Client::connect(client_config(s.addr, &s.fingerprint, None)).unwrap();
    // Before the rotation the key is unknown everywhere.
    let early = product
        .token(&format!("sub=ann&alg=ES256&iss={JWKS_ISSUER}&kid=es-1"))
        .await;
    client.login_with_token(&early, "a").await.unwrap();
    product.rotate().await;
    let rotated = product
        .token(&format!("sub=bob&alg=ES256&iss={JWKS_ISSUER}&kid=es-2"))
        .await;
    let (c2, _e2) = Client::connect(client_config(s.addr, &s.fingerprint, None)).unwrap();
    c2.login_with_token(&rotated, "b")
        .await
        .expect("the new key is fetched on first sight");
    // The old key still works too.
    let (c3, _e3) = Client::connect(client_config(s.addr, &s.fingerprint, None)).unwrap();
    c3.login_with_token(&early, "c").await.unwrap();
    s.shutdown().await;
}

#[tokio::test]
async fn password_logins_can_be_switched_off() {
    let product = Product::start();
    let dir = tempfile::tempdir().unwrap();
    let s = server_with(&product, dir.path(), |c| c.password_logins = false).await;
    let (client, _e) = Client::connect(client_config(s.addr, &s.fingerprint, None)).unwrap();
    let err = client.register("carol", PASSWORD).await.expect_err("no passwords");
    assert_eq!(code_of(&err), ErrorCode::Forbidden);
    let err = client.login("carol", PASSWORD, "x").await.expect_err("no passwords");
    assert_eq!(code_of(&err), ErrorCode::Forbidden);
    client
        .login_with_token(&product.token("sub=carol").await, "x")
        .await
        .expect("tokens still log in");
    s.shutdown().await;

    // And token logins are off where no issuer is configured.
    let dir = tempfile::tempdir().unwrap();
    let plain = server(dir.path()).await;
    let (client, _e) = Client::connect(client_config(plain.addr, &plain.fingerprint, None)).unwrap();
    let err = client
        .login_with_token(&product.token("sub=carol").await, "x")
        .await
        .expect_err("no issuers");
    assert_eq!(code_of(&err), ErrorCode::Forbidden);
    plain.shutdown().await;
}

#[tokio::test]
async fn the_cli_logs_in_with_a_token_and_runs_its_token_command_when_it_expires() {
    let product = Product::start();
    let dir = tempfile::tempdir().unwrap();
    let s = server_with(&product, dir.path(), |c| c.token_leeway_secs = 0).await;
    let profile = dir.path().join("cli");
    let (addr, fp) = (s.addr.to_string(), s.fingerprint.clone());
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/py/bin/python");
    let fresh = format!(
        "{} -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1:{}/token?sub=cli-user&exp_in=600').read().decode())\"",
        python.display(),
        product.port
    );
    let short = product.token("sub=cli-user&preferred_username=carla&exp_in=2").await;
    let out = cli(
        &profile,
        &[
            "--server",
            &addr,
            "--fingerprint",
            &fp,
            "login-token",
            "--token",
            &short,
            "--token-command",
            &fresh,
        ],
    )
    .await;
    assert_eq!(out[0]["logged_in"], "carla");
    // Past the token's expiry: the next command's Authenticate is refused as expired, the
    // saved command is run, and the command goes through on the same device.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let made = cli(&profile, &["channel", "cli-room"]).await;
    assert_eq!(made[0]["name"], "cli-room");
    let devices = cli(&profile, &["devices"]).await;
    assert_eq!(devices.len(), 1, "no second login: {devices:?}");
    // And renewing by hand prints the new expiry; another user's token is refused.
    let t = product.token("sub=cli-user&exp_in=900").await;
    let renewed = cli(&profile, &["set-token", "--token", &t]).await;
    assert!(renewed[0]["token_expires_at_ms"].as_u64().unwrap() > natter_server::clock::now_ms() + 800_000);
    let other = product.token("sub=someone-else").await;
    let err = cli_fails(&profile, &["set-token", "--token", &other]).await;
    assert!(err.contains("INVALID_TOKEN") || err.contains("another user"), "{err}");
    s.shutdown().await;
}
