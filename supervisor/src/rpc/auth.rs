//! The HTTP layer in front of every call: who the caller is, and whether a
//! browser may call at all.
//!
//! **Who.** `Authorization: Bearer <secret>` on an HTTP request or on the
//! WebSocket upgrade. A browser cannot set headers on a WebSocket, so the
//! upgrade may carry the secret as a subprotocol instead:
//! `Sec-WebSocket-Protocol: circles.jsonrpc, circles.bearer.<base64url(secret)>`
//! (the way Kubernetes takes bearer tokens from browsers). The token is
//! compared exactly like the header's ([`Caller::from_bearer`]: SHA-256 and
//! a constant-time comparison) and grants the same scope; the server
//! answers with `Sec-WebSocket-Protocol: circles.jsonrpc`, never echoing the
//! secret. The header wins when both are sent. A wrong secret still gets its
//! connection (each call then answers -32014), so a client learns why in
//! JSON-RPC terms rather than from a failed handshake.
//!
//! **Whether.** Browsers send any page's requests to `127.0.0.1`; two
//! attacks follow, and both are refused with HTTP 403 before any method
//! runs:
//! - *cross-site WebSocket hijacking*: a page on another site opens a
//!   WebSocket to the supervisor (browsers apply no CORS to WebSockets).
//!   A request whose `Origin` is not the `Host` it was sent to is refused.
//! - *DNS rebinding*: a site whose name now resolves to 127.0.0.1 is
//!   same-origin with itself. Without secrets (everyone is admin, loopback
//!   only) the `Host` must be a loopback name (`localhost`, `127.0.0.1`,
//!   `[::1]`, …).
//!
//! Clients outside a browser send no `Origin` and are not affected.

use circles_dispatcher::text::clip;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use http::header::{HOST, ORIGIN, SEC_WEBSOCKET_PROTOCOL};
use jsonrpsee::server::{HttpBody, HttpResponse};

use crate::secrets::{Caller, Secrets};

/// The WebSocket subprotocol of the API; the server answers with it when
/// the client offers it (browsers require an answer when they offer one).
pub const WS_PROTOCOL: &str = "circles.jsonrpc";
/// Prefix of the subprotocol that carries a bearer secret, base64url
/// without padding (subprotocols are HTTP tokens: no spaces, no `/`, `=`).
pub const WS_BEARER_PREFIX: &str = "circles.bearer.";

/// Puts the caller's [`Caller`] into each request's extensions and refuses
/// cross-origin and rebound requests; see the module docs.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    secrets: Arc<Secrets>,
}

impl AuthLayer {
    /// The layer for `secrets`.
    pub fn new(secrets: Secrets) -> Self {
        Self {
            secrets: Arc::new(secrets),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            secrets: self.secrets.clone(),
        }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    secrets: Arc<Secrets>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
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

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if let Err(refusal) = check_origin(req.headers(), !self.secrets.is_empty()) {
            // Debug, not warn: any page a browser opens can send these.
            tracing::debug!("refused a request: {refusal}");
            return Box::pin(async move { Ok(forbidden(refusal)) });
        }
        let headers = req.headers();
        let offered = offered_protocols(headers);
        let caller = match headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or(""))
        {
            Some(header) => Caller::from_header(&self.secrets, Some(header)),
            None => match bearer_protocol(&offered) {
                Some(token) => {
                    Caller::from_bearer(&self.secrets, Some(token.as_deref().unwrap_or("")))
                }
                None => Caller::from_bearer(&self.secrets, None),
            },
        };
        let answer_protocol = offered.iter().any(|p| p == WS_PROTOCOL);
        req.extensions_mut().insert(caller);
        let response = self.inner.call(req);
        Box::pin(async move {
            let mut response = response.await?;
            if answer_protocol && response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                response.headers_mut().insert(
                    SEC_WEBSOCKET_PROTOCOL,
                    http::HeaderValue::from_static(WS_PROTOCOL),
                );
            }
            Ok(response)
        })
    }
}

