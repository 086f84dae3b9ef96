//! The key backup in the native SDK (PROTOCOL.md §12.9): setting one up (a new recovery
//! key for the person to keep), backing up every kept message key to it in the
//! background (batches, after the event or send that kept them), and restoring on a
//! device that has no other device to learn from — the recovery key checked against the
//! backup's public key before anything is read.
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use natter_protocol::client::e2ee::backup::{self, BackupError, RecoveryKey};
use natter_protocol::client::ops;
use natter_protocol::limits::MAX_BACKUP_KEYS;
use natter_protocol::pb;
use natter_protocol::ConversationId;

use super::{random, E2ee, E2eeError, READY_WAIT};
use crate::{Client, ClientError};

/// How long the background upload waits to gather keys into one batch.
const GATHER: Duration = Duration::from_millis(300);

impl E2ee {
    /// Learn the user's current backup from the server (after each authentication).
    pub(crate) async fn sync_backup(&self, client: &Client) -> Result<(), E2eeError> {
        let info = match client.call(ops::get_key_backup()).await {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!(error = %e, "key backup unknown on this connection");
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
    pub(crate) async fn kick_backup(self: &Arc<Self>, client: &Client) {
        let waiting = {
            let inner = self.inner.lock().await;
            inner.crypto.as_ref().is_some_and(|c| c.backup_pending() > 0)
        };
        if !waiting || self.backing_up.swap(true, Ordering::AcqRel) {
            return;
        }
        let (me, client) = (self.clone(), client.clone());
        tokio::spawn(async move {
            tokio::time::sleep(GATHER).await;
            if let Err(e) = me.flush_backup(&client).await {
                tracing::warn!(error = %e, "key backup upload failed; retried after the next message");
            }
            me.backing_up.store(false, Ordering::Release);
        });
    }

    /// Upload every waiting key, in batches; a replaced backup is fetched and the keys
    /// sealed again for it.
    pub(crate) async fn flush_backup(&self, client: &Client) -> Result<(), ClientError> {
        let mut refetched = false;
        loop {
            let batch = {
                let inner = self.inner.lock().await;
                inner.crypto.as_ref().and_then(|c| c.backup_batch(MAX_BACKUP_KEYS))
            };
            let Some(batch) = batch else { return Ok(()) };
            match client.call(ops::put_backup_keys(batch.clone())).await {
                Ok(()) => {
                    let mut inner = self.inner.lock().await;
                    if let Some(crypto) = inner.crypto.as_mut() {
                        crypto.backed_up(&batch);
                        self.save(crypto).await.map_err(ClientError::E2ee)?;
                    }
                }
                Err(e) if e.code() == Some(pb::ErrorCode::Conflict) && !refetched => {
                    refetched = true;
                    let info = client.call(ops::get_key_backup()).await?;
                    self.adopt(&info).await.map_err(ClientError::E2ee)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Set up a new backup (replacing the user's previous one) and back up every key
    /// this device kept; the recovery key for the person to keep.
    pub(crate) async fn enable_backup(&self, client: &Client) -> Result<RecoveryKey, ClientError> {
        if !self.wait_ready(READY_WAIT).await {
            return Err(ClientError::E2ee(E2eeError::NoDevice));
        }
        let recovery = RecoveryKey::from_random(random());
        let current = client.call(ops::get_key_backup()).await?;
        let info = client
            .call(ops::create_key_backup(recovery.public_key().to_vec(), current.version))
            .await?;
        self.adopt(&info).await.map_err(ClientError::E2ee)?;
        self.flush_backup(client).await?;
        Ok(recovery)
    }

    /// Restore the message keys of every encrypted conversation of the user from the
    /// backup with `recovery_key` (as the person typed it); how many keys were new. A
    /// malformed or wrong key is refused before anything is read. Events the app got
    /// undecryptable whose keys came are handed on again, opened, before this returns.
    pub(crate) async fn restore_backup(&self, client: &Client, recovery_key: &str) -> Result<u64, ClientError> {
        let recovery = RecoveryKey::parse(recovery_key).map_err(bad_backup)?;
        if !self.wait_ready(READY_WAIT).await {
            return Err(ClientError::E2ee(E2eeError::NoDevice));
        }
        let info = client.call(ops::get_key_backup()).await?;
        backup::check(&recovery, &info).map_err(bad_backup)?;
        let mut restored = 0u64;
        for conv in client.conversations().await?.iter().filter(|c| c.encrypted) {
            let conv = ConversationId(conv.conversation_id);
            let mut after = Vec::new();
            loop {
                let page = client.call(ops::get_backup_keys(info.version, conv, after)).await?;
                let mut inner = self.inner.lock().await;
                let crypto = inner.crypto.as_mut().ok_or(ClientError::E2ee(E2eeError::NoDevice))?;
                restored += crypto.restore(&recovery, &page.keys).map_err(bad_backup)? as u64;
                if page.next.is_empty() {
                    break;
                }
                after = page.next;
            }
        }
        // This device backs up to the same backup from now on.
        let mut inner = self.inner.lock().await;
        let crypto = inner.crypto.as_mut().ok_or(ClientError::E2ee(E2eeError::NoDevice))?;
        crypto.set_backup(&info);
        self.save(crypto).await.map_err(ClientError::E2ee)?;
        drop(inner);
        // What the app got undecryptable and can read now, handed on again opened.
        self.reopen().await;
        Ok(restored)
    }
}

fn bad_backup(e: BackupError) -> ClientError {
    ClientError::E2ee(E2eeError::Backup(e))
}
