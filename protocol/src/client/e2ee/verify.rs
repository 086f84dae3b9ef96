//! SAS verification of another device (PROTOCOL.md §12.10), sans-IO: two devices agree
//! on a short authentication string (seven emoji, or three four-digit numbers) derived
//! from a fresh X25519 exchange and from the identity keys *each side believes* both
//! devices have, so a swapped key shows as a different string; once both people confirm,
//! each device MACs its own Ed25519 identity key and checks the other's, and only then is
//! the device verified. The starter commits to its key before seeing the other's (ZRTP's
//! hash commitment), so neither side can pick its key to steer the string.
//!
//! One [`Verification`] per transaction: feed it the other device's messages, send what
//! it returns, show [`Verification::sas`], and call [`Verification::confirm`] with what the
//! person said.
use base64::Engine as _;
use sha2::{Digest, Sha256};
use vodozemac::sas::{EstablishedSas, Mac, Sas};
use vodozemac::Curve25519PublicKey;

use crate::pb::{self, verification_message::Kind};
use crate::{DeviceId, UserId};

/// The 64 emoji a SAS index names, with their English names (the order of the Matrix SAS
/// table, so people comparing with other clients of that table see the same pictures).
pub const EMOJI: [(&str, &str); 64] = [
    ("🐶", "Dog"),
    ("🐱", "Cat"),
    ("🦁", "Lion"),
    ("🐎", "Horse"),
    ("🦄", "Unicorn"),
    ("🐷", "Pig"),
    ("🐘", "Elephant"),
    ("🐰", "Rabbit"),
    ("🐼", "Panda"),
    ("🐓", "Rooster"),
    ("🐧", "Penguin"),
    ("🐢", "Turtle"),
    ("🐟", "Fish"),
    ("🐙", "Octopus"),
    ("🦋", "Butterfly"),
    ("🌷", "Flower"),
    ("🌳", "Tree"),
    ("🌵", "Cactus"),
    ("🍄", "Mushroom"),
    ("🌏", "Globe"),
    ("🌙", "Moon"),
    ("☁️", "Cloud"),
    ("🔥", "Fire"),
    ("🍌", "Banana"),
    ("🍎", "Apple"),
    ("🍓", "Strawberry"),
    ("🌽", "Corn"),
    ("🍕", "Pizza"),
    ("🎂", "Cake"),
    ("❤️", "Heart"),
    ("😀", "Smiley"),
    ("🤖", "Robot"),
    ("🎩", "Hat"),
    ("👓", "Glasses"),
    ("🔧", "Spanner"),
    ("🎅", "Santa"),
    ("👍", "Thumbs Up"),
    ("☂️", "Umbrella"),
    ("⌛", "Hourglass"),
    ("⏰", "Clock"),
    ("🎁", "Gift"),
    ("💡", "Light Bulb"),
    ("📕", "Book"),
    ("✏️", "Pencil"),
    ("📎", "Paperclip"),
    ("✂️", "Scissors"),
    ("🔒", "Lock"),
    ("🔑", "Key"),
    ("🔨", "Hammer"),
    ("☎️", "Telephone"),
    ("🏁", "Flag"),
    ("🚂", "Train"),
    ("🚲", "Bicycle"),
    ("✈️", "Aeroplane"),
    ("🚀", "Rocket"),
    ("🏆", "Trophy"),
    ("⚽", "Ball"),
    ("🎸", "Guitar"),
    ("🎺", "Trumpet"),
    ("🔔", "Bell"),
    ("⚓", "Anchor"),
    ("🎧", "Headphones"),
    ("📁", "Folder"),
    ("📌", "Pin"),
];

/// A device taking part, with the Ed25519 identity key this side holds for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Party {
    /// Whose.
    pub user: UserId,
    /// Which.
    pub device: DeviceId,
    /// Its Ed25519 identity key as this device knows it (its own, or the server's word).
    pub ed25519: Vec<u8>,
}

impl Party {
    fn id(&self) -> String {
        format!(
            "{}|{}|{}",
            self.user.0,
            self.device.0,
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(&self.ed25519)
        )
    }
}

/// Why a verification stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A message that does not fit this step.
    #[error("a verification step out of order")]
    Unexpected,
    /// A commitment or MAC did not verify: someone is in the middle, or a key was swapped.
    #[error("the verification does not match: {0}")]
    Mismatch(&'static str),
    /// Not a well-formed step.
    #[error("a malformed verification step: {0}")]
    Malformed(&'static str),
}

impl VerifyError {
    /// The `VerificationCancel.reason` it is sent as.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::Unexpected => "unexpected",
            VerifyError::Mismatch(_) => "mismatch",
            VerifyError::Malformed(_) => "unexpected",
        }
    }
}

