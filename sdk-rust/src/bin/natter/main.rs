//! `natter`: a command-line chat client on natter-sdk. A profile dir remembers the server,
//! its certificate fingerprint, the access token and unfinished uploads (so an upload cut
//! by a killed process goes on with `natter resume`), so after `login` every command is
//! short. Output is one JSON object per line, for people and scripts alike.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use natter_protocol::client::model::{self, Conversation, Device, Member, NatterEvent};
use natter_sdk::{
    Client, ClientConfig, ClientEvent, ConversationId, DeviceId, Encryption, HistoryAnchor, Seq, StoreKey, UserId,
};
use serde::{Deserialize, Serialize};

mod profile;
mod push;
mod search;
use serde_json::{json, Value};

#[derive(Debug, Parser)]
#[command(version, about = "natter chat from the terminal")]
struct Cli {
    /// Profile directory (server, fingerprint, token).
    #[arg(long, env = "NATTER_PROFILE", default_value = ".natter")]
    profile: PathBuf,
    /// Server address, e.g. 127.0.0.1:4433 (saved in the profile).
    #[arg(long, env = "NATTER_SERVER")]
    server: Option<SocketAddr>,
    /// SHA-256 fingerprint the server printed (saved in the profile).
    #[arg(long, env = "NATTER_FINGERPRINT")]
    fingerprint: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create an account. Password from --password, NATTER_PASSWORD or stdin.
    Register {
        username: String,
        #[arg(long, env = "NATTER_PASSWORD")]
        password: Option<String>,
    },
    /// Log in as a new device and save its token in the profile.
    Login {
        username: String,
        #[arg(long, env = "NATTER_PASSWORD")]
        password: Option<String>,
        #[arg(long, default_value = "natter-cli")]
        device: String,
    },
    /// Log in as a new device with a product token (a JWT the product's backend minted,
    /// PROTOCOL.md §5.13). Token from --token, NATTER_PRODUCT_TOKEN or stdin.
    LoginToken {
        #[arg(long, env = "NATTER_PRODUCT_TOKEN")]
        token: Option<String>,
        #[arg(long, default_value = "natter-cli")]
        device: String,
        /// A shell command that prints a fresh token (e.g. the product's own CLI), saved in
        /// the profile: later commands run it when the device's token expires.
        #[arg(long)]
        token_command: Option<String>,
    },
    /// Renew this device's product token now. Token from --token, NATTER_PRODUCT_TOKEN
    /// or stdin.
    SetToken {
        #[arg(long, env = "NATTER_PRODUCT_TOKEN")]
        token: Option<String>,
    },
    /// Revoke this device's token (or another device's).
    Logout {
        #[arg(long)]
        device: Option<u64>,
    },
    /// List this user's devices.
    Devices,
    /// List conversations with unread counts.
    Conversations,
    /// Open (or create) the direct conversation with a user.
    Dm {
        username: String,
        /// The pair's end-to-end encrypted conversation (PROTOCOL.md §12): messages are
        /// sealed for every device of both users, and the server cannot read them.
        #[arg(long)]
        encrypted: bool,
    },
    /// Verify another device by comparing emoji (PROTOCOL.md §12.10): starts with
    /// USER_ID DEVICE_ID, or with --incoming waits for another device to ask. Prints the
    /// code, reads "yes" or "no" from stdin, and ends verified (exit 0) or not (exit 1).
    Verify {
        #[arg(required_unless_present = "incoming")]
        user_id: Option<u64>,
        #[arg(required_unless_present = "incoming")]
        device_id: Option<u64>,
        #[arg(long, conflicts_with_all = ["user_id", "device_id"])]
        incoming: bool,
    },
    /// A user's devices with keys and whether this device verified each.
    Trust { user_id: u64 },
    /// The key backup of encrypted conversations: enable, restore.
    #[command(subcommand)]
    Backup(BackupCmd),
    /// Notifications for this device when offline: keys, register, list, remove, decrypt.
    #[command(subcommand)]
    Push(push::PushCmd),
    /// Show or change which messages notify: level, mutes, do-not-disturb hours.
    NotifySettings(push::NotifyArgs),
    /// Search messages in your conversations (one JSON line per hit, then the page's
    /// cursor, total and index lag).
    Search(search::SearchArgs),
    /// Find users by username prefix.
    FindUsers {
        prefix: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Find public channels by name prefix ("" lists them).
    FindChannels {
        #[arg(default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Your profile (display name, status, avatar) and others'.
    #[command(subcommand)]
    Profile(profile::ProfileCmd),
    /// Your account: export your data, or delete it.
    #[command(subcommand)]
    Account(profile::AccountCmd),
    /// Leave yourself out of others' find-users (--off lists you again).
    Unlisted {
        #[arg(long)]
        off: bool,
    },
    /// Groups: create, add, remove, leave, rename.
    #[command(subcommand)]
    Group(GroupCmd),
    /// Create a public channel.
    Channel { name: String },
    /// Join a public channel.
    Join { name: String },
    /// Members of a conversation.
    Members { conversation: u64 },
    /// Send a message: text, files (--file, uploaded first), or both.
    Send {
        conversation: u64,
        #[arg(num_args = 0..)]
        text: Vec<String>,
        /// A file to attach (repeat for several).
        #[arg(long = "file")]
        files: Vec<PathBuf>,
    },
    /// Upload a file for a conversation (resumes by itself across lost connections) and
    /// print the finished file; attach it with `send --file` or by its media id.
    Upload {
        conversation: u64,
        file: PathBuf,
        /// Content type (default: guessed from the name; the server checks the bytes).
        #[arg(long)]
        mime: Option<String>,
    },
    /// List unfinished uploads (kept in the profile, e.g. after the process was killed).
    Uploads,
    /// Go on with an unfinished upload from what the server stored (the same file, read
    /// again from its path) and print the finished file.
    Resume {
        /// Ids are base64url, so one may start with '-': taken as a value, never a flag.
        #[arg(allow_hyphen_values = true)]
        upload_id: String,
    },
    /// Stop an unfinished upload for good: the server deletes what it stored.
    Cancel {
        #[arg(allow_hyphen_values = true)]
        upload_id: String,
    },
    /// Download a file (or a thumbnail) you may read.
    Download {
        #[arg(allow_hyphen_values = true)]
        media_id: String,
        /// Where to write it (default: stdout).
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// A thumbnail instead of the file: 320 or 800.
        #[arg(long)]
        thumb: Option<u32>,
        /// First byte.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Bytes (0: to the end).
        #[arg(long, default_value_t = 0)]
        length: u64,
    },
    /// Show history (latest page by default).
    History {
        conversation: u64,
        #[arg(long)]
        before: Option<u64>,
        #[arg(long)]
        after: Option<u64>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Edit your message.
    Edit {
        conversation: u64,
        seq: u64,
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
    },
    /// Delete a message.
    Delete { conversation: u64, seq: u64 },
    /// React to a message with an emoji (--remove takes it back).
    React {
        conversation: u64,
        seq: u64,
        emoji: String,
        #[arg(long)]
        remove: bool,
    },
    /// Show the status of your message: sent, delivered, read (with counts in groups).
    Status { conversation: u64, seq: u64 },
    /// Show "typing…" to the other members.
    Typing { conversation: u64 },
    /// Mark a conversation read up to a seq.
    Read { conversation: u64, seq: u64 },
    /// Print every event as it arrives, one JSON object per line.
    Listen,
}

#[derive(Debug, Subcommand)]
enum BackupCmd {
    /// Set up a key backup (replacing any earlier one), back up this device's message
    /// keys, and print the recovery key — keep it: nothing else opens the backup.
    Enable,
    /// Restore message keys from the backup, so this device opens history that was
    /// never sealed for it. Recovery key from --recovery-key, NATTER_RECOVERY_KEY or stdin.
    Restore {
        #[arg(long, env = "NATTER_RECOVERY_KEY")]
        recovery_key: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum GroupCmd {
    /// Create a group with initial members.
    Create { name: String, members: Vec<String> },
    /// Add members.
    Add {
        conversation: u64,
        #[arg(required = true, num_args = 1..)]
        usernames: Vec<String>,
    },
    /// Remove a member by user id.
    Remove { conversation: u64, user_id: u64 },
    /// Leave a group.
    Leave { conversation: u64 },
    /// Rename a group.
    Rename { conversation: u64, name: String },
    /// Mute a member (owners and admins): for --minutes, or until unmuted.
    Mute {
        conversation: u64,
        user_id: u64,
        #[arg(long)]
        minutes: Option<u64>,
    },
    /// Let a muted member speak again.
    Unmute { conversation: u64, user_id: u64 },
    /// Ban a user: removed, and never joins or is added again until unbanned.
    Ban { conversation: u64, user_id: u64 },
    /// Lift a ban.
    Unban { conversation: u64, user_id: u64 },
    /// A channel's slow mode: one message per member per SECONDS (0: off).
    SlowMode { conversation: u64, seconds: u32 },
    /// How long a conversation keeps its events (PROTOCOL.md §5.17; its owner, or either
    /// member of a direct conversation): --days N, --seconds N, --forever, or --default
    /// (the server's default for its kind).
    Retention {
        conversation: u64,
        #[arg(long, conflicts_with_all = ["seconds", "forever", "default"])]
        days: Option<u64>,
        #[arg(long, conflicts_with_all = ["forever", "default"])]
        seconds: Option<u64>,
        #[arg(long, conflicts_with = "default")]
        forever: bool,
        #[arg(long)]
        default: bool,
    },
    /// Report a message to the product's moderators.
    Report {
        conversation: u64,
        seq: u64,
        reason: String,
    },
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Profile {
    server: Option<SocketAddr>,
    fingerprint: Option<String>,
    token: Option<String>,
    username: Option<String>,
    /// For a product login: the command that prints a fresh token.
    #[serde(default)]
    token_command: Option<String>,
    /// Uploads not finished yet: what `natter resume` goes on with.
    #[serde(default)]
    pending_uploads: Vec<model::PendingUpload>,
}

/// The key the profile's encryption state is sealed with: `e2ee.key` beside it (0600),
/// made on first use. A terminal has no keystore; whoever can read the profile can read
/// its token too.
fn store_key(dir: &Path) -> anyhow::Result<StoreKey> {
    let path = dir.join("e2ee.key");
    if let Ok(b) = std::fs::read(&path) {
        let key: [u8; 32] = b
            .try_into()
            .map_err(|_| anyhow::anyhow!("{} is not 32 bytes", path.display()))?;
        return Ok(StoreKey(key));
    }
    std::fs::create_dir_all(dir)?;
    let key: [u8; 32] = rand::random();
    std::fs::write(&path, key)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(StoreKey(key))
}

impl Profile {
    fn load(dir: &Path) -> anyhow::Result<Profile> {
        match std::fs::read(dir.join("profile.json")) {
            Ok(b) => Ok(serde_json::from_slice(&b).context("reading profile.json")?),
            Err(_) => Ok(Profile::default()),
        }
    }

    fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("profile.json");
        std::fs::write(&path, serde_json::to_vec_pretty(self)?)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(())
    }
}

/// Run one verification to its end: start it (or wait for a request and accept it),
/// print the code, ask stdin whether it matches, print the outcome.
async fn verify(client: &Client, events: &mut natter_sdk::Events, with: Option<(u64, u64)>) -> anyhow::Result<()> {
    use natter_sdk::VerificationState as S;
    let mut txn = match with {
        Some((user, device)) => Some(client.verify_device(UserId(user), DeviceId(device)).await?),
        None => {
            // Authenticated first: a request sent before this session exists never reaches it.
            client.conversations().await?;
            print(json!({"verification": "waiting"}));
            None
        }
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let ev = tokio::time::timeout_at(deadline, events.next())
            .await
            .context("no verification step within 5 minutes")?;
        let Some(ev) = ev else { bail!("disconnected") };
        let ClientEvent::Verification(v) = ev else { continue };
        if txn.as_ref().is_some_and(|t| *t != v.txn) {
            continue;
        }
        match v.state {
            S::Requested if txn.is_none() => {
                print(json!({"verification": "requested", "userId": v.user_id.0, "deviceId": v.device_id.0}));
                client.accept_verification(&v.txn).await?;
                txn = Some(v.txn);
            }
            S::Requested => {}
            S::Compare { emoji, decimals } => {
                let emoji: Vec<String> = emoji.into_iter().map(|(e, n)| format!("{e} {n}")).collect();
                print(
                    json!({"verification": "compare", "emoji": emoji, "decimals": [decimals.0, decimals.1, decimals.2]}),
                );
                let answer = tokio::task::spawn_blocking(|| {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line).map(|_| line)
                })
                .await??;
                let matches = matches!(answer.trim().to_lowercase().as_str(), "y" | "yes");
                client.confirm_verification(&v.txn, matches).await?;
            }
            S::Verified => {
                print(json!({"verification": "verified", "userId": v.user_id.0, "deviceId": v.device_id.0}));
                return Ok(());
            }
            S::Cancelled(reason) => bail!("not verified: {reason}"),
        }
    }
}

/// Wait for this login's `Connected` (the device's encryption keys are published before
/// it reaches us, so others can write to it as soon as we return): our username.
async fn wait_connected(events: &mut natter_sdk::Events) -> anyhow::Result<String> {
    let connected = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(ev) = events.next().await {
            if let ClientEvent::Connected { username, .. } = ev {
                return Some(username);
            }
        }
        None
    });
    match connected.await {
        Ok(Some(name)) => Ok(name),
        _ => bail!("logged in, but the connection did not settle"),
    }
}

/// The profile's token command as the client's token provider: its first output line.
fn token_command(cmd: String) -> natter_sdk::TokenProvider {
    natter_sdk::TokenProvider::new(move || {
        let cmd = cmd.clone();
        async move {
            let run = move || std::process::Command::new("sh").arg("-c").arg(&cmd).output();
            let out = tokio::task::spawn_blocking(run).await.ok()?.ok()?;
            let line = String::from_utf8(out.stdout).ok()?.lines().next()?.trim().to_string();
            (out.status.success() && !line.is_empty()).then_some(line)
        }
    })
}

fn password(p: Option<String>) -> anyhow::Result<String> {
    if let Some(p) = p {
        return Ok(p);
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// A content type from a file name, for the declaration (the server checks the bytes).
fn guess_mime(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "mp4" | "m4v" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "ogg" => "audio/ogg",
        "pdf" => "application/pdf",
        "txt" | "md" => "text/plain",
        _ => "application/octet-stream",
    }
}

/// Upload a file, printing progress to stderr. Once the server has stored its first piece
/// the upload is written to the profile, so a killed process leaves it to `natter resume`.
async fn upload(
    client: &Client,
    conversation: u64,
    path: &Path,
    mime: Option<String>,
    saved: &Saved,
) -> anyhow::Result<natter_sdk::proto::MediaInfo> {
    let path = std::fs::canonicalize(path).with_context(|| format!("reading {}", path.display()))?;
    let path = path.to_str().context("the file's path must be UTF-8")?;
    let mime = mime.unwrap_or_else(|| guess_mime(Path::new(path)).to_string());
    let info = client
        .upload_file(ConversationId(conversation), path, &mime, |done, size| {
            saved.upload_started(client);
            eprintln!("natter: uploaded {done} of {size} bytes");
        })
        .await?;
    Ok(info)
}

/// Writes the profile with the client's unfinished uploads, once per upload run.
struct Saved {
    dir: PathBuf,
    profile: Profile,
    done: std::sync::atomic::AtomicBool,
}

impl Saved {
    fn upload_started(&self, client: &Client) {
        if !self.done.swap(true, std::sync::atomic::Ordering::Relaxed) {
            let mut p = self.profile.clone();
            p.pending_uploads = client.pending_uploads();
            if let Err(e) = p.save(&self.dir) {
                eprintln!("natter: cannot save the upload in the profile: {e}");
            }
        }
    }
}

fn print(v: Value) {
    println!("{v}");
}

/// Print an app-facing record or event as JSON: the same shape the JS package hands out
/// (natter-protocol's app-facing model), so scripts and pages read one format.
fn print_record<T: Serialize>(v: &T) {
    match serde_json::to_value(v) {
        Ok(v) => print(v),
        Err(e) => eprintln!("natter: cannot print: {e}"),
    }
}

/// A wire answer as its app-facing record.
fn print_as<A, B: From<A> + Serialize>(v: A) {
    print_record(&B::from(v));
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("natter: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Cmd::Push(p) = cli.cmd {
        if p.offline() {
            return push::offline(p, &cli.profile);
        }
        return with_client(Cli {
            cmd: Cmd::Push(p),
            ..cli
        })
        .await;
    }
    with_client(cli).await
}

async fn with_client(cli: Cli) -> anyhow::Result<()> {
    let mut profile = Profile::load(&cli.profile)?;
    if cli.server.is_some() {
        profile.server = cli.server;
    }
    if cli.fingerprint.is_some() {
        profile.fingerprint = cli.fingerprint.clone();
    }
    let server = profile
        .server
        .context("no server: pass --server ADDR (saved after the first use)")?;
    let fingerprint = profile
        .fingerprint
        .clone()
        .context("no fingerprint: pass --fingerprint HEX as the server printed it")?;
    let mut config = ClientConfig::pinned(server, &fingerprint);
    config.access_token = profile.token.clone();
    config.pending_uploads = profile.pending_uploads.clone();
    // Every CLI device takes part in end-to-end encryption: its keys live in the profile.
    config.encryption = Some(Encryption {
        state_path: cli.profile.join("e2ee.state"),
        store_key: store_key(&cli.profile)?,
    });
    if let Some(cmd) = profile.token_command.clone() {
        config.token_provider = Some(token_command(cmd));
    }
    let needs_login = !matches!(
        cli.cmd,
        Cmd::Register { .. } | Cmd::Login { .. } | Cmd::LoginToken { .. }
    );
    if needs_login && profile.token.is_none() {
        bail!("not logged in: run `natter login USERNAME` first");
    }
    let (client, mut events) = Client::connect(config)?;
    let logout = matches!(cli.cmd, Cmd::Logout { .. });
    let result = command(cli.cmd, &client, &mut events, &mut profile, &cli.profile).await;
    // Message keys this command kept go to the key backup before the process ends (the
    // SDK would upload them shortly; a CLI process is gone by then).
    if result.is_ok() && !logout {
        if let Err(e) = client.backup_now().await {
            eprintln!("natter: key backup: {e}");
        }
    }
    // Unfinished uploads stay in the profile, also when the command failed.
    profile.pending_uploads = client.pending_uploads();
    profile.save(&cli.profile)?;
    client.shutdown().await;
    result
}

async fn command(
    cmd: Cmd,
    client: &Client,
    events: &mut natter_sdk::Events,
    profile: &mut Profile,
    dir: &Path,
) -> anyhow::Result<()> {
    let conv = |id: u64| ConversationId(id);
    let saved = Saved {
        dir: dir.to_path_buf(),
        profile: profile.clone(),
        done: Default::default(),
    };
    match cmd {
        Cmd::Register { username, password: pw } => {
            let id = client.register(&username, &password(pw)?).await?;
            print(json!({"registered": username, "user_id": id.0}));
        }
        Cmd::Login {
            username,
            password: pw,
            device,
        } => {
            let info = client.login(&username, &password(pw)?, &device).await?;
            wait_connected(events).await?;
            profile.token = Some(info.access_token);
            profile.username = Some(username.clone());
            print(json!({"logged_in": username, "user_id": info.user_id.0, "device_id": info.device_id.0}));
        }
        Cmd::LoginToken {
            token,
            device,
            token_command,
        } => {
            let token = password(token)?;
            let info = client.login_with_token(&token, &device).await?;
            let username = wait_connected(events).await?;
            profile.token = Some(info.access_token);
            profile.username = Some(username.clone());
            profile.token_command = token_command;
            print(json!({"logged_in": username, "user_id": info.user_id.0, "device_id": info.device_id.0}));
        }
        Cmd::SetToken { token } => {
            let until = client.refresh_token(&password(token)?).await?;
            print(json!({"token_expires_at_ms": until}));
        }
        Cmd::Logout { device } => {
            client.logout(DeviceId(device.unwrap_or(0))).await?;
            if device.is_none() {
                profile.token = None;
            }
            print(json!({"logged_out": true}));
        }
        Cmd::Devices => {
            for d in client.devices().await? {
                print_as::<_, Device>(d);
            }
        }
        Cmd::Conversations => {
            for s in client.conversations().await? {
                print_as::<_, Conversation>(s);
            }
        }
        Cmd::Dm { username, encrypted } => {
            let c = if encrypted {
                client.encrypted_direct(&username).await?
            } else {
                client.direct(&username).await?
            };
            print_as::<_, Conversation>(c);
        }
        Cmd::Verify {
            user_id,
            device_id,
            incoming,
        } => verify(client, events, user_id.zip(device_id).filter(|_| !incoming)).await?,
        Cmd::Trust { user_id } => {
            for d in client.device_trust(UserId(user_id)).await? {
                let fingerprint: String = d.ed25519.iter().map(|b| format!("{b:02x}")).collect();
                let trust = format!("{:?}", d.trust).to_lowercase();
                print(json!({"deviceId": d.device_id.0, "fingerprint": fingerprint, "trust": trust}));
            }
        }
        Cmd::Push(p) => push::online(p, client).await?,
        Cmd::NotifySettings(a) => push::notify_settings(a, client).await?,
        Cmd::Search(a) => search::search(a, client).await?,
        Cmd::FindUsers { prefix, limit } => search::users(&prefix, limit, client).await?,
        Cmd::FindChannels { prefix, limit } => search::channels(&prefix, limit, client).await?,
        Cmd::Profile(c) => profile::run(c, client).await?,
        Cmd::Account(c) => profile::account(c, client).await?,
        Cmd::Unlisted { off } => {
            client.set_unlisted(!off).await?;
            print(json!({"unlisted": !off}));
        }
        Cmd::Backup(BackupCmd::Enable) => {
            let recovery_key = client.enable_backup().await?;
            print(json!({ "recoveryKey": recovery_key }));
        }
        Cmd::Backup(BackupCmd::Restore { recovery_key }) => {
            let restored = client.restore_backup(&password(recovery_key)?).await?;
            print(json!({ "restored": restored }));
        }
        Cmd::Group(GroupCmd::Create { name, members }) => {
            let names: Vec<&str> = members.iter().map(String::as_str).collect();
            print_as::<_, Conversation>(client.create_group(&name, &names).await?);
        }
        Cmd::Group(GroupCmd::Add {
            conversation,
            usernames,
        }) => {
            let names: Vec<&str> = usernames.iter().map(String::as_str).collect();
            client.add_members(conv(conversation), &names).await?;
            print(json!({"added": usernames}));
        }
        Cmd::Group(GroupCmd::Remove { conversation, user_id }) => {
            client.remove_member(conv(conversation), UserId(user_id)).await?;
            print(json!({"removed": user_id}));
        }
        Cmd::Group(GroupCmd::Leave { conversation }) => {
            client.leave(conv(conversation)).await?;
            print(json!({"left": conversation}));
        }
        Cmd::Group(GroupCmd::Rename { conversation, name }) => {
            client.rename(conv(conversation), &name).await?;
            print(json!({"renamed": conversation, "name": name}));
        }
        Cmd::Group(GroupCmd::Mute {
            conversation,
            user_id,
            minutes,
        }) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let until = minutes.map_or(0, |m| now + m * 60_000);
            let mute = natter_sdk::proto::ModerationAction::Mute;
            client
                .moderate(conv(conversation), UserId(user_id), mute, until)
                .await?;
            print(json!({"muted": user_id, "until_ms": until}));
        }
        Cmd::Group(cmd @ (GroupCmd::Unmute { .. } | GroupCmd::Ban { .. } | GroupCmd::Unban { .. })) => {
            use natter_sdk::proto::ModerationAction as A;
            let (conversation, user_id, action, word) = match cmd {
                GroupCmd::Unmute { conversation, user_id } => (conversation, user_id, A::Unmute, "unmuted"),
                GroupCmd::Ban { conversation, user_id } => (conversation, user_id, A::Ban, "banned"),
                GroupCmd::Unban { conversation, user_id } => (conversation, user_id, A::Unban, "unbanned"),
                _ => unreachable!("matched above"),
            };
            client.moderate(conv(conversation), UserId(user_id), action, 0).await?;
            print(json!({ word: user_id }));
        }
        Cmd::Group(GroupCmd::SlowMode { conversation, seconds }) => {
            client.set_slow_mode(conv(conversation), seconds).await?;
            print(json!({"slow_mode_secs": seconds}));
        }
        Cmd::Group(GroupCmd::Retention {
            conversation,
            days,
            seconds,
            forever,
            default,
        }) => {
            let secs = match (days, seconds, forever, default) {
                (Some(d), ..) => Some(d.saturating_mul(86_400)),
                (_, Some(s), ..) => Some(s),
                (_, _, true, _) => Some(0),
                (_, _, _, true) => None,
                _ => anyhow::bail!("say how long: --days N, --seconds N, --forever or --default"),
            };
            client.set_retention(conv(conversation), secs).await?;
            print(json!({ "retentionSecs": secs }));
        }
        Cmd::Group(GroupCmd::Report {
            conversation,
            seq,
            reason,
        }) => {
            client.report(conv(conversation), Seq(seq), &reason).await?;
            print(json!({"reported": seq}));
        }
        Cmd::Channel { name } => print_as::<_, Conversation>(client.create_channel(&name).await?),
        Cmd::Join { name } => print_as::<_, Conversation>(client.join_channel(&name).await?),
        Cmd::Members { conversation } => {
            for m in client.members(conv(conversation)).await? {
                print_as::<_, Member>(m);
            }
        }
        Cmd::Send {
            conversation,
            text,
            files,
        } => {
            let text = text.join(" ");
            let ack = if files.is_empty() {
                if text.is_empty() {
                    bail!("nothing to send: give text, --file, or both");
                }
                client.send(conv(conversation), &text).await?
            } else {
                let mut done = Vec::new();
                for f in &files {
                    done.push(upload(client, conversation, f, None, &saved).await?);
                }
                client.send_attachments(conv(conversation), &text, &done).await?
            };
            print_as::<_, model::SendAck>(ack);
        }
        Cmd::Upload {
            conversation,
            file,
            mime,
        } => {
            let info = upload(client, conversation, &file, mime, &saved).await?;
            print_as::<_, model::MediaInfo>(info);
        }
        Cmd::Uploads => {
            for p in client.pending_uploads() {
                print_record(&p);
            }
        }
        Cmd::Resume { upload_id } => {
            let info = client
                .resume_upload_file(&upload_id, |done, size| {
                    eprintln!("natter: uploaded {done} of {size} bytes");
                })
                .await?;
            print_as::<_, model::MediaInfo>(info);
        }
        Cmd::Cancel { upload_id } => {
            client.cancel_upload(&upload_id).await?;
            print(json!({"cancelled": upload_id}));
        }
        Cmd::Download {
            media_id,
            out,
            thumb,
            offset,
            length,
        } => {
            let variant = match thumb {
                None => natter_sdk::proto::MediaVariant::Original,
                Some(320) => natter_sdk::proto::MediaVariant::Thumb320,
                Some(800) => natter_sdk::proto::MediaVariant::Thumb800,
                Some(other) => bail!("thumbnails are 320 or 800, not {other}"),
            };
            let bytes = if offset == 0 && length == 0 {
                client.download_all(&media_id, variant).await?
            } else {
                client.download(&media_id, variant, offset, length).await?
            };
            match out {
                Some(path) => {
                    std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
                    print(json!({"mediaId": media_id, "bytes": bytes.len(), "path": path}));
                }
                None => {
                    use std::io::Write;
                    std::io::stdout().write_all(&bytes)?;
                }
            }
        }
        Cmd::History {
            conversation,
            before,
            after,
            limit,
        } => {
            let anchor = match (before, after) {
                (_, Some(a)) => HistoryAnchor::After(Seq(a)),
                (b, None) => HistoryAnchor::Before(Seq(b.unwrap_or(0))),
            };
            let page = client.history(conv(conversation), anchor, limit).await?;
            let page = model::HistoryPage::from(page);
            for e in &page.events {
                print_record(e);
            }
            // In an encrypted conversation: from which seq this device can read (§12.6).
            let readable = client.readable_from(conv(conversation)).await.ok().flatten();
            let mut end = json!({"hasMore": page.has_more, "lastSeq": page.last_seq});
            // Retention removed the events up to here (PROTOCOL.md §5.17).
            if page.removed_through > 0 {
                end["removedThrough"] = json!(page.removed_through);
            }
            if let Some(from) = readable {
                end["readableFrom"] = json!(from.0);
            }
            print(end);
        }
        Cmd::Edit {
            conversation,
            seq,
            text,
        } => {
            let ack = client.edit(conv(conversation), Seq(seq), &text.join(" ")).await?;
            print(json!({"edited": seq, "seq": ack.0}));
        }
        Cmd::Delete { conversation, seq } => {
            let ack = client.delete_message(conv(conversation), Seq(seq)).await?;
            print(json!({"deleted": seq, "seq": ack.0}));
        }
        Cmd::React {
            conversation,
            seq,
            emoji,
            remove,
        } => {
            let ack = client.react(conv(conversation), Seq(seq), &emoji, remove).await?;
            print(json!({"reacted": seq, "emoji": emoji, "removed": remove, "seq": ack.0}));
        }
        Cmd::Status { conversation, seq } => {
            // Authenticated first: the receipts arrive with the conversation list.
            client.conversations().await?;
            match client.message_status(conv(conversation), Seq(seq)).await? {
                Some(st) => print_record(&st),
                None => print(json!({"state": "unknown"})),
            }
        }
        Cmd::Typing { conversation } => {
            // Authenticated first (typing is dropped before), then the notice.
            client.conversations().await?;
            client.typing(conv(conversation));
            // A ping orders after the typing notice: it has left when the pong is back.
            client.ping().await?;
            print(json!({"typing": conversation}));
        }
        Cmd::Read { conversation, seq } => {
            client.mark_read(conv(conversation), Seq(seq)).await?;
            print(json!({"read": conversation, "seq": seq}));
        }
        Cmd::Listen => loop {
            let Some(ev) = events.next().await else { break };
            if let ClientEvent::AuthFailed(e) = &ev {
                bail!("authentication failed: {e}");
            }
            if let Some(app) = NatterEvent::from_session(ev) {
                print_record(&app);
            }
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Cmd};

    #[test]
    fn ids_that_start_with_a_hyphen_are_values() {
        // Upload and media ids are base64url: one in 64 starts with '-'.
        let cli = Cli::try_parse_from(["natter", "resume", "-Qx3"]).unwrap();
        assert!(matches!(cli.cmd, Cmd::Resume { upload_id } if upload_id == "-Qx3"));
        let cli = Cli::try_parse_from(["natter", "cancel", "-a"]).unwrap();
        assert!(matches!(cli.cmd, Cmd::Cancel { upload_id } if upload_id == "-a"));
        let cli = Cli::try_parse_from(["natter", "download", "-m1", "--out", "f"]).unwrap();
        assert!(matches!(cli.cmd, Cmd::Download { media_id, .. } if media_id == "-m1"));
    }
}
