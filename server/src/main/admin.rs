//! `natter-server admin …`, `backup`, `restore` and `verify`: the operator's commands.
//! `admin` and `backup` talk to a running node's ops listener (`/admin/v1`, an admin API
//! key in `--key` or `NATTER_ADMIN_KEY`); `restore` and `verify` work on directories, with
//! the node stopped for `restore`. Every command prints JSON lines and exits non-zero with
//! the server's error code and message when refused.
use std::net::SocketAddr;
use std::path::PathBuf;

use serde_json::{json, Value};

/// Where the node's ops listener is, and the key that opens it.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The node's ops listener.
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub ops: SocketAddr,
    /// An API key with the admin scope (`natter-server api-key create --scope admin`).
    #[arg(long, env = "NATTER_ADMIN_KEY", hide_env_values = true)]
    pub key: String,
}

/// What an operator does on a running node.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AdminCmd {
    /// Connections, sessions, and sends and deliveries per second (measured over
    /// `--seconds`).
    Stats {
        #[arg(long, default_value_t = 1)]
        seconds: u64,
    },
    /// Accounts.
    #[command(subcommand)]
    Users(UsersCmd),
    /// A user's devices.
    #[command(subcommand)]
    Devices(DevicesCmd),
    /// Conversations by id.
    #[command(subcommand)]
    Conversations(ConversationsCmd),
    /// API keys of the server API.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Drain this node as SIGTERM does (not ready, clients told to move, connections
    /// closed); the process then waits for SIGTERM to exit.
    Drain,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum UsersCmd {
    /// Users whose username starts with `--prefix` (listed ones; at most `--limit`).
    List {
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One user: devices, conversations, media, whether deactivated.
    Show { username: String },
    /// Log every device out and refuse logins until reactivated; nothing is deleted.
    Deactivate { username: String },
    /// Allow logins again.
    Reactivate { username: String },
    /// Delete the account (PROTOCOL.md §5.16): its messages erased, or with
    /// `--messages anonymise` kept as "deleted-user"'s.
    Delete {
        username: String,
        #[arg(long)]
        messages: Option<String>,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum DevicesCmd {
    /// A user's devices, revoked ones included.
    List { username: String },
    /// Revoke one: its token stops working and its connections close.
    Revoke { username: String, device: u64 },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ConversationsCmd {
    /// Kind, name, owner, size, last seq, retention.
    Show { id: u64 },
    /// Members with roles.
    Members { id: u64 },
    /// Delete it (members see `ConversationDeleted`, sent by the server).
    Delete { id: u64 },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum KeysCmd {
    /// Every key (never their secrets).
    List,
    /// Make a key; its secret is printed once.
    Create {
        #[arg(long)]
        name: String,
        /// read, write or admin.
        #[arg(long, default_value = "write")]
        scope: String,
    },
    /// Revoke a key by its id.
    Revoke { id: String },
}

/// A call to the ops listener: the JSON answer, or the server's refusal as an error.
async fn call(t: &Target, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let url = format!("http://{}{path}", t.ops);
    // Plain HTTP to the ops listener, but reqwest's client wants a TLS provider installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut req = reqwest::Client::new()
        .request(method, &url)
        .bearer_auth(&t.key)
        .timeout(std::time::Duration::from_secs(3600));
    if let Some(b) = body {
        req = req
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&b)?);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{url}: {e} (is the node running, with its ops listener there?)"))?;
    let status = resp.status();
    let text = resp.text().await?;
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
    if !status.is_success() {
        let code = v["error"]["code"].as_str().unwrap_or("HTTP");
        let message = v["error"]["message"].as_str().unwrap_or(&text);
        anyhow::bail!("{code} ({status}): {message}");
    }
    Ok(v)
}

/// Print an answer: one line per element of a list, else the object.
fn print(v: &Value) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| println!("{i}")),
        other => println!("{other}"),
    }
}

/// Run `natter-server admin …`.
pub async fn admin(t: &Target, cmd: AdminCmd) -> anyhow::Result<()> {
    use reqwest::Method as M;
    let v = match cmd {
        AdminCmd::Stats { seconds } => {
            let first = call(t, M::GET, "/admin/v1/stats", None).await?;
            tokio::time::sleep(std::time::Duration::from_secs(seconds.max(1))).await;
            let mut now = call(t, M::GET, "/admin/v1/stats", None).await?;
            let secs =
                (now["time_ms"].as_u64().unwrap_or(0) - first["time_ms"].as_u64().unwrap_or(0)).max(1) as f64 / 1000.0;
            let rate = |k: &str| {
                let moved = now[k]
                    .as_u64()
                    .unwrap_or(0)
                    .saturating_sub(first[k].as_u64().unwrap_or(0));
                (moved as f64 / secs * 10.0).round() / 10.0
            };
            let (events, deliveries) = (rate("events_committed"), rate("deliveries"));
            now["events_per_sec"] = json!(events);
            now["deliveries_per_sec"] = json!(deliveries);
            now
        }
        AdminCmd::Users(UsersCmd::List { prefix, limit }) => {
            let q = format!(
                "/admin/v1/users?prefix={}&limit={limit}",
                url::form_urlencoded::byte_serialize(prefix.as_bytes()).collect::<String>()
            );
            call(t, M::GET, &q, None).await?
        }
        AdminCmd::Users(UsersCmd::Show { username }) => call(t, M::GET, &user_path(&username, ""), None).await?,
        AdminCmd::Users(UsersCmd::Deactivate { username }) => {
            call(t, M::POST, &user_path(&username, "/deactivate"), None).await?
        }
        AdminCmd::Users(UsersCmd::Reactivate { username }) => {
            call(t, M::POST, &user_path(&username, "/reactivate"), None).await?
        }
        AdminCmd::Users(UsersCmd::Delete { username, messages }) => {
            let q = messages.map(|m| format!("?messages={m}")).unwrap_or_default();
            call(t, M::DELETE, &format!("{}{q}", user_path(&username, "")), None).await?
        }
        AdminCmd::Devices(DevicesCmd::List { username }) => {
            call(t, M::GET, &user_path(&username, "/devices"), None).await?
        }
        AdminCmd::Devices(DevicesCmd::Revoke { username, device }) => {
            call(t, M::DELETE, &user_path(&username, &format!("/devices/{device}")), None).await?
        }
        AdminCmd::Conversations(ConversationsCmd::Show { id }) => {
            call(t, M::GET, &format!("/admin/v1/conversations/{id}"), None).await?
        }
        AdminCmd::Conversations(ConversationsCmd::Members { id }) => {
            call(t, M::GET, &format!("/admin/v1/conversations/{id}/members"), None).await?
        }
        AdminCmd::Conversations(ConversationsCmd::Delete { id }) => {
            call(t, M::DELETE, &format!("/admin/v1/conversations/{id}"), None).await?
        }
        AdminCmd::Keys(KeysCmd::List) => call(t, M::GET, "/admin/v1/keys", None).await?,
        AdminCmd::Keys(KeysCmd::Create { name, scope }) => {
            call(
                t,
                M::POST,
                "/admin/v1/keys",
                Some(json!({"name": name, "scope": scope})),
            )
            .await?
        }
        AdminCmd::Keys(KeysCmd::Revoke { id }) => call(t, M::DELETE, &format!("/admin/v1/keys/{id}"), None).await?,
        AdminCmd::Drain => call(t, M::POST, "/admin/v1/drain", None).await?,
    };
    print(&v);
    Ok(())
}

fn user_path(username: &str, rest: &str) -> String {
    let name: String = url::form_urlencoded::byte_serialize(username.as_bytes()).collect();
    format!("/admin/v1/users/{name}{rest}")
}

/// Run `natter-server backup --to DIR` against a running node.
pub async fn backup(t: &Target, to: PathBuf) -> anyhow::Result<()> {
    let to = std::path::absolute(&to)?;
    let v = call(t, reqwest::Method::POST, "/admin/v1/backup", Some(json!({"to": to}))).await?;
    print(&v);
    Ok(())
}
