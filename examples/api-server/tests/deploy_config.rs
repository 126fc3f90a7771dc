//! The configuration shipped for deployment (the Helm chart's default, which its ConfigMap holds
//! as is: `scripts/validate-deploy.sh` checks the rendered chart) is accepted by the limiter's own
//! parser, so a deploy never starts with a config the server would refuse.

use ratelimit_core::Config;
use ratelimit_core::Overrides;

fn embedded(path: &str, pointer: &[&str]) -> String {
    let text = std::fs::read_to_string(format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    // Manifests may hold several documents; the first one with the pointer wins.
    for document in serde_norway::Deserializer::from_str(&text) {
        let value: serde_norway::Value =
            serde::Deserialize::deserialize(document).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut node = &value;
        let mut found = true;
        for key in pointer {
            match node.get(*key) {
                Some(next) => node = next,
                None => {
                    found = false;
                    break;
                }
            }
        }
        if found && let Some(config) = node.as_str() {
            return config.to_owned();
        }
    }
    panic!("{path}: no {pointer:?}");
}

fn accepted(origin: &str, text: &str) -> Config {
    Config::from_yaml_str_with(
        text,
        Some(std::path::Path::new(origin)),
        &Overrides::default(),
    )
    .unwrap_or_else(|e| panic!("the shipped configuration is refused: {e}"))
}

#[test]
fn the_helm_chart_default_config_is_accepted() {
    let config = accepted(
        "deploy/helm/ratelimit/values.yaml",
        &embedded("deploy/helm/ratelimit/values.yaml", &["config"]),
    );
    assert!(!config.policy().windows().is_empty());
    assert!(
        config.redis().is_some(),
        "the cluster config talks to Redis"
    );
    assert!(!config.http().rules.is_empty(), "and routes by rules");
}
