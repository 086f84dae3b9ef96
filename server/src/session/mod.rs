//! Sessions: who is connected where ([`hub`]: sessions, fan-out to connections, resume
//! windows) and who is online ([`presence`]: heartbeats, last seen, coalesced updates).
//!
//! May import: `store`, `security`, `clock`. Must not import `conversation`, `cluster`,
//! `api`, `conn` or `transport`: what presence needs from above (contacts, other nodes) it
//! receives through the [`presence::PresenceOutlet`] trait it defines.
pub mod hub;
pub mod presence;
