//! GraphiQL served entirely by Pulse: the page `GET /graphql` gives
//! browsers, and the pinned GraphiQL and React files it loads, embedded in
//! the binary from `assets/graphiql/` (its README lists versions, checksums
//! and how to fetch them again). Nothing comes from another host, so the
//! page works on a machine without internet access.
//!
//! In the embedded demo on a loopback listener, the page opens with the
//! demo `ADMIN` header already in GraphiQL's *Headers* tab: [`may_prefill`]
//! holds that rule, `serve` offers the token through
//! [`App::offer_demo_token`](crate::app::App::offer_demo_token), and
//! [`page`] puts it in only for a request that names the server by a
//! loopback address.

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;

use crate::app::App;
use crate::config::Config;

/// Where the assets are served; the page refers to them under it.
pub const ASSET_PREFIX: &str = "/graphiql/";

// The URL names carry the package versions: the files are cached for a
// year, so an upgrade must change the URL rather than the bytes behind it.
const REACT_JS: &str = "react-18.3.1.production.min.js";
const REACT_DOM_JS: &str = "react-dom-18.3.1.production.min.js";
const GRAPHIQL_JS: &str = "graphiql-3.9.0.min.js";
const GRAPHIQL_CSS: &str = "graphiql-3.9.0.min.css";

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const STYLESHEET: &str = "text/css; charset=utf-8";

/// The assets are pinned and their URLs versioned, so they never change.
const ASSET_CACHE: &str = "public, max-age=31536000, immutable";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const ASSETS: [Asset; 4] = [
    Asset {
        name: REACT_JS,
        content_type: JAVASCRIPT,
        bytes: include_bytes!("../../assets/graphiql/react.production.min.js"),
    },
    Asset {
        name: REACT_DOM_JS,
        content_type: JAVASCRIPT,
        bytes: include_bytes!("../../assets/graphiql/react-dom.production.min.js"),
    },
    Asset {
        name: GRAPHIQL_JS,
        content_type: JAVASCRIPT,
        bytes: include_bytes!("../../assets/graphiql/graphiql.min.js"),
    },
    Asset {
        name: GRAPHIQL_CSS,
        content_type: STYLESHEET,
        bytes: include_bytes!("../../assets/graphiql/graphiql.min.css"),
    },
];

/// `GET /graphiql/{file}`: one of the embedded files, or the JSON 404 every
/// unknown route gets.
pub async fn asset(Path(file): Path<String>) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == file) else {
        return super::ops::not_found().await;
    };
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, ASSET_CACHE),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        asset.bytes,
    )
        .into_response()
}

/// Whether GraphiQL may open with the demo ADMIN token: only in the demo
/// (seeding not off), only with the generated development secret (a
/// configured `PULSE_JWT_SECRET` means a real deployment, whose tokens must
/// not sit in a page), and only on a loopback listener (nobody else can
/// load the page).
pub fn may_prefill(config: &Config) -> bool {
    config.demo.is_on() && config.jwt.secret.is_none() && config.listen.ip().is_loopback()
}

/// Whether the request names the server by a loopback address or
/// `localhost`. A page fetched under any other name, such as a site that
/// rebinds its own DNS name to 127.0.0.1, must not carry the token, even
/// though the connection itself is local.
fn addressed_as_loopback(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    match url::Url::parse(&format!("http://{host}/")) {
        Ok(u) => match u.host() {
            Some(url::Host::Domain(name)) => name == "localhost",
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        },
        Err(_) => false,
    }
}

