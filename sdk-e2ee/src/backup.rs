//! The key backup (PROTOCOL.md §12.9): setting one up (a new recovery
//! key for the person to keep), backing up every kept message key to it in the
//! background (batches, after the event or send that kept them), and restoring on a
//! device that has no other device to learn from — the recovery key checked against the
//! backup's public key before anything is read.
use std::sync::atomic::Ordering;
use std::sync::Arc;

use natter_protocol::client::e2ee::backup::{self, RecoveryKey};
use natter_protocol::client::ops;
use natter_protocol::limits::MAX_BACKUP_KEYS;
use natter_protocol::pb;
use natter_protocol::ConversationId;

use super::{random, E2eeError, Engine, Io};

/// How long the background upload waits to gather keys into one batch (ms).
const GATHER_MS: u32 = 300;

impl<I: Io> Engine<I> {
    /// Learn the user's current backup from the server (after each authentication).
    pub(crate) async fn sync_backup(&self) -> Result<(), E2eeError> {
        let info = match self.io.call(ops::get_key_backup()).await {
            Ok(info) => info,
            Err(e) => {
                self.io.warn(&format!("key backup unknown on this connection: {e}"));
                return Ok(());
            }
        };
        self.adopt(&info).await
    }

    /// Back up to `info` from now on (a new version queues every kept key).
    async fn adopt(&self, info: &pb::KeyBackup) -> Result<(), E2eeError> {
        let mut inner = self.inner.lock().await;
        let Some(crypto) = inner.crypto.as_mut() else {
            return Ok(());
        };
        if crypto.backup_version() != info.version {
            crypto.set_backup(info);
            self.save(crypto).await?;
        }
        Ok(())
    }

    /// Start a background upload if keys wait for the backup and none is running.
    pub(crate) async fn kick_backup(self: &Arc<Self>) {
        let waiting = {
            let inner = self.inner.lock().await;
            inner.crypto.as_ref().is_some_and(|c| c.backup_pending() > 0)
        };
        if !waiting || self.backing_up.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        self.io.spawn(async move {
            me.io.sleep(GATHER_MS).await;
            if let Err(e) = me.flush_backup().await {
                me.io.warn(&format!(
                    "key backup upload failed, retried after the next message: {e}"
                ));
            }
            me.backing_up.store(false, Ordering::Release);
        });
    }

    /// Upload every waiting key, in batches; a replaced backup is fetched and the keys
    /// sealed again for it.
    pub async fn flush_backup(&self) -> Result<(), E2eeError> {
        let mut refetched = false;
        loop {
            let batch = {
                let inner = self.inner.lock().await;
                inner.crypto.as_ref().and_then(|c| c.backup_batch(MAX_BACKUP_KEYS))
            };
            let Some(batch) = batch else { return Ok(()) };
            match self.io.call(ops::put_backup_keys(batch.clone())).await {
                Ok(()) => {
                    let mut inner = self.inner.lock().await;
                    if let Some(crypto) = inner.crypto.as_mut() {
                        crypto.backed_up(&batch);
                        self.save(crypto).await?;
                    }
                }
                Err(natter_protocol::session::RequestError::Server(s))
                    if s.code == pb::ErrorCode::Conflict && !refetched =>
                {
                    refetched = true;
                    let info = self.io.call(ops::get_key_backup()).await?;
                    self.adopt(&info).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Set up a new backup (replacing the user's previous one) and back up every key
    /// this device kept; the recovery key for the person to keep.
    pub async fn enable_backup(&self) -> Result<RecoveryKey, E2eeError> {
        self.wait_ready().await?;
        let recovery = RecoveryKey::from_random(random());
        let current = self.io.call(ops::get_key_backup()).await?;
        let info = self
            .io
            .call(ops::create_key_backup(recovery.public_key().to_vec(), current.version))
            .await?;
        self.adopt(&info).await?;
        self.flush_backup().await?;
        Ok(recovery)
    }

    /// Restore the message keys of every encrypted conversation of the user from the
    /// backup with `recovery_key` (as the person typed it); how many keys were new. A
    /// malformed or wrong key is refused before anything is read. Events the app got
    /// undecryptable whose keys came are handed on again, opened, before this returns.
    pub async fn restore_backup(&self, recovery_key: &str) -> Result<u64, E2eeError> {
        let recovery = RecoveryKey::parse(recovery_key)?;
        self.wait_ready().await?;
        let info = self.io.call(ops::get_key_backup()).await?;
        backup::check(&recovery, &info)?;
        let mut restored = 0u64;
        for conv in self.io.call(ops::conversations()).await?.iter().filter(|c| c.encrypted) {
            let conv = ConversationId(conv.conversation_id);
            let mut after = Vec::new();
            loop {
                let page = self.io.call(ops::get_backup_keys(info.version, conv, after)).await?;
                let mut inner = self.inner.lock().await;
                let crypto = inner.crypto.as_mut().ok_or(E2eeError::NoDevice)?;
                restored += crypto.restore(&recovery, &page.keys)? as u64;
                if page.next.is_empty() {
                    break;
                }
                after = page.next;
            }
        }
        // This device backs up to the same backup from now on.
        let mut inner = self.inner.lock().await;
        let crypto = inner.crypto.as_mut().ok_or(E2eeError::NoDevice)?;
        crypto.set_backup(&info);
        self.save(crypto).await?;
        drop(inner);
        // What the app got undecryptable and can read now, handed on again opened.
        self.reopen().await;
        Ok(restored)
    }
}
