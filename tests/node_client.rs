//! A client Pulse did not write: `tests/node/subscribe.mjs` subscribes to
//! `metricUpdated` with the reference `graphql-ws` client (over `ws`),
//! ingests events over HTTP with Node's `fetch`, and checks the update.
//!
//! Without `node` or the installed packages (`npm install --prefix
//! tests/node`) the test is skipped with a line on stderr, or fails when
//! `CI` is set (CI installs them: see `.ci/run`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pulse::auth::Role;

use crate::common::*;

/// How long the script may take, start to finish.
const TIMEOUT: Duration = Duration::from_secs(60);

/// `node`, if it is on `PATH`.
fn node() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("node"))
        .find(|p| p.is_file())
}

fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node")
}

#[tokio::test]
async fn the_reference_graphql_ws_client_gets_metric_updates() {
    let dir = node_dir();
    let installed = dir.join("node_modules/graphql-ws/package.json").is_file()
        && dir.join("node_modules/ws/package.json").is_file();
    let node = match node() {
        Some(node) if installed => node,
        found => {
            let missing = if found.is_none() {
                "node is not installed"
            } else {
                "the Node client is not installed"
            };
            assert!(
                std::env::var_os("CI").is_none(),
                "{missing}; run `npm install --prefix tests/node` (with Node 20 or later) to run the Node client test"
            );
            // Straight to stderr: the test harness captures `eprintln!` of
            // a passing test, and a skip should be seen.
            let _ = writeln!(
                std::io::stderr(),
                "node client test skipped: {missing} (npm install --prefix tests/node)"
            );
            return;
        }
    };

    let app = spawn_app_with(|s| {
        s.set("PULSE_LIVE_DEBOUNCE_MS", "50");
    })
    .await;
    let tenant = app.tenant("node").await;

    // The script's output goes to files: reading pipes would need threads,
    // and a blocking wait would stall this runtime, which serves the app.
    let out = tempfile::tempdir().expect("tempdir");
    let (stdout_path, stderr_path) = (out.path().join("stdout"), out.path().join("stderr"));
    let mut child = Command::new(&node)
        .arg(dir.join("subscribe.mjs"))
        .current_dir(&dir)
        .env("PULSE_URL", format!("http://{}", app.addr))
        .env("VIEWER_TOKEN", app.token(&tenant, Role::Viewer))
        .env("EDITOR_TOKEN", app.token(&tenant, Role::Editor))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("start node");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break Some(status);
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let output = format!(
        "--- stdout\n{}--- stderr\n{}",
        read(&stdout_path),
        read(&stderr_path)
    );
    let status = status.unwrap_or_else(|| panic!("subscribe.mjs ran over {TIMEOUT:?}\n{output}"));
    assert!(status.success(), "subscribe.mjs: {status}\n{output}");
    assert!(output.contains("ok: sequence 1 → 2"), "{output}");
    // Shown with --nocapture: what the client received.
    println!("{output}");
}