/// The GraphiQL page; with the demo token when one was offered and the
/// request is addressed to loopback.
pub fn page(app: &App, headers: &HeaderMap) -> Response {
    let token = app.demo_token().filter(|_| addressed_as_loopback(headers));
    let mut response = Html(render(token)).into_response();
    // The page may carry a token; nothing on the way should keep it.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `value` as a JavaScript literal safe inside an HTML `<script>` element:
/// JSON (a subset of JavaScript), with `<`, `>` and `&` escaped so no
/// `</script>` or `<!--` can end or change the element, and the two line
/// separators older engines reject in string literals escaped too. All of
/// them can only occur inside JSON strings, where `\uXXXX` means the same.
fn script_literal(value: &serde_json::Value) -> String {
    let mut out = String::new();
    for c in value.to_string().chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

fn render(token: Option<&str>) -> String {
    let headers = token.map(|t| {
        let header = json!({ "Authorization": format!("Bearer {t}") });
        serde_json::to_string_pretty(&header).unwrap_or_default()
    });
    let config = script_literal(&json!({
        "url": "/graphql",
        "subscriptionPath": "/graphql/ws",
        "defaultHeaders": headers,
    }));
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Pulse GraphiQL</title>
<link rel="stylesheet" href="{prefix}{GRAPHIQL_CSS}">
<style>html, body, #graphiql {{ height: 100%; margin: 0; }}</style>
</head>
<body>
<div id="graphiql">Loading GraphiQL…</div>
<script src="{prefix}{REACT_JS}"></script>
<script src="{prefix}{REACT_DOM_JS}"></script>
<script src="{prefix}{GRAPHIQL_JS}"></script>
<script>
(function () {{
  "use strict";
  var config = {config};
  // graphql-ws wants an absolute ws:// or wss:// URL on this same host.
  var ws = new URL(config.subscriptionPath, window.location.href);
  ws.protocol = ws.protocol === "https:" ? "wss:" : "ws:";
  var props = {{
    fetcher: GraphiQL.createFetcher({{ url: config.url, subscriptionUrl: ws.href }}),
  }};
  if (config.defaultHeaders) {{
    props.defaultHeaders = config.defaultHeaders;
    props.defaultEditorToolsVisibility = "headers";
  }}
  ReactDOM.createRoot(document.getElementById("graphiql"))
    .render(React.createElement(GraphiQL, props));
}})();
</script>
</body>
</html>
"#,
        prefix = ASSET_PREFIX,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Config {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned()).expect("valid config")
    }

    #[test]
    fn the_demo_token_is_offered_only_in_the_embedded_demo_on_loopback() {
        assert!(may_prefill(&config(&[])), "the embedded default");
        assert!(may_prefill(&config(&[("PULSE_LISTEN", "[::1]:8080")])));
        assert!(may_prefill(&config(&[("PULSE_DEMO", "1")])));

        let refused = [
            vec![("PULSE_JWT_SECRET", "a-real-secret-0123456789")],
            vec![("PULSE_LISTEN", "0.0.0.0:8080")],
            vec![("PULSE_LISTEN", "192.168.1.10:8080")],
            vec![("PULSE_LISTEN", "[::]:8080")],
            vec![("PULSE_DEMO", "0")],
            // An explicit database turns the demo off unless asked.
            vec![("PULSE_DATABASE_URL", "postgres://localhost/pulse")],
        ];
        for vars in refused {
            assert!(!may_prefill(&config(&vars)), "{vars:?}");
        }
    }

    #[test]
    fn only_requests_addressed_to_loopback_get_the_token() {
        let host = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_str(value).expect("header"));
            h
        };
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
        ] {
            assert!(addressed_as_loopback(&host(ok)), "{ok}");
        }
        for no in [
            "evil.example:8080",
            "localhost.evil.example",
            "10.0.0.1:8080",
            "127.0.0.1@evil.example",
            "",
        ] {
            assert!(!addressed_as_loopback(&host(no)), "{no}");
        }
        assert!(!addressed_as_loopback(&HeaderMap::new()));
    }

    #[test]
    fn the_page_carries_the_header_only_when_given_a_token() {
        let without = render(None);
        assert!(!without.contains("Bearer"), "{without}");
        let with = render(Some("abc.def.ghi"));
        assert!(
            with.contains(
                r#""defaultHeaders":"{\n  \"Authorization\": \"Bearer abc.def.ghi\"\n}""#
            ),
            "{with}"
        );
    }

    #[test]
    fn injected_text_cannot_close_the_script_element() {
        let page = render(Some("</script><script>alert(1)</script><!--\u{2028}"));
        let script = page
            .split("var config = ")
            .nth(1)
            .and_then(|rest| rest.split(";\n").next())
            .expect("the config literal");
        assert!(!script.contains('<') && !script.contains('>'), "{script}");
        assert!(!script.contains('\u{2028}'), "{script}");
        // Still the same value once parsed.
        let parsed: serde_json::Value = serde_json::from_str(script).expect("JSON");
        assert_eq!(
            parsed["defaultHeaders"],
            "{\n  \"Authorization\": \"Bearer </script><script>alert(1)</script><!--\u{2028}\"\n}"
        );
        assert_eq!(page.matches("</script>").count(), 4, "{page}");
    }

    #[test]
    fn the_page_loads_only_embedded_assets() {
        let page = render(None);
        let mut referenced = 0;
        for attr in ["src=\"", "href=\""] {
            for part in page.split(attr).skip(1) {
                let url = part.split('"').next().unwrap_or_default();
                let name = url.strip_prefix(ASSET_PREFIX).unwrap_or_else(|| {
                    panic!("{url} is not under {ASSET_PREFIX}");
                });
                assert!(ASSETS.iter().any(|a| a.name == name), "{name}");
                referenced += 1;
            }
        }
        assert_eq!(referenced, ASSETS.len());
        assert!(!page.contains("http://") && !page.contains("https://"));
    }

    /// The vendored README's checksum table is what is actually embedded.
    #[test]
    fn the_embedded_files_match_the_checksums_in_the_vendored_readme() {
        use sha2::{Digest, Sha256};
        let readme = include_str!("../../assets/graphiql/README.md");
        let vendored = [
            ("react.production.min.js", REACT_JS),
            ("react-dom.production.min.js", REACT_DOM_JS),
            ("graphiql.min.js", GRAPHIQL_JS),
            ("graphiql.min.css", GRAPHIQL_CSS),
        ];
        assert_eq!(vendored.len(), ASSETS.len());
        for (file, served_as) in vendored {
            let asset = ASSETS.iter().find(|a| a.name == served_as).expect("served");
            let sum: String = Sha256::digest(asset.bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `{file}` |")))
                .unwrap_or_else(|| panic!("no README row for {file}"));
            assert!(row.contains(&sum), "{file}: sha256 {sum}, README: {row}");
        }
    }
}
