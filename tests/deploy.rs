//! Deploy files are validated here, since there is no Docker engine or
//! cluster to run them: every config and access file in `deploy/` (and the
//! ones embedded in the Kubernetes ConfigMap) loads and validates, every YAML
//! file parses, and the Dockerfile and compose file have the shape the
//! deployment needs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use oprun::config::Config;
use oprun_shared::AccessFile;
use oprun_shared::access::grantable_capabilities;
use yaml_rust2::{Yaml, YamlLoader};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = vec![];
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p, ext));
        } else if p.extension().is_some_and(|e| e == ext) {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn check_config_and_access(config_text: &str, name: &str, access: Option<(&str, &str)>) {
    let config = Config::from_toml(config_text, name).unwrap_or_else(|e| panic!("{e}"));
    let caps: BTreeSet<String> = grantable_capabilities(&config.catalog());
    if let Some((text, access_name)) = access {
        AccessFile::from_toml(text, access_name, Some(&caps)).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn every_config_and_access_file_in_deploy_loads_and_validates() {
    let tomls = files(&deploy(), "toml");
    assert!(tomls.len() >= 4, "{tomls:?}");
    let mut configs = 0;
    for path in &tomls {
        if path.file_name().unwrap().to_string_lossy().contains("access") {
            continue; // checked with the config that names it
        }
        let config = Config::load(path).unwrap_or_else(|e| panic!("{e}"));
        let access = config.access_file.as_ref().map(|a| config.resolve(a)).expect("each config names its access file");
        let text = std::fs::read_to_string(&access).unwrap_or_else(|e| panic!("{}: {e}", access.display()));
        check_config_and_access(
            &std::fs::read_to_string(path).unwrap(),
            &path.display().to_string(),
            Some((&text, &access.display().to_string())),
        );
        configs += 1;
    }
    assert!(configs >= 2, "demo and production configs");
}

fn load_yaml(path: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(path).unwrap();
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_yaml_file_parses_and_the_configmap_holds_a_valid_config() {
    let yamls = files(&deploy(), "yaml");
    assert!(yamls.len() >= 5, "{yamls:?}");
    let mut kinds = vec![];
    for path in &yamls {
        for doc in load_yaml(path) {
            assert!(!doc.is_badvalue() && !doc.is_null(), "{}: an empty document", path.display());
            if let Some(kind) = doc["kind"].as_str() {
                kinds.push(kind.to_string());
            }
            if doc["kind"].as_str() == Some("ConfigMap") {
                let config = doc["data"]["oprun.toml"].as_str().expect("oprun.toml in the ConfigMap");
                let access = doc["data"]["access.toml"].as_str().expect("access.toml in the ConfigMap");
                check_config_and_access(config, "configmap oprun.toml", Some((access, "configmap access.toml")));
            }
            if doc["kind"].as_str() == Some("Deployment") {
                let spec = &doc["spec"]["template"]["spec"];
                assert_eq!(spec["securityContext"]["runAsNonRoot"].as_bool(), Some(true), "{}", path.display());
                let limits = &spec["containers"][0]["resources"]["limits"];
                assert!(!limits["memory"].is_badvalue(), "{}: resource limits", path.display());
            }
        }
    }
    for want in ["ConfigMap", "Secret", "Deployment", "Service"] {
        assert!(kinds.iter().any(|k| k == want), "no {want} among {kinds:?}");
    }
    // The worker's termination grace outlasts its shutdown grace (30s in the config).
    let worker = load_yaml(&deploy().join("k8s/worker.yaml"));
    let grace = worker[0]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap();
    assert!(grace > 30, "{grace}");
    let scheduler = load_yaml(&deploy().join("k8s/scheduler.yaml"));
    assert_eq!(scheduler[0]["spec"]["replicas"].as_i64(), Some(2));
    // Workers expose their metrics listener and say how to scrape it.
    let container = &worker[0]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["ports"][0]["containerPort"].as_i64(), Some(9464), "the worker's metrics port");
    assert_eq!(worker[0]["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"].as_str(), Some("9464"));
    let monitor = worker.iter().find(|d| d["kind"].as_str() == Some("ServiceMonitor")).expect("a ServiceMonitor");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"].as_str(), Some("metrics"));
    assert!(!monitor["spec"]["endpoints"][0]["authorization"]["credentials"].is_badvalue(), "it sends a token");
}

#[test]
fn the_compose_file_and_dockerfile_have_the_needed_shape() {
    let compose = load_yaml(&deploy().join("compose.yaml"));
    let services = &compose[0]["services"];
    for s in ["postgres", "redis", "migrate", "scheduler", "worker"] {
        assert!(!services[s].is_badvalue(), "compose service {s}");
    }
    // The migrate step waits for Postgres (a sibling of its environment, not in it).
    assert_eq!(services["migrate"]["depends_on"]["postgres"]["condition"].as_str(), Some("service_healthy"));
    // Workers share their provider budgets through Redis.
    assert_eq!(services["worker"]["environment"]["OPRUN_REDIS_URL"].as_str(), Some("redis://redis:6379/0"));
    assert_eq!(services["scheduler"]["deploy"]["replicas"].as_i64(), Some(2));
    assert_eq!(services["worker"]["deploy"]["replicas"].as_i64(), Some(2));
    assert_eq!(services["worker"]["expose"][0].as_str(), Some("9464"), "the worker's metrics listener");
    assert_eq!(services["migrate"]["command"][0].as_str(), Some("migrate"));
    let docker = std::fs::read_to_string(deploy().join("Dockerfile")).unwrap();
    assert_eq!(docker.lines().filter(|l| l.starts_with("FROM ")).count(), 2, "multi-stage");
    let user = docker.lines().rfind(|l| l.starts_with("USER ")).expect("a USER line");
    assert!(!user.contains("root") && !user.trim_end().ends_with(" 0"), "{user}");
}
