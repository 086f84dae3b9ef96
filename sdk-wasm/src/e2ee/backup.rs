//! The key backup in the browser (PROTOCOL.md §12.9), as natter-sdk's `e2ee/backup.rs`
//! does it natively: setting one up (a new recovery key for the person to keep), backing
//! up every kept message key in the background (batches, after the event that kept them),
//! and restoring on a device with no other device to learn from — the recovery key
//! checked against the backup's public key before anything is read.
use std::rc::Rc;

use natter_protocol::client::e2ee::backup::{self, BackupError, RecoveryKey};
use natter_protocol::client::ops;
use natter_protocol::limits::MAX_BACKUP_KEYS;
use natter_protocol::pb;
use natter_protocol::ConversationId;

use super::{error, random, E2ee};
use crate::client::Inner;
use crate::view::JsError;

/// How long the background upload waits to gather keys into one batch (ms).
const GATHER_MS: u32 = 300;

/// A backup error as a rejected promise's `code`: MALFORMED_RECOVERY_KEY,
/// WRONG_RECOVERY_KEY, NO_KEY_BACKUP, or ENCRYPTION.
fn bad_backup(e: BackupError) -> JsError {
    let code = match e {
        BackupError::Malformed(_) => "MALFORMED_RECOVERY_KEY",
        BackupError::WrongKey => "WRONG_RECOVERY_KEY",
        BackupError::NoBackup => "NO_KEY_BACKUP",
        BackupError::Corrupt => "ENCRYPTION",
    };
    JsError::local(code, e.to_string())
}

impl E2ee {
    /// Learn the user's current backup from the server (after each authentication).
    pub(crate) async fn sync_backup(&self, inner: &Inner) -> Result<(), JsError> {
        match inner.call(ops::get_key_backup()).await {
            Ok(info) => self.adopt(&info).await,
            // Unknown on this connection: learned again on the next.
            Err(_) => Ok(()),
        }
    }

    /// Back up to `info` from now on (a new version queues every kept key).
    async fn adopt(&self, info: &pb::KeyBackup) -> Result<(), JsError> {
        let mut state = self.state.lock().await;
        let Some(crypto) = state.crypto.as_mut() else {
            return Ok(());
        };
        if crypto.backup_version() != info.version {
            crypto.set_backup(info);
            self.save(crypto).await?;
        }
        Ok(())
    }

    /// Start a background upload if keys wait for the backup and none is running.
    pub(crate) async fn kick_backup(self: &Rc<Self>, inner: &Rc<Inner>) {
        let waiting = {
            let state = self.state.lock().await;
            state.crypto.as_ref().is_some_and(|c| c.backup_pending() > 0)
        };
        if !waiting || self.backing_up.replace(true) {
            return;
        }
        let (me, inner) = (self.clone(), inner.clone());
        wasm_bindgen_futures::spawn_local(async move {
            gloo_timers::future::TimeoutFuture::new(GATHER_MS).await;
            if let Err(e) = me.flush_backup(&inner).await {
                crate::client::console_error(&format!("natter: key backup upload failed: {}", e.message));
            }
            me.backing_up.set(false);
        });
    }

    /// Upload every waiting key, in batches; a replaced backup is fetched and the keys
    /// sealed again for it.
    pub(crate) async fn flush_backup(&self, inner: &Inner) -> Result<(), JsError> {
        let mut refetched = false;
        loop {
            let batch = {
                let state = self.state.lock().await;
                state.crypto.as_ref().and_then(|c| c.backup_batch(MAX_BACKUP_KEYS))
            };
            let Some(batch) = batch else { return Ok(()) };
            match inner.call(ops::put_backup_keys(batch.clone())).await {
                Ok(()) => {
                    let mut state = self.state.lock().await;
                    if let Some(crypto) = state.crypto.as_mut() {
                        crypto.backed_up(&batch);
                        self.save(crypto).await?;
                    }
                }
                Err(e) if e.code == "CONFLICT" && !refetched => {
                    refetched = true;
                    let info = inner.call(ops::get_key_backup()).await?;
                    self.adopt(&info).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Set up a new backup (replacing the user's previous one) and back up every key
    /// this device kept; the recovery key, as the person should write it down.
    pub(crate) async fn enable_backup(&self, inner: &Inner) -> Result<String, JsError> {
        self.wait_ready().await?;
        let recovery = RecoveryKey::from_random(random());
        let current = inner.call(ops::get_key_backup()).await?;
        let info = inner
            .call(ops::create_key_backup(recovery.public_key().to_vec(), current.version))
            .await?;
        self.adopt(&info).await?;
        self.flush_backup(inner).await?;
        Ok(recovery.to_display())
    }

    /// Restore the message keys of every encrypted conversation of the user from the
    /// backup with `recovery_key`; how many keys were new. A malformed or wrong key is
    /// refused before anything is read. What the app got undecryptable and can read now
    /// comes again, opened, before this resolves.
    pub(crate) async fn restore_backup(&self, inner: &Inner, recovery_key: &str) -> Result<u64, JsError> {
        let recovery = RecoveryKey::parse(recovery_key).map_err(bad_backup)?;
        self.wait_ready().await?;
        let info = inner.call(ops::get_key_backup()).await?;
        backup::check(&recovery, &info).map_err(bad_backup)?;
        let mut restored = 0u64;
        let convs = inner.call(ops::conversations()).await?;
        for conv in convs.iter().filter(|c| c.encrypted) {
            let conv = ConversationId(conv.conversation_id);
            let mut after = Vec::new();
            loop {
                let page = inner.call(ops::get_backup_keys(info.version, conv, after)).await?;
                let mut state = self.state.lock().await;
                let crypto = state.crypto.as_mut().ok_or_else(|| error("no device yet"))?;
                restored += crypto.restore(&recovery, &page.keys).map_err(bad_backup)? as u64;
                if page.next.is_empty() {
                    break;
                }
                after = page.next;
            }
        }
        // This device backs up to the same backup from now on.
        {
            let mut state = self.state.lock().await;
            let crypto = state.crypto.as_mut().ok_or_else(|| error("no device yet"))?;
            crypto.set_backup(&info);
            self.save(crypto).await?;
        }
        self.reopen(inner).await;
        Ok(restored)
    }
}
