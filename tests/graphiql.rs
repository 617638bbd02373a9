//! GraphiQL without the internet: the page and its assets come from Pulse
//! alone, a real browser (headless Chromium, driven over the DevTools
//! protocol, unable to resolve any host but 127.0.0.1) runs a query in it,
//! and the demo token never reaches a page it is not meant for.
//!
//! Without Chromium the browser test is skipped with a line on stderr, or
//! fails when `CI` is set (CI installs it: see `.ci/run`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use pulse::auth::Role;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

/// How long the page may take to load, answer, or render the answer.
const WAIT: Duration = Duration::from_secs(30);

/// The URLs of the page's `src` and `href` attributes.
fn referenced_urls(html: &str) -> Vec<String> {
    ["src=\"", "href=\""]
        .iter()
        .flat_map(|attr| html.split(attr).skip(1))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect()
}

async fn page(app: &TestApp) -> (reqwest::header::HeaderMap, String) {
    let resp = app
        .http
        .get(app.url("/graphql"))
        .header("accept", "text/html")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    (headers, resp.text().await.expect("html"))
}

#[tokio::test]
async fn the_page_loads_only_same_origin_assets_with_their_types_and_a_long_cache() {
    let app = spawn_app().await;
    let (headers, html) = page(&app).await;
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(
        !html.contains("http://") && !html.contains("https://") && !html.contains("//unpkg"),
        "the page names another host: {html}"
    );

    let urls = referenced_urls(&html);
    assert_eq!(
        urls.len(),
        4,
        "React, ReactDOM, GraphiQL and its CSS: {urls:?}"
    );
    for url in &urls {
        assert!(
            url.starts_with("/graphiql/") && !url.starts_with("//"),
            "not a same-origin asset URL: {url}"
        );
        let resp = app.http.get(app.url(url)).send().await.expect("send");
        assert_eq!(resp.status(), 200, "{url}");
        let expected = if url.ends_with(".css") {
            "text/css; charset=utf-8"
        } else {
            "text/javascript; charset=utf-8"
        };
        assert_eq!(resp.headers()["content-type"], expected, "{url}");
        assert_eq!(
            resp.headers()["cache-control"],
            "public, max-age=31536000, immutable",
            "{url}"
        );
        let body = resp.bytes().await.expect("body");
        assert!(body.len() > 10_000, "{url} is only {} bytes", body.len());
    }

    for unknown in [
        "/graphiql/nope.js",
        "/graphiql/graphiql.min.js.map",
        "/graphiql/",
    ] {
        let resp = app.http.get(app.url(unknown)).send().await.expect("send");
        assert_eq!(resp.status(), 404, "{unknown}");
    }
}

#[tokio::test]
async fn a_server_with_a_configured_secret_never_prefills_the_demo_token() {
    // Demo seeding on and a loopback listener, but a configured secret: a
    // real deployment, whose tokens must not sit in a page.
    let app = spawn_app_with(|s| {
        s.set("PULSE_DEMO", "1");
    })
    .await;
    let acme = app.tenant("acme").await;
    assert!(!app.state.offer_demo_token(app.token(&acme, Role::Admin)));
    assert_eq!(app.state.demo_token(), None);
    let (_, html) = page(&app).await;
    assert!(!html.contains("Bearer"), "{html}");
    assert!(!html.contains("Authorization"), "{html}");
}

/// Chromium, if installed: `/usr/bin/chromium`, or `chromium` on `PATH`.
fn chromium() -> Option<PathBuf> {
    let debian = PathBuf::from("/usr/bin/chromium");
    if debian.is_file() {
        return Some(debian);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("chromium"))
        .find(|p| p.is_file())
}

/// A headless Chromium that can reach only 127.0.0.1; killed (with the
/// processes it started) when dropped, so a failing test leaves none behind.
struct Browser {
    child: Child,
    /// The profile, with `DevToolsActivePort`; removed after the kill.
    profile: tempfile::TempDir,
}

