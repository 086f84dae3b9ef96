//! The QUIC stateless-reset keys (RFC 9000 §10.3). A server that lost a connection's state
//! (a restart, a crash) answers that connection's next packet with a stateless reset, and
//! the client believes it only if the token was derived from the same key it was given
//! with the connection; and the server sends one only for a connection id it recognises as
//! one of its own (quinn's hashed connection ids carry a keyed check). So both keys are
//! derived from a secret kept in the data dir and from the node's id: stable across
//! restarts of one node, different between nodes. Clients of a restarted server then learn
//! at their next packet that their connection is gone and reconnect at once, instead of
//! waiting out the idle timeout.
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use rand::RngCore;
use ring::hmac;

/// The file in the data dir that holds the node secret (32 random bytes, owner-only).
pub const SECRET_FILE: &str = "node.secret";

/// The node secret: read from `data_dir`, created there on first use. Nodes that share a
/// data dir and start together agree on one secret: each writes a whole candidate file and
/// links it into place, and whoever loses the race reads the winner's complete file.
pub fn node_secret(data_dir: &Path) -> anyhow::Result<[u8; 32]> {
    let path = data_dir.join(SECRET_FILE);
    let read = |path: &Path| -> anyhow::Result<[u8; 32]> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("{} is not 32 bytes; delete it to make a new one", path.display()))
    };
    match std::fs::metadata(&path) {
        Ok(_) => return read(&path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    let candidate = data_dir.join(format!(
        "{SECRET_FILE}.{}.{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&candidate).and_then(|mut f| {
        f.write_all(&secret)?;
        f.sync_all()
    });
    let linked = written.and_then(|()| std::fs::hard_link(&candidate, &path));
    let _ = std::fs::remove_file(&candidate);
    match linked {
        Ok(()) => Ok(secret),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(&path),
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

/// A node's QUIC endpoint keys.
#[derive(Debug)]
pub struct EndpointKeys {
    /// Signs stateless-reset tokens.
    pub reset: hmac::Key,
    /// Keys the check inside the connection ids this node hands out.
    pub connection_ids: u64,
}

/// The keys of node `node` (its configured id; "" for a single node).
pub fn endpoint_keys(data_dir: &Path, node: &str) -> anyhow::Result<EndpointKeys> {
    let secret = node_secret(data_dir)?;
    let derive = hmac::Key::new(hmac::HMAC_SHA256, &secret);
    let reset = hmac::sign(&derive, format!("natter stateless reset v1|{node}").as_bytes());
    let cids = hmac::sign(&derive, format!("natter connection ids v1|{node}").as_bytes());
    let cid_key = u64::from_le_bytes(cids.as_ref()[..8].try_into().expect("a SHA-256 tag has 32 bytes"));
    Ok(EndpointKeys {
        reset: hmac::Key::new(hmac::HMAC_SHA256, reset.as_ref()),
        connection_ids: cid_key,
    })
}

/// The QUIC endpoint configuration of node `node`, with both keys stable across restarts.
pub fn endpoint_config(data_dir: &Path, node: &str) -> anyhow::Result<quinn::EndpointConfig> {
    let keys = endpoint_keys(data_dir, node)?;
    let mut config = quinn::EndpointConfig::new(std::sync::Arc::new(keys.reset));
    let cid_key = keys.connection_ids;
    config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(keys: &EndpointKeys) -> (Vec<u8>, u64) {
        (
            hmac::sign(&keys.reset, b"connection id").as_ref().to_vec(),
            keys.connection_ids,
        )
    }

    #[test]
    fn the_key_is_stable_across_restarts_and_differs_between_nodes_and_data_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let first = token(&endpoint_keys(dir.path(), "").unwrap());
        assert_eq!(
            first,
            token(&endpoint_keys(dir.path(), "").unwrap()),
            "same node, same key"
        );
        assert_ne!(first, token(&endpoint_keys(dir.path(), "n2").unwrap()), "another node");
        let other = tempfile::tempdir().unwrap();
        assert_ne!(
            first,
            token(&endpoint_keys(other.path(), "").unwrap()),
            "another data dir"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SECRET_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "the secret is the owner's alone");
        }
        let shared = tempfile::tempdir().unwrap();
        let racers: Vec<_> = (0..8)
            .map(|_| {
                let dir = shared.path().to_path_buf();
                std::thread::spawn(move || node_secret(&dir).unwrap())
            })
            .collect();
        let secrets: Vec<[u8; 32]> = racers.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(
            secrets.windows(2).all(|w| w[0] == w[1]),
            "nodes starting together agree on one secret"
        );
        let files = std::fs::read_dir(shared.path()).unwrap().count();
        assert_eq!(files, 1, "no candidate file is left behind");
        std::fs::write(dir.path().join(SECRET_FILE), b"short").unwrap();
        assert!(
            endpoint_keys(dir.path(), "").is_err(),
            "a damaged secret is an error, not a new key"
        );
    }
}
