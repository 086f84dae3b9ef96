//! Every fuzz target (`fuzz/targets/`) in the ordinary test run, on stable Rust: first
//! every input of its committed corpus (`fuzz/corpus/<target>`, the seeds and the
//! regressions found so far), then random mutations of them for a short, bounded time
//! (`NATTER_FUZZ_SECS` per target, default 4; at most 200,000 inputs). Not coverage-guided
//! — that is `fuzz/run.sh` with cargo-fuzz and libFuzzer (fuzz/README.md) — but the same
//! checks on every CI run, so a corpus input that fails again, or a shallow new failure,
//! fails the suite. A failing input is printed in hex before the process aborts, as
//! libFuzzer does (a panic in a server task must not go unnoticed).
#![allow(dead_code)]
// Each server target includes `common/server.rs` itself (as its libFuzzer build needs): one
// server fixture per target here.
#![allow(clippy::duplicate_mod)]
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[path = "../../fuzz/targets/client_session.rs"]
mod client_session;
#[path = "../../fuzz/targets/frame_decoder.rs"]
mod frame_decoder;
#[path = "../../fuzz/targets/message_decoders.rs"]
mod message_decoders;
#[path = "../../fuzz/targets/resume_tokens.rs"]
mod resume_tokens;
#[path = "../../fuzz/targets/server_guarantees.rs"]
mod server_guarantees;
#[path = "../../fuzz/targets/server_requests.rs"]
mod server_requests;

/// The input being run on each thread's target, for the panic hook.
static CURRENT: Mutex<Vec<(String, Vec<u8>)>> = Mutex::new(Vec::new());

thread_local! {
    /// This thread's slot in [`CURRENT`], while it runs a target.
    static MINE: std::cell::RefCell<Option<usize>> = const { std::cell::RefCell::new(None) };
}

fn install_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            // A panic on a target's own thread names its input; one in a server task
            // (another thread) lists every input in flight.
            // The other areas' tests share this process (tests/suite.rs): their own threads
            // (named `area::test`) and any panic while no input is in flight are theirs.
            let mine = MINE.with(|m| *m.borrow());
            let another_test = mine.is_none() && std::thread::current().name().is_some_and(|n| n.contains("::"));
            let mut in_flight = false;
            if let Ok(current) = CURRENT.try_lock() {
                for (i, (target, input)) in current.iter().enumerate() {
                    if input.is_empty() || mine.is_some_and(|m| m != i) {
                        continue;
                    }
                    in_flight = true;
                    let what = if mine.is_some() { "failed on" } else { "was running" };
                    eprintln!("fuzz smoke: {target} {what} input {}", hex::encode(input));
                }
            }
            if mine.is_some() || (in_flight && !another_test) {
                std::process::abort();
            }
        }));
    });
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{target} has no committed corpus");
    inputs
}

/// xorshift64*: deterministic per target, so a failure repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A few libFuzzer-style mutations of `input` (bit flips, interesting bytes, insertions,
/// deletions, duplicated runs, splices with another corpus input).
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = [0x00, 0x01, 0x7f, 0x80, 0xff, 0x0a, 0x12][rng.below(7)];
            }
            2 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.next() as u8);
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                let n = rng.below(v.len() - i + 1);
                v.drain(i..i + n);
            }
            4 if !v.is_empty() && v.len() < 4096 => {
                let i = rng.below(v.len());
                let n = rng.below((v.len() - i).min(64)) + 1;
                let run = v[i..i + n].to_vec();
                let at = rng.below(v.len() + 1);
                v.splice(at..at, run);
            }
            _ => {
                let cut = rng.below(v.len() + 1);
                let from = rng.below(other.len() + 1);
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
        }
    }
    v
}

fn smoke(target: &str, run: fn(&[u8])) {
    install_hook();
    let secs: u64 = std::env::var("NATTER_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let seeds = corpus(target);
    let slot = {
        let mut c = CURRENT.lock().unwrap();
        c.push((target.to_string(), Vec::new()));
        c.len() - 1
    };
    MINE.with(|m| *m.borrow_mut() = Some(slot));
    let set = |input: &[u8]| CURRENT.lock().unwrap()[slot].1 = input.to_vec();
    for input in &seeds {
        set(input);
        run(input);
    }
    let mut rng = Rng(0x5eed ^ target.len() as u64 ^ (target.as_bytes()[0] as u64) << 32);
    let until = Instant::now() + Duration::from_secs(secs);
    let mut runs = 0u64;
    while Instant::now() < until && runs < 200_000 {
        let a = &seeds[rng.below(seeds.len())];
        let b = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, a, b);
        set(&input);
        run(&input);
        runs += 1;
    }
    CURRENT.lock().unwrap()[slot].1.clear();
    eprintln!("fuzz smoke: {target}: {} corpus inputs, {runs} mutations", seeds.len());
    assert!(runs > 0 || secs == 0, "{target}: no mutation ran");
}

#[test]
fn client_session_smoke() {
    smoke("client_session", client_session::run);
}

#[test]
fn frame_decoder_smoke() {
    smoke("frame_decoder", frame_decoder::run);
}

#[test]
fn message_decoders_smoke() {
    smoke("message_decoders", message_decoders::run);
}

#[test]
fn resume_tokens_smoke() {
    smoke("resume_tokens", resume_tokens::run);
}

#[test]
fn server_guarantees_smoke() {
    smoke("server_guarantees", server_guarantees::run);
}

#[test]
fn server_requests_smoke() {
    smoke("server_requests", server_requests::run);
}