/// What the people compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShortCode {
    /// Seven indices into [`EMOJI`].
    pub emoji: [u8; 7],
    /// Three numbers of 1000..=9191.
    pub decimals: (u16, u16, u16),
}

impl ShortCode {
    /// The emoji with their names.
    pub fn emoji(&self) -> Vec<(&'static str, &'static str)> {
        self.emoji.iter().map(|i| EMOJI[*i as usize % 64]).collect()
    }
}

/// How a verification ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Both people confirmed and both MACs verified: the peer's key is the one shown.
    Verified,
    /// Stopped: by a person ("user"), by a mismatch, or by a step out of order.
    Cancelled(String),
}

enum State {
    /// Started here: the commitment is out; waiting for the other device's key.
    Started(Sas),
    /// Started there: waiting for this device's person to accept.
    Requested(Vec<u8>),
    /// Accepted here: this key is out; waiting for the starter's key.
    Accepted(Sas, Vec<u8>),
    /// Both keys known: the code is shown; waiting for a confirmation and the other's MAC.
    Comparing {
        sas: Box<EstablishedSas>,
        confirmed: bool,
        theirs: Option<Vec<u8>>,
    },
    Done(Outcome),
}

/// One SAS verification between this device and another.
pub struct Verification {
    txn: String,
    me: Party,
    peer: Party,
    starter: bool,
    state: State,
}

impl std::fmt::Debug for Verification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verification")
            .field("txn", &self.txn)
            .field("peer", &(self.peer.user, self.peer.device))
            .field("starter", &self.starter)
            .field("outcome", &self.outcome())
            .finish()
    }
}

fn message(txn: &str, kind: Kind) -> pb::VerificationMessage {
    pb::VerificationMessage {
        txn: txn.to_owned(),
        kind: Some(kind),
    }
}

fn commitment(public_key: &[u8], txn: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(public_key);
    h.update(txn.as_bytes());
    h.finalize().to_vec()
}

