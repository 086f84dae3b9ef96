//! natter-server: see the module docs.
pub mod store;
