//! Parameters by name (`{"name": "alpha"}`) or by position (`["alpha"]`,
//! in the order of the method table), into typed structs that refuse
//! unknown names — a typo is an error, not a silently ignored option.

use jsonrpsee::types::{ErrorObjectOwned, Params};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::methods::MethodSpec;
use crate::error::codes::INVALID_PARAMS;

/// An "invalid params" error with `message`.
pub fn invalid(message: impl Into<String>) -> ErrorObjectOwned {
    ErrorObjectOwned::owned(INVALID_PARAMS, message.into(), None::<()>)
}

/// The params as a JSON object: named as given, positional mapped onto the
/// method's parameter names, none as `{}`.
pub fn as_object(
    params: &Params<'_>,
    method: &MethodSpec,
) -> Result<Map<String, Value>, ErrorObjectOwned> {
    let Some(text) = params.as_str() else {
        return Ok(Map::new());
    };
    let value: Value =
        serde_json::from_str(text).map_err(|e| invalid(format!("params are not JSON: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        Value::Array(items) => {
            if items.len() > method.params.len() {
                return Err(invalid(format!(
                    "`{}` takes at most {} positional parameters ({}); {} given",
                    method.name,
                    method.params.len(),
                    method.params.join(", "),
                    items.len()
                )));
            }
            Ok(method
                .params
                .iter()
                .zip(items)
                // A positional `null` means "not given".
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.to_string(), v))
                .collect())
        }
        Value::Null => Ok(Map::new()),
        other => Err(invalid(format!(
            "params must be an object or an array, not {}",
            kind(&other)
        ))),
    }
}

/// The params as `T` (whose fields are the method's parameter names).
pub fn parse<T: DeserializeOwned>(
    params: &Params<'_>,
    method: &MethodSpec,
) -> Result<T, ErrorObjectOwned> {
    let map = as_object(params, method)?;
    serde_json::from_value(Value::Object(map)).map_err(|e| {
        invalid(format!(
            "invalid params for `{}`: {e} (parameters: {})",
            method.name,
            if method.params.is_empty() {
                "none".to_string()
            } else {
                method.params.join(", ")
            }
        ))
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        _ => "that",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::methods::method;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Logs {
        name: String,
        #[serde(default)]
        lines: Option<usize>,
    }

    fn params(json: &'static str) -> Params<'static> {
        Params::new(Some(json))
    }

    #[test]
    fn named_and_positional_params_mean_the_same() {
        let spec = method("get_runner_logs").unwrap();
        let named: Logs = parse(&params(r#"{"name":"a","lines":5}"#), spec).unwrap();
        let positional: Logs = parse(&params(r#"["a",5]"#), spec).unwrap();
        assert_eq!(
            (named.name, named.lines),
            (positional.name, positional.lines)
        );
        let skipped: Logs = parse(&params(r#"["a",null]"#), spec).unwrap();
        assert_eq!(skipped.lines, None);
    }

    #[test]
    fn typos_and_extra_params_are_errors_that_say_so() {
        let spec = method("get_runner_logs").unwrap();
        let err = parse::<Logs>(&params(r#"{"nme":"a"}"#), spec).unwrap_err();
        assert_eq!(err.code(), INVALID_PARAMS);
        assert!(
            err.message().contains("unknown field `nme`"),
            "{}",
            err.message()
        );
        assert!(
            err.message().contains("parameters: name, lines, since"),
            "{}",
            err.message()
        );
        let err = parse::<Logs>(&params(r#"["a",1,"x","y"]"#), spec).unwrap_err();
        assert!(
            err.message().contains("at most 3 positional"),
            "{}",
            err.message()
        );
        let err = parse::<Logs>(&params("7"), spec).unwrap_err();
        assert!(err.message().contains("not a number"), "{}", err.message());
        let err = parse::<Logs>(&Params::new(None), spec).unwrap_err();
        assert!(
            err.message().contains("missing field `name`"),
            "{}",
            err.message()
        );
    }
}
