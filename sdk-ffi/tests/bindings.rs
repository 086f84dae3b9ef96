//! The generated bindings against a live server: the Python and Kotlin test programs
//! (`tests/python/chat_test.py`, `tests/kotlin/ChatTest.kt`) run the same chat scenario —
//! two users, listener events, ✓/✓✓/read, a server-side cut with resume, restore from a
//! snapshot, typed errors — against a real natter server on loopback (QUIC, sled in a temp
//! dir). Each also runs once against a server that withholds messages, and must fail there.
//!
//! Bindings are generated here from the built library with this crate's `uniffi-bindgen`,
//! exactly as `sdk-ffi/bindgen.sh` does. The Kotlin compiler comes from npm
//! (`sdk-ffi/tests/kotlin`, installed by `scripts/test.sh`), JNA from Debian's libjna-java.
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use natter_server::{Config, RunningServer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A whole program run ends by this deadline (it waits at most NATTER_WAIT_SECS per event).
const PROGRAM_DEADLINE: Duration = Duration::from_secs(300);

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `target/<profile>`: where cargo put the uniffi-bindgen binary.
fn build_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_uniffi-bindgen"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The cdylib cargo built along with this test: `target/<profile>/deps/libnatter_ffi.so`
/// (`target/<profile>/libnatter_ffi.so` is only refreshed by `cargo build`, so it can be
/// stale here).
fn library_dir() -> PathBuf {
    build_dir().join("deps")
}

fn run_ok(cmd: &mut std::process::Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Generate Kotlin, Swift and Python bindings once per test process.
fn bindings() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let lib = library_dir().join("libnatter_ffi.so");
        assert!(
            lib.exists(),
            "{} missing: cargo builds the cdylib with the tests",
            lib.display()
        );
        let out = build_dir().join("ffi-test-bindings");
        let _ = std::fs::remove_dir_all(&out);
        for lang in ["kotlin", "swift", "python"] {
            run_ok(
                std::process::Command::new(env!("CARGO_BIN_EXE_uniffi-bindgen"))
                    .args(["generate", "--library"])
                    .arg(&lib)
                    .args(["--language", lang, "--out-dir"])
                    .arg(out.join(lang)),
                &format!("uniffi-bindgen {lang}"),
            );
        }
        std::fs::copy(&lib, out.join("python/libnatter_ffi.so")).expect("copy the library next to the module");
        out
    })
}

async fn server(dir: &Path, withhold_messages: bool) -> RunningServer {
    let server = natter_server::start(&Config::loopback(dir))
        .await
        .expect("server starts");
    server.set_withhold_messages(withhold_messages);
    server
}

struct Outcome {
    success: bool,
    output: String,
}

