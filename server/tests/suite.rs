//! natter-server's integration tests, in one test binary: real servers on loopback (in-process
//! and the binary), the SDK, raw clients, the CLI, browsers, Redis, Prometheus and the other
//! independent programs each area names. One binary links the server once (not once per
//! area) and lets the test harness pack the areas' slow, mostly waiting tests side by side.
//! Run one area with `cargo test -p natter-server --test suite -- <area>::`.
mod common;

mod abuse;
mod accounts;
mod browser;
mod cluster;
mod e2e;
mod e2ee;
mod faults;
mod fuzz_smoke;
mod layers;
mod media;
mod media_http;
mod moderation;
mod ops;
mod packaging;
mod privacy;
mod profiles;
mod push;
mod search;
mod server_api;
mod server_api_manage;
mod signals;
mod streams;
mod webhooks;
mod websocket;
