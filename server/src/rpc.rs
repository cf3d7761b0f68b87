//! The JSON-RPC 2.0 envelope spoken on every circle's WebSocket: parsing one
//! request per text frame, the typed calls (`play`, `fetch_nonce`,
//! `authenticate`), and the responses with the error codes of `SPEC.md`.
//!
//! Rules beyond the JSON-RPC 2.0 text, so that clients know what to expect:
//! - A batch (a JSON array) is rejected as a whole with `-32600`: the
//!   contract is one request per frame, and a client gets concurrency by
//!   sending several frames without waiting.
//! - A request without `id` is a notification: it is carried out but never
//!   answered, not even with an error, as JSON-RPC requires. A request whose
//!   envelope is invalid is always answered (with `id: null` when its id
//!   cannot be read).
//! - `params` may be given by name (`{"script": "…"}`) or by position
//!   (`["…"]`); unknown named fields are ignored.
//! - Failures of the server itself (Redis down, shutdown before a result)
//!   use the standard `-32603` internal error, so that `-32000` always means
//!   the script itself failed.

use std::collections::BTreeMap;

use circles_dispatcher::text::clip;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// Error codes: the JSON-RPC 2.0 standard ones and the server's own.
pub mod code {
    /// The frame is not JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// The JSON is not a valid request object (or is a batch).
    pub const INVALID_REQUEST: i64 = -32600;
    /// No such method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// The method exists but its params do not fit.
    pub const INVALID_PARAMS: i64 = -32602;
    /// The server failed (Redis, shutdown), not the script.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// The script ran and failed; its error text is the message and data.
    pub const EXECUTION_ERROR: i64 = -32000;
    /// `play` on a server with authentication on, before `authenticate`.
    pub const AUTHENTICATION_REQUIRED: i64 = -32001;
    /// `authenticate` with a signature that does not prove the key, or with
    /// no unexpired, unused nonce to prove it over.
    pub const INVALID_CREDENTIALS: i64 = -32002;
    /// No result within the server's play timeout.
    pub const TIMEOUT: i64 = -32003;
    /// The circle has no live worker (its heartbeat expired): answered at
    /// once, and the task is not queued.
    pub const CIRCLE_OFFLINE: i64 = -32004;
    /// The client asks too much too fast (nonces); it may retry later.
    pub const RATE_LIMITED: i64 = -32005;
}

/// The only protocol version spoken.
pub const JSONRPC_VERSION: &str = "2.0";

/// Method names.
pub mod method {
    /// Run a script on the connection's circle.
    pub const PLAY: &str = "play";
    /// Get a nonce to sign for `authenticate`.
    pub const FETCH_NONCE: &str = "fetch_nonce";
    /// Prove ownership of a key by signing a nonce.
    pub const AUTHENTICATE: &str = "authenticate";
}

/// A request id as JSON-RPC allows it: a string, a number or null.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestId {
    /// A numeric id as the client wrote it (its JSON text), so that it is
    /// echoed exactly: `100000000000000000000000000` stays that, not `1e+26`.
    Number(String),
    /// A string id.
    String(String),
    /// An explicit `null` id, or the id of an answer to a request whose id
    /// could not be read.
    Null,
}

impl Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Number(text) => RawValue::from_string(text.clone())
                .map_err(serde::ser::Error::custom)?
                .serialize(s),
            Self::String(text) => s.serialize_str(text),
            Self::Null => s.serialize_unit(),
        }
    }
}

/// A request whose envelope is valid; its method and params are not yet
/// checked (see [`Call::from_request`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// `None` for a notification, which gets no answer.
    pub id: Option<RequestId>,
    /// The method name as sent.
    pub method: String,
    /// The params as sent, if any (always an object or an array).
    pub params: Option<Value>,
}

/// An error object of a response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RpcError {
    /// One of [`code`].
    pub code: i64,
    /// A human-readable message.
    pub message: String,
    /// Extra detail (the script's error text for `-32000`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    /// An error with no data.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// Adds `data`.
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(code::INVALID_REQUEST, message)
    }
}

/// A frame that could not be read as a request, with the id to answer with.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// The request's id if it could be read, else null.
    pub id: RequestId,
    /// Why the frame was rejected.
    pub error: RpcError,
}

