//! `supervisor/openrpc.json` against the served methods and against the
//! OpenRPC meta-schema (vendored, see `tests/fixtures/README.md`).

use std::collections::BTreeSet;

use circles_supervisor::rpc::methods::{METHODS, UNSUBSCRIBE_LOGS};
use circles_supervisor::rpc::{OPENRPC_DOCUMENT, served_method_names};
use serde_json::Value;

fn document() -> Value {
    serde_json::from_str(OPENRPC_DOCUMENT).expect("openrpc.json is JSON")
}

#[tokio::test]
async fn every_served_method_is_documented_and_every_documented_one_served() {
    let doc = document();
    let documented: BTreeSet<String> = doc["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let supervisor = circles_supervisor::SupervisorBuilder::new()
        .data_dir(tmp.path())
        .manager(circles_supervisor::ManagerKind::Child)
        .build()
        .await
        .unwrap();
    let served: BTreeSet<String> = served_method_names(supervisor)
        .into_iter()
        // jsonrpsee's own half of the subscription.
        .filter(|n| n != UNSUBSCRIBE_LOGS)
        .collect();
    let table: BTreeSet<String> = METHODS.iter().map(|m| m.name.to_string()).collect();
    assert_eq!(
        served.difference(&documented).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "served but not in openrpc.json"
    );
    assert_eq!(
        documented.difference(&served).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "in openrpc.json but not served"
    );
    assert_eq!(served, table);
    // The SPEC's methods, by name.
    for spec_method in [
        "rpc.discover",
        "add_runner",
        "remove_runner",
        "list_runners",
        "start_runner",
        "stop_runner",
        "restart_runner",
        "get_runner_status",
        "get_runner_logs",
        "queue_job_to_runner",
        "run_job",
        "get_job_status",
        "get_all_runner_status",
        "start_all",
        "stop_all",
        "get_all_status",
        "subscribe_runner_logs",
    ] {
        assert!(served.contains(spec_method), "{spec_method} is not served");
    }
}

#[test]
fn documented_params_are_the_positional_order_of_the_method_table() {
    let doc = document();
    for m in METHODS {
        let entry = doc["methods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == m.name)
            .unwrap_or_else(|| panic!("{} not documented", m.name));
        let names: Vec<&str> = entry["params"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, m.params, "params of {}", m.name);
    }
    // Every SPEC error code is documented.
    let codes: BTreeSet<i64> = doc["components"]["errors"]
        .as_object()
        .unwrap()
        .values()
        .map(|e| e["code"].as_i64().unwrap())
        .collect();
    for code in -32016..=-32010 {
        assert!(codes.contains(&code), "error {code} not documented");
    }
}

/// Serves the vendored `https://meta.json-schema.tools` schema; nothing else.
struct VendoredSchemas;

impl jsonschema::Retrieve for VendoredSchemas {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        if uri.as_str().trim_end_matches('/') == "https://meta.json-schema.tools" {
            let text = include_str!("fixtures/json-schema-tools-meta-schema-1.8.0.json");
            return Ok(serde_json::from_str(text)?);
        }
        Err(format!("{uri} is not vendored").into())
    }
}

fn meta_validator() -> jsonschema::Validator {
    let meta: Value =
        serde_json::from_str(include_str!("fixtures/open-rpc-meta-schema-1.14.9.json")).unwrap();
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft7)
        .with_retriever(VendoredSchemas)
        .build(&meta)
        .expect("the meta-schema compiles")
}

#[test]
fn the_document_is_valid_openrpc() {
    let validator = meta_validator();
    let doc = document();
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "openrpc.json is not valid OpenRPC:\n{}",
        errors.join("\n")
    );
    // The validator does reject a broken document (a method without a name,
    // a result without a schema), so the check above can fail.
    let mut broken = doc.clone();
    broken["methods"][0].as_object_mut().unwrap().remove("name");
    assert!(!validator.is_valid(&broken));
    let mut broken = doc;
    broken["openrpc"] = "0.9".into();
    assert!(!validator.is_valid(&broken));
}
