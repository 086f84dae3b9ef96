//! The server API from tests: API keys made by `natter-server api-key create`, product
//! tokens signed with the test issuer's secret, and JSON calls over real HTTP.
use std::path::Path;

use natter_server::security::jwt::IssuerConfig;
use natter_server::security::Secret;

use serde_json::{json, Value};

/// The HS256 secret of the test product's token issuer.
pub const SECRET: &str = "server-api-test-secret-0123456789abcdef";

/// `natter-server api-key create` on the data dir (the server is not running yet).
pub fn make_key(data: &Path, name: &str, scope: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_natter-server"))
        .args(["--data-dir"])
        .arg(data)
        .args(["api-key", "create", "--name", name, "--scope", scope])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["scope"], scope);
    v["secret"].as_str().unwrap().to_string()
}

pub fn product_token(sub: &str) -> String {
    let claims = json!({"iss": "https://product.test", "aud": "natter", "sub": sub,
        "exp": natter_server::clock::now_ms() / 1000 + 600});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&[u8]>,
        extra: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_vec());
        }
        for (h, v) in extra {
            req = req.header(*h, *v);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let bytes = r.bytes().await.unwrap();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {}", String::from_utf8_lossy(&bytes)))
        };
        (status, v)
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, Some(key), Some(&serde_json::to_vec(&body).unwrap()), &[])
            .await
    }

    pub async fn get(&self, path: &str, key: &str) -> (u16, Value) {
        self.call("GET", path, Some(key), None, &[]).await
    }
}

/// The test product's token issuer (HS256 with [`SECRET`]), as a server trusts it.
pub fn product_issuer() -> IssuerConfig {
    IssuerConfig {
        issuer: "https://product.test".into(),
        audience: vec!["natter".into()],
        hs256_secret: Some(Secret(SECRET.into())),
        ..Default::default()
    }
}

/// A server on `data` that trusts the test product's tokens, and its API client.
pub async fn api_server(data: &Path) -> (natter_server::RunningServer, Api) {
    let mut cfg = super::config(data);
    cfg.token_issuers = vec![product_issuer()];
    let s = natter_server::start(&cfg).await.unwrap();
    let api = Api {
        base: format!("http://{}", s.web_addr.unwrap()),
        http: reqwest::Client::new(),
    };
    (s, api)
}

/// A client of `s` logged in as the product's user `sub` (a product token).
pub async fn product_login(s: &natter_server::RunningServer, sub: &str) -> (natter_sdk::Client, natter_sdk::Events) {
    let (c, ev) = natter_sdk::Client::connect(super::client_config(s.addr, &s.fingerprint, None)).unwrap();
    c.login_with_token(&product_token(sub), "phone").await.unwrap();
    (c, ev)
}