impl Rejected {
    fn new(id: RequestId, error: RpcError) -> Self {
        Self { id, error }
    }

    /// The error response for this frame.
    pub fn into_response(self) -> Response {
        Response::error(self.id, self.error)
    }
}

/// Reads one text frame as a request, checking the envelope only.
///
/// The frame is read as an object of raw JSON values first, so that the id
/// keeps the client's exact text and params are parsed only once.
pub fn parse_request(text: &str) -> Result<Request, Rejected> {
    let raw: &RawValue = serde_json::from_str(text).map_err(|e| {
        Rejected::new(
            RequestId::Null,
            RpcError::new(code::PARSE_ERROR, format!("parse error: {e}")),
        )
    })?;
    let mut object: BTreeMap<String, &RawValue> = match raw.get().as_bytes().first() {
        Some(b'{') => serde_json::from_str(raw.get()).map_err(|e| {
            Rejected::new(
                RequestId::Null,
                RpcError::new(code::PARSE_ERROR, format!("parse error: {e}")),
            )
        })?,
        Some(b'[') => {
            return Err(Rejected::new(
                RequestId::Null,
                RpcError::invalid_request(
                    "batch requests are not supported: send one request object per frame",
                ),
            ));
        }
        _ => {
            return Err(Rejected::new(
                RequestId::Null,
                RpcError::invalid_request(format!(
                    "a request must be a JSON object, got {}",
                    raw_type(raw)
                )),
            ));
        }
    };

    let id = match object.remove("id") {
        None => None,
        Some(raw) => Some(match raw.get().as_bytes()[0] {
            b'n' => RequestId::Null,
            b'"' => RequestId::String(serde_json::from_str(raw.get()).map_err(|e| {
                Rejected::new(
                    RequestId::Null,
                    RpcError::invalid_request(format!("`id` is not a valid string: {e}")),
                )
            })?),
            // Echoed as sent, but only if clients can read it back: a
            // number no JSON parser can hold (`1e400`) is refused.
            b'-' | b'0'..=b'9' if serde_json::from_str::<serde_json::Number>(raw.get()).is_ok() => {
                RequestId::Number(raw.get().to_string())
            }
            b'-' | b'0'..=b'9' => {
                return Err(Rejected::new(
                    RequestId::Null,
                    RpcError::invalid_request(format!(
                        "`id` {} is a number out of range",
                        clip(raw.get(), 40)
                    )),
                ));
            }
            _ => {
                return Err(Rejected::new(
                    RequestId::Null,
                    RpcError::invalid_request(format!(
                        "`id` must be a string, a number or null, got {}",
                        raw_type(raw)
                    )),
                ));
            }
        }),
    };
    let reject = |message: String| {
        Rejected::new(
            id.clone().unwrap_or(RequestId::Null),
            RpcError::invalid_request(message),
        )
    };
    let value = |raw: &RawValue| -> Result<Value, Rejected> {
        // The first parse checked the syntax; numbers out of range are only
        // found here.
        serde_json::from_str(raw.get()).map_err(|e| {
            Rejected::new(
                id.clone().unwrap_or(RequestId::Null),
                RpcError::new(code::PARSE_ERROR, format!("parse error: {e}")),
            )
        })
    };

    match object.remove("jsonrpc").map(value).transpose()? {
        Some(Value::String(v)) if v == JSONRPC_VERSION => {}
        Some(other) => {
            return Err(reject(format!(
                "`jsonrpc` must be \"2.0\", got {}",
                clip(&other.to_string(), 64)
            )));
        }
        None => {
            return Err(reject(
                "`jsonrpc` is missing; it must be \"2.0\"".to_string(),
            ));
        }
    }
    let method = match object.remove("method").map(value).transpose()? {
        Some(Value::String(method)) => method,
        Some(other) => {
            return Err(reject(format!(
                "`method` must be a string, got {}",
                json_type(&other)
            )));
        }
        None => return Err(reject("`method` is missing".to_string())),
    };
    let params = match object.remove("params").map(value).transpose()? {
        None => None,
        Some(params @ (Value::Object(_) | Value::Array(_))) => Some(params),
        Some(other) => {
            return Err(reject(format!(
                "`params` must be an object or an array, got {}",
                json_type(&other)
            )));
        }
    };
    Ok(Request { id, method, params })
}

