//! `natter profile set|get` (PROTOCOL.md §5.15): change your display name, status and
//! avatar (an https URL or an image file, uploaded), and read users' profiles — one JSON
//! line per profile, the JS package's shape. `natter listen` prints `profileChanged`.
//! `natter account export|delete` (PROTOCOL.md §5.16): a link to a zip of your data, or
//! delete your account.
use anyhow::{bail, Context};
use clap::Subcommand;
use natter_protocol::client::model::Profile;
use natter_sdk::{Client, UserId};

use super::print_record;

#[derive(Debug, Subcommand)]
pub enum ProfileCmd {
    /// Change your profile: only the options given change ("" clears one).
    Set {
        /// Display name (at most 64 characters).
        #[arg(long)]
        name: Option<String>,
        /// Status text (at most 140 characters).
        #[arg(long)]
        status: Option<String>,
        /// Avatar: an https URL ("" clears it).
        #[arg(long, conflicts_with = "avatar_file")]
        avatar_url: Option<String>,
        /// Avatar: a PNG, JPEG, GIF or WebP file, uploaded.
        #[arg(long)]
        avatar_file: Option<std::path::PathBuf>,
    },
    /// Users' profiles by id.
    Get {
        #[arg(required = true, num_args = 1..)]
        users: Vec<u64>,
    },
}

fn image_mime(path: &std::path::Path) -> anyhow::Result<&'static str> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    Ok(match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        _ => bail!("an avatar file is .png, .jpg, .gif or .webp"),
    })
}

#[derive(Debug, Subcommand)]
pub enum AccountCmd {
    /// A link to a zip of your data (profile, conversations, every event you sent, your
    /// files): a path on the server's web endpoint, valid for 15 minutes (fetch it with
    /// curl or a browser).
    Export,
    /// Delete your account: your messages, files and devices go; every device is logged
    /// out. A password account confirms with its password (--password, NATTER_PASSWORD or
    /// standard input).
    Delete {
        #[arg(long)]
        password: Option<String>,
        /// The account logged in with a product token: no password to confirm.
        #[arg(long)]
        product_login: bool,
    },
}

pub async fn account(cmd: AccountCmd, client: &Client) -> anyhow::Result<()> {
    match cmd {
        AccountCmd::Export => {
            let ready = client.export_account().await?;
            super::print(serde_json::json!({"path": ready.path, "expiresMs": ready.expires_ms}));
        }
        AccountCmd::Delete {
            password,
            product_login,
        } => {
            let password = if product_login {
                String::new()
            } else {
                super::password(password)?
            };
            client.delete_account(&password).await?;
            super::print(serde_json::json!({"deleted": true}));
        }
    }
    Ok(())
}

pub async fn run(cmd: ProfileCmd, client: &Client) -> anyhow::Result<()> {
    match cmd {
        ProfileCmd::Set {
            name,
            status,
            avatar_url,
            avatar_file,
        } => {
            let mut avatar = avatar_url;
            if let Some(path) = avatar_file {
                let mime = image_mime(&path)?;
                let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("avatar");
                let p = client.set_avatar(file_name, mime, bytes.into()).await?;
                avatar = None;
                if name.is_none() && status.is_none() {
                    print_record(&Profile::from(p));
                    return Ok(());
                }
            }
            let p = client
                .set_profile(name.as_deref(), avatar.as_deref(), status.as_deref())
                .await?;
            print_record(&Profile::from(p));
        }
        ProfileCmd::Get { users } => {
            let users: Vec<UserId> = users.into_iter().map(UserId).collect();
            for p in client.profiles(&users).await? {
                print_record(&Profile::from(p));
            }
        }
    }
    Ok(())
}
