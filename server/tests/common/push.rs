//! The Web Push service on loopback (`tests/push/webpush_provider.py`), from the tests'
//! side: start it, take subscriptions, read what it received and decrypted, and tell it
//! how to answer. Shared by the push tests and the browser's.
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use natter_protocol::pb;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::DEADLINE;

/// The Web Push service stand-in, running until dropped.
pub struct Provider {
    _child: tokio::process::Child,
    base: String,
    http: reqwest::Client,
}

/// One push request as the provider saw it.
#[derive(Debug, serde::Deserialize)]
pub struct Received {
    /// None while the provider holds its answer back.
    pub status: Option<u16>,
    pub length: usize,
    pub topic: Option<String>,
    pub urgency: Option<String>,
    pub problem: Option<String>,
    pub payload: Option<String>,
    pub body: Option<String>,
}

/// base64url without padding to bytes.
pub fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .expect("base64url")
}

impl Provider {
    pub async fn start() -> Provider {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let py = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/py/bin/python");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/push/webpush_provider.py");
        let mut child = tokio::process::Command::new(py)
            .arg(script)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the provider starts (scripts/test.sh makes target/py with http-ece)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let port = line.strip_prefix("port ").expect("port line").to_string();
        Provider {
            _child: child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        }
    }

    /// GET `path` of the provider, as JSON.
    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let res = self.http.get(format!("{}{path}", self.base)).send().await.unwrap();
        serde_json::from_slice(&res.bytes().await.unwrap()).unwrap()
    }

    /// A subscription for `device`, as a browser's PushManager would hand it out.
    pub async fn subscribe(&self, device: &str) -> pb::PushTarget {
        let v: serde_json::Value = self.get(&format!("/subscribe/{device}")).await;
        pb::PushTarget {
            provider: pb::PushProvider::WebPush as i32,
            endpoint: v["endpoint"].as_str().unwrap().into(),
            p256dh: b64(v["p256dh"].as_str().unwrap()),
            auth: b64(v["auth"].as_str().unwrap()),
            ..Default::default()
        }
    }

    /// An endpoint for a device that brings its own keys; bodies are kept as they came.
    pub async fn endpoint(&self, device: &str) -> String {
        let v: serde_json::Value = self.get(&format!("/subscribe/{device}?keys=device")).await;
        v["endpoint"].as_str().unwrap().into()
    }

    /// Every push `device` got so far, in order.
    pub async fn received(&self, device: &str) -> Vec<Received> {
        self.get(&format!("/received/{device}")).await
    }

    /// Wait until `device` got at least `n` pushes and answered each; all of them.
    pub async fn until(&self, device: &str, n: usize) -> Vec<Received> {
        self.until_seen(device, n, true).await
    }

    /// Wait until `device` got at least `n` pushes (`answered`: and the provider answered
    /// each); all of them.
    pub async fn until_seen(&self, device: &str, n: usize, answered: bool) -> Vec<Received> {
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            let got = self.received(device).await;
            if got.len() >= n && (!answered || got.iter().all(|r| r.status.is_some())) {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "{device} got {} of {n} pushes",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Answer `device`'s pushes normally again.
    pub async fn clear(&self, device: &str) {
        self.http
            .post(format!("{}/clear/{device}", self.base))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }

    /// Answer `device`'s next `count` pushes with `status` (and `Retry-After`).
    pub async fn answer(&self, device: &str, status: u16, retry_after: Option<u32>, count: u32) {
        self.answer_after(device, status, retry_after, count, 0.0).await;
    }

    /// [`Provider::answer`], each answer held back `delay` seconds.
    pub async fn answer_after(&self, device: &str, status: u16, retry_after: Option<u32>, count: u32, delay: f64) {
        let mut url = format!(
            "{}/mode/{device}?status={status}&count={count}&delay={delay}",
            self.base
        );
        if let Some(r) = retry_after {
            url += &format!("&retry_after={r}");
        }
        self.http.post(url).send().await.unwrap().error_for_status().unwrap();
    }
}

impl Provider {
    /// A subscription for `device` as a page's `PushSubscription.toJSON()`, as JSON text.
    pub async fn subscription_json(&self, device: &str) -> String {
        let t = self.subscribe(device).await;
        let enc = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        serde_json::json!({ "endpoint": t.endpoint, "keys": { "p256dh": enc(&t.p256dh), "auth": enc(&t.auth) } })
            .to_string()
    }
}

/// The plaintext the provider decrypted from one push.
pub fn plaintext(r: &Received) -> Vec<u8> {
    assert_eq!(r.problem, None, "the provider found a problem");
    b64(r.payload.as_deref().expect("decrypted"))
}