/// The JSON type of a raw value, named for an error message.
fn raw_type(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        _ => "a number",
    }
}

/// `play` params.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PlayParams {
    /// Rhai source to run on the circle.
    pub script: String,
}

/// `fetch_nonce` params.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FetchNonceParams {
    /// The key that will sign the nonce (hex, either SEC1 form).
    pub pubkey: String,
}

/// `authenticate` params.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AuthenticateParams {
    /// The key that signed the nonce (hex, either SEC1 form).
    pub pubkey: String,
    /// 65-byte `r‖s‖v` signature in hex, optionally `0x`-prefixed.
    pub signature: String,
}

/// A request's method with its params checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// `play`
    Play(PlayParams),
    /// `fetch_nonce`
    FetchNonce(FetchNonceParams),
    /// `authenticate`
    Authenticate(AuthenticateParams),
}

impl Call {
    /// Checks the method name (`-32601`) and then its params (`-32602`).
    pub fn from_request(method: &str, params: Option<Value>) -> Result<Self, RpcError> {
        match method {
            method::PLAY => {
                typed_params(method, params, r#"{"script": "<rhai source>"}"#).map(Call::Play)
            }
            method::FETCH_NONCE => {
                typed_params(method, params, r#"{"pubkey": "<hex>"}"#).map(Call::FetchNonce)
            }
            method::AUTHENTICATE => typed_params(
                method,
                params,
                r#"{"pubkey": "<hex>", "signature": "<hex>"}"#,
            )
            .map(Call::Authenticate),
            other => Err(RpcError::new(
                code::METHOD_NOT_FOUND,
                format!(
                    "method `{}` not found; the methods are `{}`, `{}` and `{}`",
                    clip(other, 64),
                    method::PLAY,
                    method::FETCH_NONCE,
                    method::AUTHENTICATE
                ),
            )),
        }
    }
}

fn typed_params<T: serde::de::DeserializeOwned>(
    method: &str,
    params: Option<Value>,
    expected: &str,
) -> Result<T, RpcError> {
    let invalid = |reason: String| {
        RpcError::new(
            code::INVALID_PARAMS,
            format!("invalid params for `{method}`: {reason}; expected {expected}"),
        )
    };
    let params = params.ok_or_else(|| invalid("params are missing".to_string()))?;
    serde_json::from_value(params).map_err(|e| invalid(e.to_string()))
}

/// One response frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Response {
    jsonrpc: &'static str,
    id: RequestId,
    #[serde(flatten)]
    outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Outcome {
    Result(Value),
    Error(RpcError),
}

impl Response {
    /// A success.
    pub fn result(id: RequestId, result: Value) -> Self {
        Self {
            jsonrpc: JSONRPC_VERSION,
            id,
            outcome: Outcome::Result(result),
        }
    }

    /// A failure.
    pub fn error(id: RequestId, error: RpcError) -> Self {
        Self {
            jsonrpc: JSONRPC_VERSION,
            id,
            outcome: Outcome::Error(error),
        }
    }

    /// A success or a failure.
    pub fn from_outcome(id: RequestId, outcome: Result<Value, RpcError>) -> Self {
        match outcome {
            Ok(result) => Self::result(id, result),
            Err(error) => Self::error(id, error),
        }
    }

    /// The frame text.
    pub fn to_json(&self) -> String {
        // Every field is a plain JSON value or string: serialising cannot fail.
        serde_json::to_string(self).expect("a response always serialises")
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rejected(text: &str) -> Rejected {
        parse_request(text).expect_err(text)
    }

    #[test]
    fn a_valid_request_keeps_its_id_method_and_params() {
        let req =
            parse_request(r#"{"jsonrpc":"2.0","id":7,"method":"play","params":{"script":"1"}}"#)
                .unwrap();
        assert_eq!(req.id, Some(RequestId::Number("7".into())));
        assert_eq!(req.method, "play");
        assert_eq!(req.params, Some(json!({"script": "1"})));

        let req = parse_request(r#"{"jsonrpc":"2.0","id":"a","method":"x"}"#).unwrap();
        assert_eq!(req.id, Some(RequestId::String("a".into())));
        assert_eq!(req.params, None);

        let req = parse_request(r#"{"jsonrpc":"2.0","id":null,"method":"x"}"#).unwrap();
        assert_eq!(req.id, Some(RequestId::Null));
    }

    #[test]
    fn a_request_without_id_is_a_notification() {
        let req = parse_request(r#"{"jsonrpc":"2.0","method":"play","params":["1"]}"#).unwrap();
        assert_eq!(req.id, None);
    }

    #[test]
    fn garbage_is_a_parse_error_with_null_id() {
        for text in [
            "",
            "{",
            "not json",
            r#"{"jsonrpc":"2.0","id":1,"method":"play""#,
        ] {
            let r = rejected(text);
            assert_eq!(r.error.code, code::PARSE_ERROR, "{text}");
            assert_eq!(r.id, RequestId::Null);
        }
    }

    #[test]
    fn invalid_envelopes_are_invalid_requests() {
        let cases = [
            // (frame, id expected in the answer)
            (r#"[]"#, RequestId::Null),
            (
                r#"[{"jsonrpc":"2.0","id":1,"method":"play"}]"#,
                RequestId::Null,
            ),
            (r#"42"#, RequestId::Null),
            (r#""play""#, RequestId::Null),
            (
                r#"{"jsonrpc":"2.0","id":{},"method":"play"}"#,
                RequestId::Null,
            ),
            (
                r#"{"jsonrpc":"2.0","id":true,"method":"play"}"#,
                RequestId::Null,
            ),
            (r#"{"id":3,"method":"play"}"#, RequestId::Number("3".into())),
            (
                r#"{"jsonrpc":"1.0","id":3,"method":"play"}"#,
                RequestId::Number("3".into()),
            ),
            (
                r#"{"jsonrpc":2.0,"id":3,"method":"play"}"#,
                RequestId::Number("3".into()),
            ),
            (
                r#"{"jsonrpc":"2.0","id":"x"}"#,
                RequestId::String("x".into()),
            ),
            (
                r#"{"jsonrpc":"2.0","id":"x","method":1}"#,
                RequestId::String("x".into()),
            ),
            (
                r#"{"jsonrpc":"2.0","id":4,"method":"play","params":"1"}"#,
                RequestId::Number("4".into()),
            ),
        ];
        for (text, id) in cases {
            let r = rejected(text);
            assert_eq!(r.error.code, code::INVALID_REQUEST, "{text}: {:?}", r.error);
            assert_eq!(r.id, id, "{text}");
        }
    }

    #[test]
    fn batches_are_rejected_with_a_reason() {
        let r = rejected(r#"[{"jsonrpc":"2.0","id":1,"method":"play"}]"#);
        assert!(r.error.message.contains("batch"), "{}", r.error.message);
    }

    #[test]
    fn calls_check_method_then_params() {
        assert_eq!(
            Call::from_request("play", Some(json!({"script": "40 + 2"}))).unwrap(),
            Call::Play(PlayParams {
                script: "40 + 2".into()
            })
        );
        // By position as well as by name.
        assert_eq!(
            Call::from_request("authenticate", Some(json!(["02ab", "0x00"]))).unwrap(),
            Call::Authenticate(AuthenticateParams {
                pubkey: "02ab".into(),
                signature: "0x00".into()
            })
        );
        assert_eq!(
            Call::from_request("fetch_nonce", Some(json!({"pubkey": "k", "extra": 1}))).unwrap(),
            Call::FetchNonce(FetchNonceParams { pubkey: "k".into() })
        );

        let err = Call::from_request("nope", Some(json!({}))).unwrap_err();
        assert_eq!(err.code, code::METHOD_NOT_FOUND);
        assert!(err.message.contains("`nope`"), "{}", err.message);
        // An unknown method is reported as such even when its params are bad.
        assert_eq!(
            Call::from_request("nope", None).unwrap_err().code,
            code::METHOD_NOT_FOUND
        );

        for params in [
            None,
            Some(json!({})),
            Some(json!({"script": 42})),
            Some(json!({"scirpt": "1"})),
            Some(json!([])),
        ] {
            let err = Call::from_request("play", params.clone()).unwrap_err();
            assert_eq!(err.code, code::INVALID_PARAMS, "{params:?}");
            assert!(err.message.contains("`play`"), "{}", err.message);
            assert!(err.message.contains("script"), "{}", err.message);
        }
        let err = Call::from_request("authenticate", Some(json!({"pubkey": "k"}))).unwrap_err();
        assert_eq!(err.code, code::INVALID_PARAMS);
        assert!(err.message.contains("signature"), "{}", err.message);
    }

    #[test]
    fn responses_have_the_json_rpc_shape() {
        let ok = Response::result(RequestId::Number("1".into()), json!("42"));
        assert_eq!(
            serde_json::from_str::<Value>(&ok.to_json()).unwrap(),
            json!({"jsonrpc": "2.0", "id": 1, "result": "42"})
        );
        let err = Response::error(
            RequestId::Null,
            RpcError::new(code::EXECUTION_ERROR, "boom").with_data(json!("boom")),
        );
        assert_eq!(
            serde_json::from_str::<Value>(&err.to_json()).unwrap(),
            json!({"jsonrpc": "2.0", "id": null,
                   "error": {"code": -32000, "message": "boom", "data": "boom"}})
        );
        let no_data = Response::error(
            RequestId::String("s".into()),
            RpcError::new(code::TIMEOUT, "late"),
        );
        assert_eq!(
            serde_json::from_str::<Value>(&no_data.to_json()).unwrap(),
            json!({"jsonrpc": "2.0", "id": "s", "error": {"code": -32003, "message": "late"}})
        );
    }

    #[test]
    fn fractional_and_large_ids_are_echoed_exactly() {
        let req =
            parse_request(r#"{"jsonrpc":"2.0","id":18446744073709551615,"method":"x"}"#).unwrap();
        let id = req.id.unwrap();
        let text = Response::result(id, json!(1)).to_json();
        assert!(text.contains("18446744073709551615"), "{text}");
    }

    #[test]
    fn numeric_ids_are_echoed_exactly_as_sent() {
        // Regression (issue 7, item 11): a 26-digit id came back as 1e+26.
        for id in [
            "100000000000000000000000000",
            "-0",
            "1.50",
            "7e3",
            "12345678901234567890123",
        ] {
            let req = parse_request(&format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"play"}}"#))
                .unwrap();
            assert_eq!(req.id, Some(RequestId::Number(id.into())));
            let answer = Response::result(req.id.unwrap(), json!("42")).to_json();
            assert_eq!(
                answer,
                format!(r#"{{"jsonrpc":"2.0","id":{id},"result":"42"}}"#)
            );
        }
        let req = parse_request(r#"{"jsonrpc":"2.0","id":"a\"b","method":"play"}"#).unwrap();
        assert_eq!(req.id, Some(RequestId::String("a\"b".into())));
    }

    #[test]
    fn numbers_no_parser_can_hold_are_refused_not_echoed() {
        // Found by circles-fuzz: `0.1e310` was echoed, and the answer was
        // not valid JSON to serde_json (JavaScript would read Infinity).
        let r = rejected(r#"{"jsonrpc":"2.0","id":0.1e310,"method":"play"}"#);
        assert_eq!(r.id, RequestId::Null);
        assert_eq!(r.error.code, code::INVALID_REQUEST);
        let r = rejected(r#"{"jsonrpc":"2.0","id":1,"method":"play","params":[1e999]}"#);
        assert_eq!(r.id, RequestId::Number("1".into()));
        assert_eq!(r.error.code, code::PARSE_ERROR);
    }

    #[test]
    fn echoed_values_are_bounded() {
        let long = "m".repeat(100_000);
        let err = Call::from_request(&long, None).unwrap_err();
        assert!(err.message.len() < 300, "{}", err.message.len());
        let frame = format!(r#"{{"jsonrpc":"{long}","id":1,"method":"play"}}"#);
        assert!(rejected(&frame).error.message.len() < 300);
    }
}