/// The subprotocols a WebSocket upgrade offers, in order.
fn offered_protocols(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The secret of a `circles.bearer.…` subprotocol: `None` when there is
/// none, `Some(None)` when it does not decode (a wrong secret, not a
/// missing one).
fn bearer_protocol(offered: &[String]) -> Option<Option<String>> {
    let encoded = offered
        .iter()
        .find_map(|p| p.strip_prefix(WS_BEARER_PREFIX))?;
    Some(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(encoded)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok()),
    )
}

/// Why a request is refused, if it is (see the module docs).
fn check_origin(headers: &http::HeaderMap, have_secrets: bool) -> Result<(), String> {
    let host = headers.get(HOST).and_then(|v| v.to_str().ok());
    if !have_secrets
        && let Some(host) = host
        && !is_loopback_host(host)
    {
        return Err(format!(
            "Host `{}` is not a loopback name; without secrets the supervisor answers only requests addressed to localhost or 127.0.0.1 (configure secrets to serve other names)",
            clip(host, 80)
        ));
    }
    let Some(origin) = headers.get(ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    match (authority, host) {
        (Some(a), Some(h)) if a.eq_ignore_ascii_case(h) => Ok(()),
        _ => Err(format!(
            "cross-origin request refused: Origin `{}` is not this server (Host `{}`)",
            clip(origin, 80),
            clip(host.unwrap_or("-"), 80)
        )),
    }
}

/// Whether `host` (a `Host` header: name or address, maybe a port) names
/// this machine's loopback interface.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [::1]:3030
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(name, _port)| name)
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn forbidden(message: String) -> HttpResponse {
    let mut response = HttpResponse::new(HttpBody::from(format!("{message}\n")));
    *response.status_mut() = http::StatusCode::FORBIDDEN;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn loopback_hosts() {
        for ok in [
            "localhost",
            "LOCALHOST:3030",
            "127.0.0.1",
            "127.0.0.1:3030",
            "127.1.2.3:80",
            "[::1]:3030",
            "[::1]",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example:3030",
            "localhost.evil.example",
            "10.0.0.1:3030",
            "[::2]:3030",
            "",
            "127.0.0.1.nip.io",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn origins_must_be_the_host_and_open_servers_only_answer_loopback_names() {
        let same = headers(&[
            ("host", "127.0.0.1:3030"),
            ("origin", "http://127.0.0.1:3030"),
        ]);
        assert!(check_origin(&same, false).is_ok());
        let none = headers(&[("host", "127.0.0.1:3030")]);
        assert!(check_origin(&none, false).is_ok());
        let cross = headers(&[
            ("host", "127.0.0.1:3030"),
            ("origin", "https://evil.example"),
        ]);
        let err = check_origin(&cross, true).unwrap_err();
        assert!(err.contains("cross-origin"), "{err}");
        let null = headers(&[("host", "127.0.0.1:3030"), ("origin", "null")]);
        assert!(check_origin(&null, false).is_err());
        let rebound = headers(&[
            ("host", "evil.example:3030"),
            ("origin", "http://evil.example:3030"),
        ]);
        let err = check_origin(&rebound, false).unwrap_err();
        assert!(err.contains("not a loopback name"), "{err}");
        assert!(check_origin(&rebound, true).is_ok(), "secrets guard it");
    }

    #[test]
    fn bearer_subprotocols_decode_or_count_as_wrong() {
        let token =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("s3cret/with=odd chars");
        let offered = offered_protocols(&headers(&[(
            "sec-websocket-protocol",
            &format!("circles.jsonrpc, circles.bearer.{token}"),
        )]));
        assert_eq!(offered[0], WS_PROTOCOL);
        assert_eq!(
            bearer_protocol(&offered),
            Some(Some("s3cret/with=odd chars".to_string()))
        );
        assert_eq!(
            bearer_protocol(&["circles.bearer.!!".to_string()]),
            Some(None)
        );
        assert_eq!(bearer_protocol(&[WS_PROTOCOL.to_string()]), None);
    }
}