/// Run a test program against `server`, serving its "@cut <user id>" and "@indexed
/// <conversation> <seq>" requests, and collect its output.
async fn run_program(
    mut cmd: tokio::process::Command,
    server: &RunningServer,
    prefix: &str,
    wait_secs: u32,
) -> Outcome {
    cmd.env("NATTER_BINDINGS", bindings().join("python"))
        .env("NATTER_ADDR", server.addr.to_string())
        .env("NATTER_FINGERPRINT", &server.fingerprint)
        .env("NATTER_PREFIX", prefix)
        .env("NATTER_WAIT_SECS", wait_secs.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("start the test program");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = child.stderr.take().unwrap();
    let mut output = String::new();
    let drive = async {
        while let Some(line) = lines.next_line().await.expect("read the program's output") {
            output.push_str(&line);
            output.push('\n');
            if let Some(request) = line.strip_prefix('@') {
                let answer = match request.split_once(' ') {
                    Some(("cut", id)) => {
                        let user = natter_sdk::UserId(id.trim().parse().expect("a user id"));
                        assert!(server.disconnect_user(user) > 0, "user {id} had no connection to cut");
                        "ok\n"
                    }
                    // "@indexed <conversation> <seq>": answered once search finds it.
                    Some(("indexed", at)) => {
                        let (conv, seq) = at.trim().split_once(' ').expect("conversation and seq");
                        let conv = natter_sdk::ConversationId(conv.parse().expect("a conversation id"));
                        server.search_indexed_through(conv, seq.parse().expect("a seq")).await;
                        "ok\n"
                    }
                    // "@sweep <now_ms>": a retention sweep as of that time (PROTOCOL.md §5.17).
                    Some(("sweep", now)) => {
                        server
                            .sweep_retention(now.trim().parse().expect("ms since the epoch"))
                            .await
                            .expect("the sweep ran");
                        "ok\n"
                    }
                    _ => "unknown request\n",
                };
                stdin.write_all(answer.as_bytes()).await.unwrap();
                stdin.flush().await.unwrap();
            }
        }
        let mut err = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut err)
            .await
            .unwrap();
        (child.wait().await.expect("wait for the program"), err)
    };
    let (status, err) = tokio::time::timeout(PROGRAM_DEADLINE, drive)
        .await
        .expect("the test program finished within its deadline");
    output.push_str(&err);
    Outcome {
        success: status.success(),
        output,
    }
}

/// The test venv's Python (scripts/test.sh makes it, with PyNaCl for the independent
/// decryption check), else the system's.
fn python() -> tokio::process::Command {
    python_program("chat_test.py")
}

/// One of tests/python's programs on that Python.
fn python_program(name: &str) -> tokio::process::Command {
    let venv = manifest_dir().join("../target/py/bin/python");
    let mut cmd = tokio::process::Command::new(if venv.exists() { venv } else { PathBuf::from("python3") });
    cmd.arg(manifest_dir().join("tests/python").join(name));
    cmd
}

/// The Kotlin toolchain: kotlinc and the coroutines jar from npm, JNA from Debian.
struct Kotlin {
    kotlinc: PathBuf,
    classpath: String,
}

fn kotlin() -> Kotlin {
    let npm = manifest_dir().join("tests/kotlin/node_modules/kotlin-compiler");
    let kotlinc = npm.join("bin/kotlinc");
    assert!(
        kotlinc.exists(),
        "{} missing: run `npm ci` in sdk-ffi/tests/kotlin (scripts/test.sh does)",
        kotlinc.display()
    );
    let jna = Path::new("/usr/share/java/jna.jar");
    assert!(
        jna.exists(),
        "{} missing: apt-get install libjna-java (scripts/test.sh does)",
        jna.display()
    );
    let classpath = format!(
        "{}:{}",
        jna.display(),
        npm.join("lib/kotlinx-coroutines-core-jvm.jar").display()
    );
    Kotlin { kotlinc, classpath }
}

/// Compile the generated Kotlin with the test program once per test process.
fn kotlin_jar() -> &'static (PathBuf, String) {
    static JAR: OnceLock<(PathBuf, String)> = OnceLock::new();
    JAR.get_or_init(|| {
        let k = kotlin();
        let jar = build_dir().join("ffi-test-kotlin.jar");
        run_ok(
            std::process::Command::new(&k.kotlinc)
                .arg(bindings().join("kotlin/uniffi/natter_ffi/natter_ffi.kt"))
                .arg(bindings().join("kotlin/uniffi/natter_protocol/natter_protocol.kt"))
                .arg(manifest_dir().join("tests/kotlin/ChatTest.kt"))
                .args(["-nowarn", "-include-runtime", "-cp", &k.classpath, "-d"])
                .arg(&jar),
            "kotlinc",
        );
        (jar, k.classpath)
    })
}

fn kotlin_program() -> tokio::process::Command {
    let (jar, classpath) = kotlin_jar();
    let mut cmd = tokio::process::Command::new("java");
    cmd.arg(format!("-Djna.library.path={}", library_dir().display()))
        .arg("-cp")
        .arg(format!("{}:{classpath}", jar.display()))
        .arg("ChatTestKt");
    cmd
}

