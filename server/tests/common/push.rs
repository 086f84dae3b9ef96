//! The push services on loopback, from the tests' side: the Web Push service
//! (`tests/push/webpush_provider.py`) and APNs + FCM (`tests/push/mobile_provider.py`,
//! HTTPS with a CA made here). Start one, take subscriptions, read what it received and
//! decrypted, and tell it how to answer. Shared by the push tests and the browser's.
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
    #[serde(default)]
    pub length: usize,
    /// The HTTP version the request came over (APNs and FCM).
    pub http: Option<String>,
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

/// What a server needs to send through the APNs and FCM stand-in.
pub struct MobileAccounts {
    /// The stand-in's CA certificate (the server's `push_ca_file`).
    pub ca_file: std::path::PathBuf,
    pub apns: natter_server::config::ApnsConfig,
    pub fcm: natter_server::config::FcmConfig,
}

impl MobileAccounts {
    /// `cfg` sending through these accounts.
    pub fn apply(&self, cfg: &mut natter_server::config::Config) {
        cfg.push_ca_file = Some(self.ca_file.clone());
        cfg.apns = Some(self.apns.clone());
        cfg.fcm = Some(self.fcm.clone());
    }
}

impl Provider {
    pub async fn start() -> Provider {
        Self::spawn("webpush_provider.py", &[]).await.0
    }

    /// The APNs and FCM stand-in, its files (CA, keys, service account) in `dir`.
    pub async fn start_mobile(dir: &std::path::Path) -> (Provider, MobileAccounts) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca, &ca_key)
            .unwrap();
        let file = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ca_file = file("ca.pem", ca.pem());
        let cert = file("cert.pem", leaf.pem());
        let key = file("key.pem", leaf_key.serialize_pem());
        let (mut p, port) = Self::spawn(
            "mobile_provider.py",
            &[cert.as_os_str(), key.as_os_str(), dir.as_os_str()],
        )
        .await;
        p.base = format!("https://127.0.0.1:{port}");
        p.http = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap()])
            .build()
            .unwrap();
        let accounts = MobileAccounts {
            ca_file,
            apns: natter_server::config::ApnsConfig {
                key_file: dir.join("apns.p8"),
                key_id: "KEY1234567".into(),
                team_id: "TEAM123456".into(),
                topic: "com.example.natter".into(),
                url: p.base.clone(),
                sandbox_url: p.base.clone(),
            },
            fcm: natter_server::config::FcmConfig {
                service_account_file: dir.join("service-account.json"),
                url: p.base.clone(),
            },
        };
        (p, accounts)
    }

    /// A device of `provider` (APNs or FCM) at the stand-in: its token, and keys the
    /// stand-in keeps to decrypt what reaches it.
    pub async fn subscribe_mobile(&self, device: &str, provider: pb::PushProvider) -> pb::PushTarget {
        let name = if provider == pb::PushProvider::Apns {
            "apns"
        } else {
            "fcm"
        };
        let v: serde_json::Value = self.get(&format!("/subscribe/{device}?provider={name}")).await;
        pb::PushTarget {
            provider: provider as i32,
            endpoint: v["token"].as_str().unwrap().into(),
            p256dh: b64(v["p256dh"].as_str().unwrap()),
            auth: b64(v["auth"].as_str().unwrap()),
            ..Default::default()
        }
    }

    /// The stand-in's counts: OAuth tokens handed out, distinct APNs provider tokens seen.
    pub async fn stats(&self) -> serde_json::Value {
        self.get("/stats").await
    }

    /// Answer `device`'s next `count` notifications with `status` and a body of `mib` MiB.
    pub async fn answer_big(&self, device: &str, status: u16, count: u32, mib: u32) {
        let url = format!("{}/mode/{device}?status={status}&count={count}&big={mib}", self.base);
        self.http.post(url).send().await.unwrap().error_for_status().unwrap();
    }

    async fn spawn(script: &str, args: &[&std::ffi::OsStr]) -> (Provider, String) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let py = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/py/bin/python");
        let script = format!("{}/tests/push/{script}", env!("CARGO_MANIFEST_DIR"));
        let mut child = tokio::process::Command::new(py)
            .arg(script)
            .args(args)
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
        let p = Provider {
            _child: child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        (p, port)
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

    /// Wait until `device` got a mobile (protobuf) notification about `seq`.
    pub async fn until_payload(&self, device: &str, seq: u64) {
        use prost::Message;
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            let got = self.received(device).await;
            let seqs: Vec<u64> = got
                .iter()
                .filter_map(|r| r.payload.as_deref())
                .filter_map(|p| pb::PushPayload::decode(&b64(p)[..]).ok())
                .map(|p| p.seq)
                .collect();
            if seqs.contains(&seq) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "{device} got no push about {seq}: {seqs:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The service is down for `device` for `secs`: 503 to every push meanwhile.
    pub async fn down(&self, device: &str, secs: u32) {
        let url = format!("{}/down/{device}?secs={secs}", self.base);
        self.http.post(url).send().await.unwrap().error_for_status().unwrap();
    }

    /// Wait up to `deadline` until `f` holds for what `device` received; all of it.
    pub async fn until_within(
        &self,
        device: &str,
        deadline: Duration,
        f: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let got = self.received(device).await;
            if f(&got) {
                return got;
            }
            assert!(tokio::time::Instant::now() < until, "{device}: {got:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
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
