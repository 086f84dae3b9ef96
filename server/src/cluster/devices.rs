//! Which devices are attached on which node, for notifications (PROTOCOL.md §13.2): the
//! node that commits a message must not notify a device attached to another node (that
//! node delivers it and watches for its acknowledgement). `n:{u:ID}:attached` (a hash in the
//! user's slot, beside the directory) maps device id → `<node>|<expiry ms>`: written when a
//! session attaches, removed when it detaches (only by the node that wrote it), renewed
//! with the directory, and ignored once expired or when its node is gone.
use std::sync::LazyLock;

use natter_protocol::{DeviceId, UserId};

use super::{Cluster, USER_TTL};
use crate::clock::now_ms;
use crate::store::StoreError;

pub(super) fn devices_key(user: UserId) -> String {
    format!("n:{{u:{}}}:attached", user.0)
}

/// Remove a device's entry only if this node wrote it (the device may have moved on).
static DETACH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"local v = redis.call('HGET', KEYS[1], ARGV[1])
if v and string.sub(v, 1, string.len(ARGV[2]) + 1) == ARGV[2] .. '|' then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0",
    )
});

impl Cluster {
    fn device_entry(&self) -> String {
        format!("{}|{}", self.node, now_ms() + USER_TTL.as_millis() as u64)
    }

    /// `device` of `user` attached a session here.
    pub async fn attach_device(&self, user: UserId, device: DeviceId) -> Result<(), StoreError> {
        let key = devices_key(user);
        let mut p = redis::pipe();
        p.cmd("HSET").arg(&key).arg(device.0).arg(self.device_entry()).ignore();
        p.cmd("PEXPIRE").arg(&key).arg(USER_TTL.as_millis() as u64).ignore();
        self.conn.pipe::<()>(&p).await
    }

    /// `device` of `user` has no attached session here any more.
    pub async fn detach_device(&self, user: UserId, device: DeviceId) -> Result<(), StoreError> {
        let mut inv = DETACH.prepare_invoke();
        inv.key(devices_key(user)).arg(device.0).arg(&self.node);
        self.conn.script::<i64>(&inv).await.map(drop)
    }

    /// Renew the entries of the devices attached here.
    pub(super) async fn refresh_devices(&self, devices: &[(UserId, DeviceId)]) -> Result<(), StoreError> {
        let cmds = devices
            .iter()
            .flat_map(|(u, d)| super::hset_for_ttl(&devices_key(*u), &d.0.to_string(), &self.device_entry()))
            .collect();
        self.conn.each::<redis::Value>(cmds).await?;
        Ok(())
    }

    /// The devices of `user` attached to other live nodes.
    pub async fn devices_elsewhere(&self, user: UserId) -> Result<Vec<DeviceId>, StoreError> {
        let fields: std::collections::HashMap<u64, String> =
            self.conn.query(redis::cmd("HGETALL").arg(devices_key(user))).await?;
        let now = now_ms();
        Ok(fields
            .into_iter()
            .filter_map(|(device, v)| {
                let (node, expiry) = v.rsplit_once('|')?;
                let live = expiry.parse::<u64>().ok()? >= now && node != self.node && self.alive(node, now);
                live.then_some(DeviceId(device))
            })
            .collect())
    }
}

#[async_trait::async_trait]
impl crate::push::Elsewhere for Cluster {
    async fn devices_elsewhere(&self, user: UserId) -> Vec<DeviceId> {
        match Cluster::devices_elsewhere(self, user).await {
            Ok(d) => d,
            Err(e) => {
                // Unknown: notify as if attached nowhere (a notification too many, never
                // one too few).
                tracing::warn!(%user, error = %e, "cluster: device lookup failed");
                Vec::new()
            }
        }
    }
}
