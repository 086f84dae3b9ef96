//! `natter push`: this device's push registrations (PROTOCOL.md §13), push keys in a file,
//! and decrypting a notification body with them — what an app's notification extension
//! does, here for scripts and tests.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use base64::Engine;
use clap::Subcommand;
use natter_protocol::client::model::PushRegistrations;
use natter_sdk::{proto as pb, Client, PushKeys};
use serde_json::json;

use super::{print, print_record};

#[derive(Debug, Subcommand)]
pub enum PushCmd {
    /// Make push keys (a P-256 key pair and an auth secret) in FILE; prints the public
    /// parts. Needs no server.
    Keys { file: PathBuf },
    /// Register this device's push target, replacing its earlier one.
    Register {
        /// webpush, unifiedpush, apns or fcm.
        #[arg(long)]
        provider: String,
        /// The push service URL, or the APNs/FCM token.
        #[arg(long)]
        endpoint: String,
        /// Push keys made with `natter push keys` (else --p256dh and --auth).
        #[arg(long)]
        keys: Option<PathBuf>,
        /// The subscription's P-256 key, base64url (a browser's `p256dh`).
        #[arg(long)]
        p256dh: Option<String>,
        /// The subscription's auth secret, base64url.
        #[arg(long)]
        auth: Option<String>,
        /// APNs: the app's bundle id.
        #[arg(long, default_value = "")]
        apns_topic: String,
        /// APNs: a sandbox token.
        #[arg(long)]
        apns_sandbox: bool,
    },
    /// This device's registrations and the server's VAPID key.
    List,
    /// Remove one of this device's registrations.
    Remove { registration_id: String },
    /// Decrypt a notification body (a file, or - for stdin) with the keys in --keys.
    /// Needs no server.
    Decrypt {
        #[arg(long)]
        keys: PathBuf,
        body: PathBuf,
        /// Also open an encrypted conversation's message with this profile's encryption
        /// state (read-only), as a notification extension does.
        #[arg(long)]
        open: bool,
    },
}

impl PushCmd {
    /// Whether the command runs without a server.
    pub fn offline(&self) -> bool {
        matches!(self, PushCmd::Keys { .. } | PushCmd::Decrypt { .. })
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn unb64(what: &str, s: &str) -> anyhow::Result<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .with_context(|| format!("{what} is not base64url"))
}

fn read_keys(file: &Path) -> anyhow::Result<PushKeys> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    Ok(PushKeys::from_bytes(&bytes)?)
}

fn provider(name: &str) -> anyhow::Result<pb::PushProvider> {
    Ok(match name {
        "webpush" => pb::PushProvider::WebPush,
        "unifiedpush" => pb::PushProvider::UnifiedPush,
        "apns" => pb::PushProvider::Apns,
        "fcm" => pb::PushProvider::Fcm,
        other => bail!("unknown provider {other:?}: webpush, unifiedpush, apns or fcm"),
    })
}

/// Run the commands that need no server.
pub fn offline(cmd: PushCmd, profile: &Path) -> anyhow::Result<()> {
    match cmd {
        PushCmd::Keys { file } => {
            let keys = PushKeys::generate();
            write_private(&file, &keys.to_bytes())?;
            print(json!({ "p256dh": b64(&keys.public_key()), "auth": b64(&keys.auth()) }));
        }
        PushCmd::Decrypt { keys, body, open } => {
            let body = if body.as_os_str() == "-" {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
                b
            } else {
                std::fs::read(&body).with_context(|| format!("reading {}", body.display()))?
            };
            let keys = read_keys(&keys)?;
            if open {
                let state = profile.join("e2ee.state");
                let state = std::fs::read(&state).with_context(|| format!("reading {}", state.display()))?;
                let key = super::store_key(profile)?;
                print_record(&keys.open(&body, &state, &key.0)?);
            } else {
                print_record(&keys.decrypt(&body)?);
            }
        }
        _ => bail!("this push command needs the server"),
    }
    Ok(())
}

