//! The web console: a single page served by the supervisor on its own
//! listener (`GET /`), with every asset compiled into the binary
//! (`supervisor/console/`), so it needs nothing installed and works
//! offline.
//!
//! The page talks to the supervisor only through the JSON-RPC API over a
//! WebSocket on the same port, so it can do nothing the API cannot; its
//! secret travels as a WebSocket subprotocol ([`crate::rpc::auth`]). This
//! module only serves files: `GET`/`HEAD` of an asset path, when not a
//! WebSocket upgrade, is answered here; everything else (`POST /`, the
//! upgrade on `/`) goes on to the API untouched.
//!
//! Every page answer carries a Content-Security-Policy that allows only the
//! page's own scripts, styles and WebSocket (no inline script, no other
//! origin, no framing), `X-Content-Type-Options: nosniff` and no referrer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use jsonrpsee::server::{HttpBody, HttpResponse};

/// One embedded file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// The URL path it is served at.
    pub path: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static str,
}

/// Every file of the console.
pub const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../console/index.html"),
    },
    Asset {
        path: "/console/console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../console/console.js"),
    },
    Asset {
        path: "/console/console.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../console/console.css"),
    },
    Asset {
        path: "/console/favicon.svg",
        content_type: "image/svg+xml",
        body: include_str!("../console/favicon.svg"),
    },
];

/// The policy of every console answer: the page's own files only, its
/// WebSocket to this server (`'self'` covers `ws:` of the same host), no
/// inline script or style, no plugins, no framing, no form posts.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The asset at `path`, if any (the query string is ignored).
pub fn asset(path: &str) -> Option<&'static Asset> {
    let path = path.split('?').next().unwrap_or(path);
    let path = if path == "/index.html" { "/" } else { path };
    ASSETS.iter().find(|a| a.path == path)
}

/// Serves the console's files; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConsoleLayer;

impl<S> tower::Layer<S> for ConsoleLayer {
    type Service = ConsoleService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ConsoleService { inner }
    }
}

/// The service [`ConsoleLayer`] makes.
#[derive(Debug, Clone)]
pub struct ConsoleService<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for ConsoleService<S>
where
    S: tower::Service<http::Request<B>, Response = HttpResponse>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = BoxFuture<Result<HttpResponse, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.method();
        let is_read = method == http::Method::GET || method == http::Method::HEAD;
        if is_read
            && !jsonrpsee::server::ws::is_upgrade_request(&req)
            && let Some(asset) = asset(req.uri().path())
        {
            let head_only = method == http::Method::HEAD;
            return Box::pin(async move { Ok(respond(asset, head_only)) });
        }
        Box::pin(self.inner.call(req))
    }
}

/// The answer for `asset`, with the security headers.
pub fn respond(asset: &Asset, head_only: bool) -> HttpResponse {
    use http::header;
    let body = if head_only {
        HttpBody::empty()
    } else {
        HttpBody::from(asset.body)
    };
    let mut response = HttpResponse::new(body);
    let headers = response.headers_mut();
    let fixed = [
        (header::CONTENT_TYPE, asset.content_type),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        // The files change with the binary: always ask (they are small).
        (header::CACHE_CONTROL, "no-cache"),
    ];
    for (name, value) in fixed {
        headers.insert(name, http::HeaderValue::from_static(value));
    }
    headers.insert(header::CONTENT_LENGTH, asset.body.len().into());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_the_page_names_is_served_and_no_inline_script() {
        let page = asset("/").unwrap().body;
        for a in ASSETS.iter().filter(|a| a.path != "/") {
            assert!(page.contains(a.path), "index.html does not use {}", a.path);
        }
        assert!(asset("/index.html").is_some());
        assert!(asset("/console/console.js?v=1").is_some());
        assert!(asset("/nope").is_none());
        // The policy forbids inline script and style: the page has none.
        let lower = page.to_ascii_lowercase();
        assert!(!lower.contains("<script>"), "inline script");
        assert!(!lower.contains(" style="), "inline style");
        assert!(!lower.contains("<style"), "inline style");
        let handler = lower.match_indices(" on").any(|(i, _)| {
            let rest = &lower[i + 3..];
            let name_len = rest.chars().take_while(char::is_ascii_alphabetic).count();
            name_len > 0 && rest[name_len..].starts_with('=')
        });
        assert!(!handler, "inline event handler");
    }
}
