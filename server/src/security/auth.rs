//! Credentials: argon2id password hashes and random bearer tokens stored only as SHA-256.
//! Owns no storage; callers persist what these functions return.
use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// argon2id cost. The default (19 MiB, 2 passes) is OWASP's recommendation; lower it only
/// where logins are not exposed (load generators, tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasswordCost {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
}

impl Default for PasswordCost {
    fn default() -> Self {
        PasswordCost {
            memory_kib: argon2::Params::DEFAULT_M_COST,
            iterations: argon2::Params::DEFAULT_T_COST,
        }
    }
}

impl PasswordCost {
    fn hasher(self) -> Argon2<'static> {
        let params = argon2::Params::new(self.memory_kib.max(8), self.iterations.max(1), 1, None).unwrap_or_default();
        Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
    }
}

/// Hash a password with argon2id at the default cost. Slow by design: call from a
/// blocking thread.
pub fn hash_password(password: &str) -> String {
    hash_password_with(password, PasswordCost::default())
}

/// Hash a password with argon2id at `cost` (the hash records its parameters).
pub fn hash_password_with(password: &str, cost: PasswordCost) -> String {
    let salt = SaltString::generate(&mut OsRng);
    cost.hasher()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with valid params")
        .to_string()
}

/// Check a password against a stored hash (at the cost recorded in it). Slow by design.
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// A hash to verify against when the user does not exist, so that a login for an unknown
/// user costs the same time as one with a wrong password (one per cost in use).
pub fn dummy_hash(cost: PasswordCost) -> String {
    static H: OnceLock<std::sync::Mutex<Vec<(PasswordCost, String)>>> = OnceLock::new();
    let mut cache = H.get_or_init(Default::default).lock().expect("dummy hash lock");
    if let Some((_, h)) = cache.iter().find(|(c, _)| *c == cost) {
        return h.clone();
    }
    let h = hash_password_with("natter-dummy-password", cost);
    cache.push((cost, h.clone()));
    h
}

/// A new random token (256 bits) with a prefix that says what it is.
pub fn new_token(prefix: &str) -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    format!("{prefix}{}", hex::encode(b))
}

/// What the server stores for a token.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A session's resume token (PROTOCOL.md §7.2): a bearer secret, so its `Debug` never
/// shows it; [`ResumeToken::expose`] is for the one place it goes on the wire.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ResumeToken(String);

impl ResumeToken {
    /// A fresh random token.
    pub fn generate() -> Self {
        ResumeToken(new_token("rs_"))
    }

    /// The token itself, to send to the client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for ResumeToken {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ResumeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResumeToken(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_token_never_shows_in_debug_output() {
        let t = ResumeToken::generate();
        assert!(t.expose().starts_with("rs_"));
        let shown = format!("{t:?} {:?}", Some(t.clone()));
        assert!(!shown.contains(&t.expose()[3..]), "{shown}");
    }

    #[test]
    fn passwords_verify_and_tokens_differ() {
        let h = hash_password("correct horse");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, "correct horse"));
        assert!(!verify_password(&h, "wrong horse"));
        assert!(!verify_password("not a hash", "x"));
        assert_ne!(new_token("nt_"), new_token("nt_"));
        assert_eq!(token_hash("a"), token_hash("a"));
    }
}