fn txn_ok(txn: &str) -> bool {
    (1..=64).contains(&txn.len()) && txn.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Verification {
    /// Start verifying `peer`; the first message to send it. `txn`: a fresh random id.
    pub fn start(me: Party, peer: Party, txn: String) -> (Self, pb::VerificationMessage) {
        let sas = Sas::new();
        let start = pb::VerificationStart {
            commitment: commitment(sas.public_key().as_bytes(), &txn),
        };
        let msg = message(&txn, Kind::Start(start));
        let v = Verification {
            txn,
            me,
            peer,
            starter: true,
            state: State::Started(sas),
        };
        (v, msg)
    }

    /// `peer` asks to verify: a verification waiting for [`Self::accept`].
    pub fn requested(me: Party, peer: Party, msg: &pb::VerificationMessage) -> Result<Self, VerifyError> {
        let Some(Kind::Start(start)) = &msg.kind else {
            return Err(VerifyError::Unexpected);
        };
        if !txn_ok(&msg.txn) || start.commitment.len() != 32 {
            return Err(VerifyError::Malformed("a transaction id and a 32-byte commitment"));
        }
        Ok(Verification {
            txn: msg.txn.clone(),
            me,
            peer,
            starter: false,
            state: State::Requested(start.commitment.clone()),
        })
    }

    /// This transaction's id.
    pub fn txn(&self) -> &str {
        &self.txn
    }

    /// The other device.
    pub fn peer(&self) -> &Party {
        &self.peer
    }

    /// Whether this device started it.
    pub fn is_starter(&self) -> bool {
        self.starter
    }

    /// The person accepted a request: the key to send.
    pub fn accept(&mut self) -> Result<pb::VerificationMessage, VerifyError> {
        let State::Requested(commitment) = &self.state else {
            return Err(VerifyError::Unexpected);
        };
        let sas = Sas::new();
        let key = pb::VerificationKey {
            public_key: sas.public_key().to_vec(),
        };
        self.state = State::Accepted(sas, commitment.clone());
        Ok(message(&self.txn, Kind::Key(key)))
    }

    /// A message from the other device; what to send back, if anything. An error ends
    /// the verification: send [`Self::cancel_message`] for it.
    pub fn receive(&mut self, msg: &pb::VerificationMessage) -> Result<Option<pb::VerificationMessage>, VerifyError> {
        if msg.txn != self.txn {
            return Err(VerifyError::Unexpected);
        }
        let result = self.step(msg);
        if let Err(e) = &result {
            self.state = State::Done(Outcome::Cancelled(e.reason().into()));
        }
        result
    }

    fn step(&mut self, msg: &pb::VerificationMessage) -> Result<Option<pb::VerificationMessage>, VerifyError> {
        let kind = msg.kind.as_ref().ok_or(VerifyError::Malformed("no step"))?;
        if let Kind::Cancel(c) = kind {
            self.state = State::Done(Outcome::Cancelled(c.reason.clone()));
            return Ok(None);
        }
        let placeholder = State::Done(Outcome::Cancelled("unexpected".into()));
        match (std::mem::replace(&mut self.state, placeholder), kind) {
            (State::Started(sas), Kind::Key(k)) => {
                let mine = sas.public_key().to_vec();
                self.establish(sas, &k.public_key)?;
                Ok(Some(message(
                    &self.txn,
                    Kind::Key(pb::VerificationKey { public_key: mine }),
                )))
            }
            (State::Accepted(sas, commitment_seen), Kind::Key(k)) => {
                if commitment(&k.public_key, &self.txn) != commitment_seen {
                    return Err(VerifyError::Mismatch(
                        "the starter's key is not the one it committed to",
                    ));
                }
                self.establish(sas, &k.public_key)?;
                Ok(None)
            }
            (
                State::Comparing {
                    sas,
                    confirmed,
                    theirs: None,
                },
                Kind::Mac(m),
            ) => {
                self.state = State::Comparing {
                    sas,
                    confirmed,
                    theirs: Some(m.mac.clone()),
                };
                self.finish()?;
                Ok(None)
            }
            _ => Err(VerifyError::Unexpected),
        }
    }

    fn establish(&mut self, sas: Sas, their_key: &[u8]) -> Result<(), VerifyError> {
        let key = Curve25519PublicKey::from_slice(their_key).map_err(|_| VerifyError::Malformed("a 32-byte key"))?;
        let sas = sas
            .diffie_hellman(key)
            .map_err(|_| VerifyError::Malformed("a usable X25519 key"))?;
        self.state = State::Comparing {
            sas: Box::new(sas),
            confirmed: false,
            theirs: None,
        };
        Ok(())
    }

    /// The agreed string's input: both devices as this side knows them, starter first.
    fn info(&self) -> String {
        let (a, b) = if self.starter {
            (&self.me, &self.peer)
        } else {
            (&self.peer, &self.me)
        };
        format!("NATTER_SAS_V1|{}|{}|{}", a.id(), b.id(), self.txn)
    }

    fn mac_info(&self, from: &Party, to: &Party) -> String {
        format!(
            "NATTER_SAS_MAC_V1|{}|{}|{}|{}|{}",
            from.user.0, from.device.0, to.user.0, to.device.0, self.txn
        )
    }

    /// What to show the person, once both keys are known.
    pub fn sas(&self) -> Option<ShortCode> {
        let State::Comparing { sas, .. } = &self.state else {
            return None;
        };
        let bytes = sas.bytes(&self.info());
        Some(ShortCode {
            emoji: bytes.emoji_indices(),
            decimals: bytes.decimals(),
        })
    }

    /// The person compared the code: `true` (it matches) gives the MAC to send, `false`
    /// the cancellation.
    pub fn confirm(&mut self, matches: bool) -> Result<pb::VerificationMessage, VerifyError> {
        if !matches {
            self.state = State::Done(Outcome::Cancelled("user".into()));
            return Ok(self.cancel_message("user"));
        }
        let input = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&self.me.ed25519);
        let info = self.mac_info(&self.me, &self.peer);
        let State::Comparing { sas, confirmed, .. } = &mut self.state else {
            return Err(VerifyError::Unexpected);
        };
        *confirmed = true;
        let mac = sas.calculate_mac(&input, &info).as_bytes().to_vec();
        self.finish()?;
        Ok(message(&self.txn, Kind::Mac(pb::VerificationMac { mac })))
    }

    /// Both confirmed and the other's MAC in: check it against the key this side holds.
    fn finish(&mut self) -> Result<(), VerifyError> {
        let State::Comparing {
            sas,
            confirmed: true,
            theirs: Some(theirs),
        } = &self.state
        else {
            return Ok(());
        };
        let input = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&self.peer.ed25519);
        let info = self.mac_info(&self.peer, &self.me);
        let ok = sas.verify_mac(&input, &info, &Mac::from_slice(theirs)).is_ok();
        if !ok {
            self.state = State::Done(Outcome::Cancelled("mismatch".into()));
            return Err(VerifyError::Mismatch(
                "the other device's identity key is not the one shown",
            ));
        }
        self.state = State::Done(Outcome::Verified);
        Ok(())
    }

    /// How it ended, once it has.
    pub fn outcome(&self) -> Option<&Outcome> {
        match &self.state {
            State::Done(o) => Some(o),
            _ => None,
        }
    }

    /// A cancellation of this transaction with `reason`.
    pub fn cancel_message(&self, reason: &str) -> pb::VerificationMessage {
        message(
            &self.txn,
            Kind::Cancel(pb::VerificationCancel {
                reason: reason.to_owned(),
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn party(user: u64, device: u64, key: u8) -> Party {
        Party {
            user: UserId(user),
            device: DeviceId(device),
            ed25519: vec![key; 32],
        }
    }

    /// Run a verification to the compared code; `alice_sees_bob` is the key alice holds
    /// for bob's device (the real one, or a forged one).
    fn to_codes(alice_sees_bob: Party) -> (Verification, Verification) {
        let (alice, bob) = (party(1, 11, 0xa1), party(2, 21, 0xb2));
        let (mut a, start) = Verification::start(alice.clone(), alice_sees_bob, "t1".into());
        let mut b = Verification::requested(bob, alice, &start).unwrap();
        assert!(b.sas().is_none());
        let key_b = b.accept().unwrap();
        let key_a = a.receive(&key_b).unwrap().expect("the starter's key");
        assert!(b.receive(&key_a).unwrap().is_none());
        (a, b)
    }

    #[test]
    fn both_sides_agree_and_verify() {
        let (mut a, mut b) = to_codes(party(2, 21, 0xb2));
        let (ca, cb) = (a.sas().unwrap(), b.sas().unwrap());
        assert_eq!(ca, cb, "the same code on both screens");
        assert_eq!(ca.emoji().len(), 7);
        assert!((1000..=9191).contains(&ca.decimals.0));
        let mac_a = a.confirm(true).unwrap();
        assert!(a.outcome().is_none(), "waits for the other's MAC");
        let mac_b = b.confirm(true).unwrap();
        b.receive(&mac_a).unwrap();
        a.receive(&mac_b).unwrap();
        assert_eq!(a.outcome(), Some(&Outcome::Verified));
        assert_eq!(b.outcome(), Some(&Outcome::Verified));
    }

    #[test]
    fn a_swapped_identity_key_shows_another_code_and_fails_the_mac() {
        // Alice was given a forged key for bob's device (a server in the middle).
        let (mut a, mut b) = to_codes(party(2, 21, 0x66));
        assert_ne!(a.sas().unwrap(), b.sas().unwrap(), "the people see different codes");
        // Even if both tap "they match", the MAC gives it away on the side holding the
        // forged key (bob's view of alice is right, and so is his check of her MAC).
        let mac_a = a.confirm(true).unwrap();
        let mac_b = b.confirm(true).unwrap();
        assert!(matches!(a.receive(&mac_b), Err(VerifyError::Mismatch(_))));
        assert_eq!(a.outcome(), Some(&Outcome::Cancelled("mismatch".into())));
        b.receive(&mac_a).unwrap();
        assert_eq!(b.outcome(), Some(&Outcome::Verified), "alice's key is genuine");
    }

    #[test]
    fn a_key_other_than_the_committed_one_is_refused() {
        let (alice, bob) = (party(1, 11, 0xa1), party(2, 21, 0xb2));
        let (_a, start) = Verification::start(alice.clone(), bob.clone(), "t2".into());
        let mut b = Verification::requested(bob, alice, &start).unwrap();
        b.accept().unwrap();
        let other = Sas::new().public_key().to_vec();
        let swapped = message("t2", Kind::Key(pb::VerificationKey { public_key: other }));
        assert!(matches!(b.receive(&swapped), Err(VerifyError::Mismatch(_))));
        assert_eq!(b.outcome(), Some(&Outcome::Cancelled("mismatch".into())));
    }

    #[test]
    fn declining_and_steps_out_of_order_cancel() {
        let (mut a, mut b) = to_codes(party(2, 21, 0xb2));
        let no = b.confirm(false).unwrap();
        assert_eq!(b.outcome(), Some(&Outcome::Cancelled("user".into())));
        a.receive(&no).unwrap();
        assert_eq!(a.outcome(), Some(&Outcome::Cancelled("user".into())));
        let (alice, bob) = (party(1, 11, 0xa1), party(2, 21, 0xb2));
        let (mut a, start) = Verification::start(alice, bob, "t3".into());
        assert_eq!(a.receive(&start).unwrap_err(), VerifyError::Unexpected);
        let mut wrong_txn = start.clone();
        wrong_txn.txn = "other".into();
        assert_eq!(a.receive(&wrong_txn).unwrap_err(), VerifyError::Unexpected);
        let bad = message(
            "has space",
            Kind::Start(pb::VerificationStart {
                commitment: vec![0; 32],
            }),
        );
        assert!(matches!(
            Verification::requested(party(2, 21, 1), party(1, 11, 2), &bad),
            Err(VerifyError::Malformed(_))
        ));
    }
}