async fn passes(program: tokio::process::Command, prefix: &str) {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), false).await;
    let outcome = run_program(program, &server, prefix, 20).await;
    assert!(
        outcome.success,
        "the program failed against a working server:\n{}",
        outcome.output
    );
    assert!(outcome.output.contains("all checks passed"), "{}", outcome.output);
    assert!(
        outcome.output.contains("@cut "),
        "the program never asked for its connection to be cut:\n{}",
        outcome.output
    );
    server.shutdown().await;
}

async fn fails_without_delivery(program: tokio::process::Command, prefix: &str) {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), true).await;
    let outcome = run_program(program, &server, prefix, 3).await;
    assert!(
        !outcome.success,
        "the program passed against a server that delivers no messages:\n{}",
        outcome.output
    );
    assert!(
        outcome.output.contains("FAIL: bob: bob receives alice's message"),
        "the program failed, but not at the undelivered message:\n{}",
        outcome.output
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_bindings_chat_against_a_live_server() {
    passes(python(), "py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_bindings_fail_when_the_server_does_not_deliver() {
    fails_without_delivery(python(), "pyf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kotlin_bindings_chat_against_a_live_server() {
    passes(kotlin_program(), "kt").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kotlin_bindings_fail_when_the_server_does_not_deliver() {
    fails_without_delivery(kotlin_program(), "ktf").await;
}

/// Names of the C functions a module's header declares (`uniffi_<module>_*`, `ffi_<module>_*`).
fn declared_functions(header: &str, module: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in header.lines().map(str::trim) {
        if line.starts_with("typedef") || line.starts_with('#') || line.starts_with("//") {
            continue;
        }
        let Some(open) = line.find('(') else { continue };
        let ident = line[..open]
            .rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .next()
            .unwrap_or("");
        if ident.starts_with(&format!("uniffi_{module}_")) || ident.starts_with(&format!("ffi_{module}_")) {
            names.insert(ident.to_string());
        }
    }
    names
}

/// No Swift compiler can be installed here, so this checks what can be checked of the Swift
/// bindings: the generated C header compiles, and every function it declares is exported
/// by the library the Swift code would link.
#[test]
fn swift_header_compiles_and_every_declared_function_is_exported() {
    let swift = bindings().join("swift");
    assert!(
        swift.join("natter_ffi.swift").exists(),
        "no Swift bindings were generated"
    );
    // Two modules: the client (natter_ffi) and the app-facing model (natter_protocol).
    let mut declared = std::collections::BTreeSet::new();
    for (module, must_declare, at_least) in [
        ("natter_ffi", "uniffi_natter_ffi_fn_constructor_natterclient_new", 50),
        ("natter_protocol", "ffi_natter_protocol_uniffi_contract_version", 5),
    ] {
        let header = std::fs::read_to_string(swift.join(format!("{module}FFI.h"))).expect("the generated header");
        let probe = swift.join(format!("probe_{module}.c"));
        std::fs::write(
            &probe,
            format!("#include \"{module}FFI.h\"\nint main(void) {{ return 0; }}\n"),
        )
        .unwrap();
        run_ok(
            std::process::Command::new("gcc")
                .args(["-fsyntax-only", "-Wall", "-Werror", "-D_Nonnull=", "-D_Nullable="])
                .arg("-I")
                .arg(&swift)
                .arg(&probe),
            &format!("gcc on the Swift bindings' C header {module}FFI.h"),
        );
        let mine = declared_functions(&header, module);
        assert!(
            mine.len() > at_least && mine.contains(must_declare),
            "{module}FFI.h declares too little: {mine:?}"
        );
        declared.extend(mine);
    }
    let nm = std::process::Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(library_dir().join("libnatter_ffi.so"))
        .output()
        .expect("nm");
    assert!(nm.status.success());
    let exported: std::collections::BTreeSet<String> = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last().map(String::from))
        .collect();
    let missing: Vec<&String> = declared.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "declared in the header but not exported: {missing:?}"
    );
}

/// Push from Python (tests/python/push_test.py): keys, registration, and a separate
/// extension process that opens a notification the loopback Web Push service received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_bindings_register_push_and_an_extension_process_opens_a_notification() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        push_allow_loopback_endpoints: true,
        ..Config::loopback(dir.path())
    };
    let server = natter_server::start(&config).await.expect("server starts");
    let venv = manifest_dir().join("../target/py/bin/python");
    let mut cmd = tokio::process::Command::new(venv);
    cmd.arg(manifest_dir().join("tests/python/push_test.py")).env(
        "NATTER_PUSH_PROVIDER",
        manifest_dir().join("../server/tests/push/webpush_provider.py"),
    );
    let outcome = run_program(cmd, &server, "pypush", 20).await;
    assert!(outcome.success, "the push program failed:\n{}", outcome.output);
    assert!(outcome.output.contains("all checks passed"), "{}", outcome.output);
    for line in outcome.output.lines().filter(|l| l.starts_with("extension:")) {
        println!("{line}");
    }
    server.shutdown().await;
}

