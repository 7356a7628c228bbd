//! The web page (`cloud-hub/web`, a Vue single-page app built by `make web` into `web/dist`):
//! compiled into release binaries (rust-embed; debug builds read `web/dist` from disk, so a
//! rebuilt page shows without recompiling the hub) and served at `/`.
//!
//! - `/assets/*` — content-hashed files: cached for a year, `immutable`; a miss is a 404 (never
//!   the page: a stale `index.html` must not be parsed as a script).
//! - any other page path (not `/api/`, `/ngsi-ld/`, `/open311/`, `/metrics`) — the file when it
//!   exists, else `index.html` (the app routes itself); `no-cache` with an `ETag`, so a new
//!   build is seen at once and an unchanged one costs a 304.
//! - every answer carries a strict Content-Security-Policy: the page loads nothing from any
//!   other host (the county's data center may be air-gapped) and runs no inline script.
//!
//! A hub built before the page was built still starts; `/` then says how to build it.

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

#[derive(rust_embed::Embed)]
#[folder = "web/dist/"]
#[allow_missing = true]
struct Assets;

/// What the page may load: only from the hub itself. Inline styles are allowed (Vue's style
/// bindings and ECharts' tooltips set them); inline scripts and `eval` are not.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                       img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; \
                       object-src 'none'; base-uri 'self'; form-action 'self'; \
                       frame-ancestors 'none'";

/// Path prefixes that are the API's: never answered with the page.
const API_PREFIXES: [&str; 4] = ["/api/", "/ngsi-ld/", "/open311/", "/metrics"];

/// Whether `path` is the page's (a file of it, or a route the app handles itself).
pub fn is_page(path: &str) -> bool {
    !API_PREFIXES
        .iter()
        .any(|p| path.starts_with(p) || path == p.trim_end_matches('/'))
}

/// Whether the page was built into (or, in debug builds, next to) this hub.
pub fn built() -> bool {
    Assets::get("index.html").is_some()
}

/// Answers a page path (GET or HEAD); `None` for anything else (the API's 404 then).
pub fn serve(method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<Response> {
    if (method != Method::GET && method != Method::HEAD) || !is_page(uri.path()) {
        return None;
    }
    let path = uri.path().trim_start_matches('/');
    let (file, immutable) = if path.starts_with("assets/") {
        match Assets::get(path) {
            Some(f) => (f, true),
            None => return Some(not_built_or_missing(path)),
        }
    } else {
        match Assets::get(path).filter(|_| !path.is_empty()) {
            Some(f) => (f, false),
            None => match Assets::get("index.html") {
                Some(f) => (f, false),
                None => return Some(not_built_or_missing(path)),
            },
        }
    };
    let etag = format!(
        "\"{}\"",
        csb_wire::sign::hex_lower(&file.metadata.sha256_hash()[..16])
    );
    let mut h = HeaderMap::new();
    set(&mut h, header::CONTENT_SECURITY_POLICY, CSP);
    set(&mut h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(&mut h, header::REFERRER_POLICY, "same-origin");
    set(&mut h, header::X_FRAME_OPTIONS, "DENY");
    set(
        &mut h,
        header::CACHE_CONTROL,
        if immutable {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        },
    );
    set(&mut h, header::ETAG, &etag);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if fresh {
        return Some((StatusCode::NOT_MODIFIED, h).into_response());
    }
    set(&mut h, header::CONTENT_TYPE, file.metadata.mimetype());
    Some((StatusCode::OK, h, file.data.into_owned()).into_response())
}

fn set(h: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// A missing asset (404), or the page not built at all (503 naming the command).
fn not_built_or_missing(path: &str) -> Response {
    if built() {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("no such file `{}`\n", crate::http::error::clip(path)),
        )
            .into_response();
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        NOT_BUILT,
    )
        .into_response()
}

const NOT_BUILT: &str = "<!doctype html><html lang=\"zh-CN\"><meta charset=\"utf-8\">\
<title>城市超脑</title><h1>网页尚未构建 · The web page was not built</h1>\
<p>此 cloud-hub 构建时 <code>cloud-hub/web/dist</code> 不存在。在源码目录运行 \
<code>make web</code>(或 <code>make build</code>),再重新构建 cloud-hub。API 照常工作:\
<a href=\"/api/v1/openapi.json\">/api/v1/openapi.json</a>。</p>\
<p>This cloud-hub was built without <code>cloud-hub/web/dist</code>. Run <code>make web</code> \
(or <code>make build</code>) in the source tree, then rebuild cloud-hub. The API works as \
usual: <a href=\"/api/v1/openapi.json\">/api/v1/openapi.json</a>.</p></html>\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_paths_and_api_paths_are_told_apart() {
        for p in ["/", "/cases", "/map/x", "/assets/index-abc.js", "/apis"] {
            assert!(is_page(p), "{p}");
        }
        for p in [
            "/api/v1/events",
            "/api",
            "/ngsi-ld/v1/types",
            "/open311/v2/x",
            "/metrics",
        ] {
            assert!(!is_page(p), "{p}");
        }
    }

    #[test]
    fn writes_and_api_paths_are_not_the_page_s() {
        let h = HeaderMap::new();
        assert!(serve(&Method::POST, &Uri::from_static("/"), &h).is_none());
        assert!(serve(&Method::GET, &Uri::from_static("/api/v1/nope"), &h).is_none());
        let r = serve(&Method::GET, &Uri::from_static("/cases"), &h).unwrap();
        // Built or not, the page path is answered, never as the API's JSON 404.
        assert!(matches!(
            r.status(),
            StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE
        ));
        assert!(r.headers().get(header::CONTENT_SECURITY_POLICY).is_some());
    }
}