/// Run the commands that talk to the server.
pub async fn online(cmd: PushCmd, client: &Client) -> anyhow::Result<()> {
    let regs = match cmd {
        PushCmd::Register {
            provider: p,
            endpoint,
            keys,
            p256dh,
            auth,
            apns_topic,
            apns_sandbox,
        } => {
            let mut target = match (keys, p256dh, auth) {
                (Some(file), None, None) => read_keys(&file)?.target(provider(&p)?, &endpoint),
                (None, Some(k), Some(a)) => pb::PushTarget {
                    provider: provider(&p)? as i32,
                    endpoint,
                    p256dh: unb64("--p256dh", &k)?,
                    auth: unb64("--auth", &a)?,
                    ..Default::default()
                },
                _ => bail!("give either --keys FILE or both --p256dh and --auth"),
            };
            target.apns_topic = apns_topic;
            target.apns_sandbox = apns_sandbox;
            client.register_push(target).await?
        }
        PushCmd::List => client.list_push().await?,
        PushCmd::Remove { registration_id } => client.remove_push(&registration_id).await?,
        PushCmd::Keys { .. } | PushCmd::Decrypt { .. } => bail!("this push command runs without the server"),
    };
    let regs = PushRegistrations::from(regs);
    print(json!({
        "registrations": serde_json::to_value(&regs.registrations)?,
        "vapidPublicKey": b64(&regs.vapid_public_key),
    }));
    Ok(())
}

/// Write a secret file readable by its owner only.
fn write_private(file: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(file)
            .with_context(|| format!("writing {}", file.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(())
    }
    #[cfg(not(unix))]
    {
        std::fs::write(file, bytes).with_context(|| format!("writing {}", file.display()))
    }
}

/// `natter notify-settings`: show the user's notification rules, or change them.
#[derive(Debug, clap::Args)]
pub struct NotifyArgs {
    /// all, mentions or none (with --conversation: that conversation's; "default" there
    /// means the user's level).
    #[arg(long)]
    level: Option<String>,
    /// Mute for this many minutes (0: unmute); with --conversation only that one.
    #[arg(long)]
    mute_minutes: Option<u64>,
    /// Do-not-disturb hours, e.g. 22:00-07:00 ("off" to turn them off).
    #[arg(long)]
    dnd: Option<String>,
    /// The IANA time zone of the do-not-disturb hours, e.g. Europe/Berlin.
    #[arg(long)]
    time_zone: Option<String>,
    /// Change this conversation's own rule instead of the user's.
    #[arg(long)]
    conversation: Option<u64>,
}

fn notify_level(s: &str) -> anyhow::Result<pb::NotifyLevel> {
    Ok(match s {
        "all" => pb::NotifyLevel::All,
        "mentions" => pb::NotifyLevel::Mentions,
        "none" => pb::NotifyLevel::None,
        "default" => pb::NotifyLevel::Unspecified,
        other => bail!("unknown level {other:?}: all, mentions, none or default"),
    })
}

fn minute_of_day(s: &str) -> anyhow::Result<u32> {
    let (h, m) = s.split_once(':').context("times are HH:MM")?;
    let (h, m): (u32, u32) = (h.parse()?, m.parse()?);
    if h > 23 || m > 59 {
        bail!("{s} is not a time of day");
    }
    Ok(h * 60 + m)
}

/// Show or change the notification rules.
pub async fn notify_settings(a: NotifyArgs, client: &Client) -> anyhow::Result<()> {
    let mut s = client.notify_settings().await?;
    let changing = a.level.is_some() || a.mute_minutes.is_some() || a.dnd.is_some() || a.time_zone.is_some();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let until = |m: u64| if m == 0 { 0 } else { now + m * 60_000 };
    if let Some(id) = a.conversation {
        let i = match s.conversations.iter().position(|c| c.conversation_id == id) {
            Some(i) => i,
            None => {
                s.conversations.push(pb::ConversationNotify {
                    conversation_id: id,
                    ..Default::default()
                });
                s.conversations.len() - 1
            }
        };
        let c = &mut s.conversations[i];
        if let Some(l) = &a.level {
            c.level = notify_level(l)? as i32;
        }
        if let Some(m) = a.mute_minutes {
            c.mute_until_ms = until(m);
        }
    } else {
        if let Some(l) = &a.level {
            s.level = notify_level(l)? as i32;
        }
        if let Some(m) = a.mute_minutes {
            s.mute_until_ms = until(m);
        }
    }
    if let Some(d) = &a.dnd {
        (s.dnd_start_minute, s.dnd_end_minute) = if d == "off" {
            (0, 0)
        } else {
            let (from, to) = d.split_once('-').context("--dnd is HH:MM-HH:MM")?;
            (minute_of_day(from)?, minute_of_day(to)?)
        };
    }
    if let Some(tz) = a.time_zone {
        s.time_zone = tz;
    }
    if changing {
        s = client.set_notify_settings(s).await?;
    }
    print_record(&natter_protocol::client::model::NotifySettings::from(s));
    Ok(())
}
