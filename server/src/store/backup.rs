//! Backups of the embedded store (docs/OPERATIONS.md, "Backup and restore"): an online,
//! consistent copy of the database, its content keys and the local media directory;
//! checking one; restoring one into a stopped node's data directory.
//!
//! A backup directory holds `db/` (a sled database with the store's one tree, and
//! `db/content-keys/`), `media/` (when media is on local disk) and `manifest.json`: the
//! format, the version that wrote it, when, what it holds (conversations, events,
//! records) and every file with its size and SHA-256. The copy is taken with writes paused
//! ([`SledStore::snapshot_into`]): every write acknowledged before the pause is in it,
//! nothing after it. Checking a backup verifies each file against the manifest, then opens
//! a scratch copy of it and reads every conversation's log from its retention floor to its
//! last seq: gap-free, every event readable.
use std::path::{Path, PathBuf};

use natter_protocol::{ConversationId, Seq};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::sled_store::{copy_dir, SledStore};
use super::{Page, Store, StoreError};

/// The manifest's name in a backup directory.
pub const MANIFEST: &str = "manifest.json";
/// The backup format this version writes and reads.
pub const FORMAT: u32 = 1;

/// What a backup holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// natter-server's version that wrote it.
    pub natter_version: String,
    /// When the copy was taken (writes paused), ms since the epoch.
    pub created_ms: u64,
    /// Records in the database.
    pub records: u64,
    /// Conversations, and events in their logs.
    pub conversations: u64,
    /// Events in every log.
    pub events: u64,
    /// Every file of the backup but the manifest, by path under the backup directory.
    pub files: Vec<FileSum>,
}

/// One file of a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    /// Its path under the backup directory, `/`-separated.
    pub path: String,
    /// Its size.
    pub bytes: u64,
    /// Its SHA-256, hex.
    pub sha256: String,
}

/// Why a backup, a check or a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The target directory already holds something.
    #[error("{0} is not empty: a backup goes into a new directory, a restore into a data directory without a database (or with --force)")]
    NotEmpty(PathBuf),
    /// This is not a backup natter can read.
    #[error("not a natter backup: {0}")]
    NotABackup(String),
    /// A file differs from what the manifest says (corrupted, truncated, edited or missing).
    #[error("{path}: {why}")]
    Damaged {
        /// Which file.
        path: String,
        /// How.
        why: String,
    },
    /// The database in the backup does not read back whole.
    #[error("conversation {conversation}: {why}")]
    Log {
        /// Which conversation.
        conversation: u64,
        /// What is wrong.
        why: String,
    },
    /// Reading or writing files failed.
    #[error("{0}")]
    Io(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |e| BackupError::Io(format!("{}: {e}", path.display()))
}

/// Whether `dir` is missing or empty.
fn empty(dir: &Path) -> Result<bool, BackupError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(io(dir)(e)),
    }
}

/// Take a backup of `store` (and of `media`, the local media directory, if any) into
/// `to`, a new or empty directory, while the server runs.
pub async fn take(store: &SledStore, media: Option<&Path>, to: &Path, now_ms: u64) -> Result<Manifest, BackupError> {
    if !empty(to)? {
        return Err(BackupError::NotEmpty(to.to_path_buf()));
    }
    std::fs::create_dir_all(to).map_err(io(to))?;
    let media_copy = media
        .filter(|m| m.exists())
        .map(|m| (m.to_path_buf(), to.join("media")));
    let records = store
        .snapshot_into(&to.join("db"), move || match media_copy {
            Some((from, into)) => copy_dir(&from, &into),
            None => Ok(()),
        })
        .await?;
    let to = to.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let files = sums(&to)?;
        let (conversations, events) = read_logs(&to)?;
        let manifest = Manifest {
            format: FORMAT,
            natter_version: env!("CARGO_PKG_VERSION").into(),
            created_ms: now_ms,
            records,
            conversations,
            events,
            files,
        };
        let text = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
        let path = to.join(MANIFEST);
        std::fs::write(&path, text).map_err(io(&path))?;
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(io(&path))?;
        Ok(manifest)
    })
    .await
    .map_err(|e| BackupError::Io(format!("backup task: {e}")))?
}