impl Browser {
    fn launch(binary: &Path) -> Browser {
        use std::os::unix::process::CommandExt;
        let profile = tempfile::tempdir().expect("profile dir");
        let child = Command::new(binary)
            .args([
                "--headless",
                // Tests run as root in containers, where the sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                // No name but 127.0.0.1 resolves and no proxy is used, so
                // nothing outside Pulse can be fetched; the test also checks
                // every request the page made.
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                "--no-proxy-server",
                // Chromium's own traffic (updates, sync, safe browsing, …).
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--disable-extensions",
                "--disable-domain-reliability",
                "--disable-client-side-phishing-detection",
                "--no-first-run",
                "--no-default-browser-check",
                "--password-store=basic",
                "--use-mock-keychain",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // A group of its own, so Drop can end renderers and helpers too.
            .process_group(0)
            .spawn()
            .expect("start chromium");
        Browser { child, profile }
    }

    /// The DevTools port Chromium picked, from `DevToolsActivePort`.
    async fn devtools_port(&mut self) -> u16 {
        let file = self.profile.path().join("DevToolsActivePort");
        let started = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Some(port) = text.lines().next().and_then(|l| l.trim().parse().ok())
            {
                return port;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("chromium exited before opening DevTools: {status}");
            }
            assert!(started.elapsed() < WAIT, "chromium opened no DevTools port");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group (renderers, GPU and network helpers), then the
        // main process itself in case the group kill could not run.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A DevTools protocol session with one page; keeps the events it reads
/// while waiting for answers.
struct DevTools {
    socket: Socket,
    next_id: u64,
    events: Vec<Value>,
}

impl DevTools {
    async fn connect(port: u16) -> DevTools {
        let targets: Value = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
            .await
            .expect("DevTools target list")
            .json()
            .await
            .expect("JSON");
        let page = targets
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .unwrap_or_else(|| panic!("no page target in {targets}"))
            .to_owned();
        let (socket, _) = tokio_tungstenite::connect_async(page)
            .await
            .expect("DevTools WebSocket");
        DevTools {
            socket,
            next_id: 0,
            events: Vec::new(),
        }
    }

    /// Sends a command and returns its result.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({ "id": id, "method": method, "params": params });
        self.socket
            .send(Message::text(msg.to_string()))
            .await
            .expect("send to DevTools");
        loop {
            let msg = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .expect("DevTools socket open")
                .expect("DevTools message");
            let Message::Text(text) = msg else { continue };
            let value: Value = serde_json::from_str(&text).expect("DevTools JSON");
            if value["id"] == id {
                assert!(value["error"].is_null(), "{method}: {value}");
                return value["result"].clone();
            }
            if value.get("method").is_some() {
                self.events.push(value);
            }
        }
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns
    /// its value; a thrown exception fails the test.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
            )
            .await;
        assert!(
            result["exceptionDetails"].is_null(),
            "{expression}\nthrew: {}",
            result["exceptionDetails"]
        );
        result["result"]["value"].clone()
    }

    /// Evaluates `expression` until it returns a string containing `want`
    /// (or `true`, when `want` is empty), within [`WAIT`].
    async fn wait_for(&mut self, expression: &str, want: &str) -> Value {
        let started = Instant::now();
        loop {
            let value = self.eval(expression).await;
            let done = match &value {
                Value::Bool(b) => *b && want.is_empty(),
                Value::String(s) => !want.is_empty() && s.contains(want),
                _ => false,
            };
            if done {
                return value;
            }
            assert!(
                started.elapsed() < WAIT,
                "waited {WAIT:?} for {want:?} from {expression}; last value {value}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Chromium, or `None` after a skip line when it is missing; fails instead
/// under `CI`.
fn chromium_or_skip(test: &str) -> Option<PathBuf> {
    let binary = chromium();
    if binary.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is not installed; install it (apt-get install -y chromium) to run the GraphiQL browser tests"
        );
        // Straight to stderr: the test harness captures `eprintln!` of a
        // passing test, and a skip should be seen.
        let _ = writeln!(std::io::stderr(), "{test} skipped: chromium not installed");
    }
    binary
}

/// A browser showing `app`'s GraphiQL page, its editors rendered (every
/// script loaded and ran), with DevTools recording the page's network
/// events.
async fn open_graphiql(binary: &Path, app: &TestApp) -> (Browser, DevTools) {
    let mut browser = Browser::launch(binary);
    let port = browser.devtools_port().await;
    let mut devtools = DevTools::connect(port).await;
    devtools.call("Network.enable", json!({})).await;
    devtools.call("Page.enable", json!({})).await;
    devtools
        .call("Page.navigate", json!({ "url": app.url("/graphql") }))
        .await;
    devtools
        .wait_for(
            "!!(window.GraphiQL && document.querySelector('.graphiql-query-editor .CodeMirror'))",
            "",
        )
        .await;
    (browser, devtools)
}

/// Puts `token` in the Headers tab as `Authorization: Bearer …`, as a user
/// would (the test servers have a configured secret, so the page opens
/// without a header), `variables` in the Variables tab when given, and
/// `query` in the query editor: CodeMirror's own API, which is what
/// GraphiQL reads when it executes. Then, once GraphiQL has parsed the new
/// query, runs it with the execute button.
async fn run_in_graphiql(
    devtools: &mut DevTools,
    token: &str,
    query: &str,
    variables: Option<&Value>,
) {
    let header = json!({ "Authorization": format!("Bearer {token}") }).to_string();
    let variables = variables.map(|v| serde_json::to_string_pretty(v).expect("JSON"));
    let fill = format!(
        r#"(async () => {{
            const until = async (find) => {{
                for (let i = 0; i < 100; i++) {{
                    const found = find();
                    if (found) return found;
                    await new Promise((r) => setTimeout(r, 100));
                }}
                throw new Error("not found: " + find);
            }};
            const tab = async (name, label, value) => {{
                document.querySelector(`.graphiql-editor-tools button[data-name="${{name}}"]`).click();
                const editor = await until(() => document.querySelector(
                    `section.graphiql-editor-tool[aria-label="${{label}}"] .graphiql-editor:not(.hidden) .CodeMirror`));
                editor.CodeMirror.setValue(value);
            }};
            const variables = {variables};
            if (variables !== null) await tab("variables", "Variables", variables);
            await tab("headers", "Headers", {header});
            const query = document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror;
            query.setValue({query});
            // GraphiQL parses the query a moment after an edit (debounced),
            // and picks HTTP or the socket from that parse: run only once
            // it is of this text.
            await until(() => query.documentAST && query.documentAST.loc
                && query.documentAST.loc.source.body === query.getValue());
            return true;
        }})()"#,
        header = serde_json::to_string(&header).expect("JS string"),
        query = serde_json::to_string(query).expect("JS string"),
        variables = serde_json::to_string(&variables).expect("JS string"),
    );
    assert_eq!(devtools.eval(&fill).await, true);
    devtools
        .eval("document.querySelector('.graphiql-execute-button').click(), true")
        .await;
}

/// The text of GraphiQL's result panel ('' before it has one).
const RESULT_PANEL: &str = "(document.querySelector('.result-window .CodeMirror') || {CodeMirror: {getValue: () => ''}}).CodeMirror.getValue()";

#[tokio::test]
async fn graphiql_runs_a_query_in_a_browser_that_can_reach_only_pulse() {
    let Some(binary) = chromium_or_skip("graphiql browser test") else {
        return;
    };
    let app = spawn_app().await;
    let tenant = app.tenant("graphiql").await;
    let token = app.token(&tenant, Role::Admin);
    let origin = format!("http://{}", app.addr);

    let (browser, mut devtools) = open_graphiql(&binary, &app).await;
    run_in_graphiql(&mut devtools, &token, "{ me { tenant { slug } } }", None).await;

    // The answer, as GraphiQL's result panel shows it.
    let shown = devtools.wait_for(RESULT_PANEL, &tenant.slug).await;
    let shown: Value = serde_json::from_str(shown.as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("the result panel holds no JSON ({e}): {shown}"));
    assert_eq!(shown["data"]["me"]["tenant"]["slug"], tenant.slug.as_str());
    assert!(shown.get("errors").is_none(), "{shown}");

    // Every request the page made went to Pulse (fonts are inline `data:`).
    devtools.eval("true").await;
    let requested: Vec<String> = devtools
        .events
        .iter()
        .filter(|e| e["method"] == "Network.requestWillBeSent")
        .filter_map(|e| e["params"]["request"]["url"].as_str())
        .map(str::to_owned)
        .collect();
    for url in &requested {
        assert!(
            url.starts_with(&format!("{origin}/")) || url.starts_with("data:"),
            "the page fetched {url}, outside Pulse"
        );
    }
    for asset in [
        "/graphiql/graphiql-",
        "/graphiql/react-",
        "/graphiql/react-dom-",
    ] {
        let wanted = format!("{origin}{asset}");
        assert!(
            requested.iter().any(|u| u.starts_with(&wanted)),
            "{wanted}… never requested: {requested:?}"
        );
    }
    let failed: Vec<&Value> = devtools
        .events
        .iter()
        .filter(|e| e["method"] == "Network.loadingFailed")
        .collect();
    assert!(failed.is_empty(), "failed loads: {failed:?}");
    drop(browser);
}

/// GraphiQL's result panel as `sequence=N total=T ` when it holds a
/// `metricUpdated` result, else its text as it is (an error, say).
fn shown_update_js() -> String {
    format!(
        "(() => {{
            const text = {RESULT_PANEL};
            try {{
                const r = JSON.parse(text).data.metricUpdated;
                return `sequence=${{r.sequence}} total=${{r.total}} `;
            }} catch (e) {{
                return text;
            }}
        }})()"
    )
}