/// A Python program ends cleanly right after its last natter call while natter threads are
/// still inside calls into Python (tests/python/exit_test.py holds them there): CPython ends
/// such threads at exit, and without the library's guard (src/foreign.rs) the process
/// aborted about once in thirty runs of an ordinary program.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_program_exits_cleanly_while_natter_threads_are_calling_into_python() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), false).await;
    let outcome = run_program(python_program("exit_test.py"), &server, "pyexit", 20).await;
    assert!(outcome.success, "the program did not exit cleanly:\n{}", outcome.output);
    assert!(
        outcome.output.contains("held: ['listener', 'waking']") && outcome.output.trim_end().ends_with("exiting"),
        "{}",
        outcome.output
    );
    server.shutdown().await;
}

/// Product logins from Python (tests/python/token_test.py) with the product backend of
/// the server's token tests (server/tests/accounts/product.py): a TokenSource renews 4 s
/// tokens in place and bad tokens are refused with typed errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_bindings_log_in_with_product_tokens_and_renew_them() {
    let dir = tempfile::tempdir().unwrap();
    let venv = manifest_dir().join("../target/py/bin/python");
    let mut product = std::process::Command::new(&venv)
        .arg(manifest_dir().join("../server/tests/accounts/product.py"))
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the product backend starts (scripts/test.sh installs PyJWT)");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(product.stdout.take().unwrap()), &mut line).unwrap();
    let port = line.trim().strip_prefix("port ").expect("port line").to_string();
    let secret = std::fs::read_to_string(dir.path().join("hs256.secret")).unwrap();
    let config = Config {
        token_issuers: vec![natter_server::security::jwt::IssuerConfig {
            issuer: "https://product.test".into(),
            audience: vec!["natter".into()],
            hs256_secret: Some(natter_server::security::Secret(secret)),
            ..Default::default()
        }],
        token_leeway_secs: 0,
        token_refresh_ahead_secs: 2,
        ..Config::loopback(&dir.path().join("server"))
    };
    let server = natter_server::start(&config).await.expect("server starts");
    let mut cmd = tokio::process::Command::new(venv);
    cmd.arg(manifest_dir().join("tests/python/token_test.py"))
        .env("NATTER_PRODUCT", format!("http://127.0.0.1:{port}"));
    let outcome = run_program(cmd, &server, "pytok", 20).await;
    let _ = product.kill();
    let _ = product.wait();
    assert!(outcome.success, "the token program failed:\n{}", outcome.output);
    assert!(outcome.output.contains("all checks passed"), "{}", outcome.output);
    server.shutdown().await;
}