/// Check the backup in `dir`: every file as the manifest lists it, nothing missing, and
/// a scratch copy of its database reads back whole with the counts the manifest gives.
pub fn verify(dir: &Path) -> Result<Manifest, BackupError> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read(&path).map_err(|e| BackupError::NotABackup(format!("{}: {e}", path.display())))?;
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| BackupError::NotABackup(format!("{MANIFEST}: {e}")))?;
    if manifest.format != FORMAT {
        return Err(BackupError::NotABackup(format!(
            "format {} (this version reads {FORMAT})",
            manifest.format
        )));
    }
    let found = sums(dir)?;
    for want in &manifest.files {
        match found.iter().find(|f| f.path == want.path) {
            None => {
                return Err(BackupError::Damaged {
                    path: want.path.clone(),
                    why: "missing".into(),
                })
            }
            Some(f) if f != want => {
                return Err(BackupError::Damaged {
                    path: want.path.clone(),
                    why: format!(
                        "{} bytes with SHA-256 {}, the manifest says {} bytes with {}",
                        f.bytes, f.sha256, want.bytes, want.sha256
                    ),
                })
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = found.iter().find(|f| !manifest.files.iter().any(|w| w.path == f.path)) {
        return Err(BackupError::Damaged {
            path: extra.path.clone(),
            why: "not in the manifest".into(),
        });
    }
    let (conversations, events) = read_logs(dir)?;
    if (conversations, events) != (manifest.conversations, manifest.events) {
        return Err(BackupError::Log {
            conversation: 0,
            why: format!(
                "{conversations} conversations with {events} events, the manifest says {} with {}",
                manifest.conversations, manifest.events
            ),
        });
    }
    Ok(manifest)
}

/// Restore the backup in `from` into `data_dir` (the node stopped) after checking it:
/// the database to `data_dir/db`, its media to `media_dir`. A data directory that holds
/// a database is refused unless `force`; then the old one is moved aside, not deleted.
pub fn restore(
    from: &Path,
    data_dir: &Path,
    media_dir: &Path,
    force: bool,
    now_ms: u64,
) -> Result<Manifest, BackupError> {
    let manifest = verify(from)?;
    let db = data_dir.join("db");
    if !empty(&db)? {
        if !force {
            return Err(BackupError::NotEmpty(db));
        }
        let aside = data_dir.join(format!("db.before-restore-{now_ms}"));
        std::fs::rename(&db, &aside).map_err(io(&db))?;
        if media_dir.exists() {
            let aside = media_dir.with_file_name(format!("media.before-restore-{now_ms}"));
            std::fs::rename(media_dir, &aside).map_err(io(media_dir))?;
        }
    }
    copy_dir(&from.join("db"), &db)?;
    if from.join("media").exists() {
        copy_dir(&from.join("media"), media_dir)?;
    }
    Ok(manifest)
}

/// Every file under `dir` but the manifest, with its size and hash, in path order.
fn sums(dir: &Path) -> Result<Vec<FileSum>, BackupError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(io(&d))? {
            let entry = entry.map_err(io(&d))?;
            let path = entry.path();
            if entry.file_type().map_err(io(&path))?.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(dir).expect("under dir");
            let rel = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            if rel == MANIFEST {
                continue;
            }
            let mut hasher = Sha256::new();
            let mut file = std::fs::File::open(&path).map_err(io(&path))?;
            let bytes = std::io::copy(&mut file, &mut hasher).map_err(io(&path))?;
            out.push(FileSum {
                path: rel,
                bytes,
                sha256: hex::encode(hasher.finalize()),
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Read every conversation's log in the backup at `dir` from its floor to its last seq:
/// (conversations, events). Any hole or unreadable event is an error. Opening a database
/// may write to it, so this opens a scratch copy beside the backup, never the backup.
fn read_logs(dir: &Path) -> Result<(u64, u64), BackupError> {
    let beside = dir.parent().unwrap_or(dir);
    let scratch = tempfile::Builder::new()
        .prefix(".natter-verify-")
        .tempdir_in(beside)
        .map_err(|e| BackupError::Io(format!("a scratch directory in {}: {e}", beside.display())))?;
    copy_dir(&dir.join("db"), &scratch.path().join("db"))?;
    let dir = scratch.path();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BackupError::Io(format!("a runtime to read the copy: {e}")))?;
    rt.block_on(async {
        let store = SledStore::open(&dir.join("db"))?;
        let (mut conversations, mut events) = (0u64, 0u64);
        let mut after = ConversationId(0);
        loop {
            let page = store.conversations_after(after, 500).await?;
            let Some(&(last_id, _)) = page.last() else { break };
            for (conv, last) in page {
                conversations += 1;
                let mut at = store.removed_through(conv).await?;
                while at < last {
                    let (evs, _) = store
                        .events(conv, Page::After(at), 500)
                        .await
                        .map_err(|e| BackupError::Log {
                            conversation: conv.0,
                            why: format!("events after {}: {e}", at.0),
                        })?;
                    for e in &evs {
                        if e.seq != at.0 + 1 {
                            return Err(BackupError::Log {
                                conversation: conv.0,
                                why: format!("seq {} follows {}: a hole in the log", e.seq, at.0),
                            });
                        }
                        at = Seq(e.seq);
                    }
                    if evs.is_empty() {
                        return Err(BackupError::Log {
                            conversation: conv.0,
                            why: format!("the log ends at {} but its last seq is {}", at.0, last.0),
                        });
                    }
                    events += evs.len() as u64;
                }
            }
            after = last_id;
        }
        Ok((conversations, events))
    })
}