#[tokio::test]
async fn graphiql_runs_a_metric_updated_subscription_over_the_socket() {
    let Some(binary) = chromium_or_skip("graphiql subscription test") else {
        return;
    };
    let app = spawn_app_with(|s| {
        s.set("PULSE_LIVE_DEBOUNCE_MS", "50");
    })
    .await;
    let tenant = app.tenant("graphiql-live").await;
    let editor = app.token(&tenant, Role::Editor);
    let events = |count: usize| {
        let now = chrono::Utc::now().to_rfc3339();
        Value::Array(vec![
            json!({ "type": "graphiql_signup", "timestamp": now });
            count
        ])
    };
    app.ingest_ok(&editor, events(3)).await;

    let (browser, mut devtools) = open_graphiql(&binary, &app).await;
    let query =
        "subscription($q: MetricQueryInput!) {\n  metricUpdated(query: $q) { sequence total }\n}";
    let variables = json!({ "q": {
        "measure": "COUNT",
        "eventTypes": ["graphiql_signup"],
        "granularity": "DAY",
        "range": { "last": "7d" },
    } });
    run_in_graphiql(
        &mut devtools,
        &app.token(&tenant, Role::Viewer),
        query,
        Some(&variables),
    )
    .await;

    // The result panel as GraphiQL shows it: parsed, and printed for the
    // record (`--nocapture`).
    async fn panel(devtools: &mut DevTools) -> Value {
        let text = devtools.eval(RESULT_PANEL).await;
        let text = text.as_str().unwrap_or_default();
        println!("GraphiQL result panel:\n{text}");
        let shown: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("the result panel holds no JSON ({e}): {text}"));
        assert!(shown.get("errors").is_none(), "{shown}");
        shown
    }

    fn shown_update(shown: &Value) -> (i64, f64) {
        let r = &shown["data"]["metricUpdated"];
        (
            r["sequence"].as_i64().expect("sequence"),
            r["total"].as_f64().expect("total"),
        )
    }

    // The current result first.
    let panel_update = shown_update_js();
    devtools.wait_for(&panel_update, "sequence=1 ").await;
    let first = panel(&mut devtools).await;
    assert_eq!(shown_update(&first), (1, 3.0), "{first}");

    // Events ingested over HTTP, outside the browser: the open subscription
    // brings the new total into the same panel.
    app.ingest_ok(&editor, events(2)).await;
    devtools.wait_for(&panel_update, "sequence=2 ").await;
    let second = panel(&mut devtools).await;
    assert_eq!(shown_update(&second), (2, 5.0), "{second}");

    // It came over Pulse's socket, as GraphiQL's graphql-ws client opens it.
    let sockets: Vec<&str> = devtools
        .events
        .iter()
        .filter(|e| e["method"] == "Network.webSocketCreated")
        .filter_map(|e| e["params"]["url"].as_str())
        .collect();
    assert_eq!(
        sockets,
        [format!("ws://{}/graphql/ws", app.addr)],
        "the page's sockets"
    );
    drop(browser);
}
