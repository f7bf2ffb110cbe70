//! The Dockerfile cannot be built here (no Docker engine); this checks what can be
//! checked by reading it: the binary it copies is the crate's, built with
//! `--release --locked`; the runtime user is not root; the HEALTHCHECK hits
//! `/healthz` on the port courier listens on by default, which is the EXPOSEd one;
//! and `.dockerignore` keeps what the COPYs need.

use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The instructions of the Dockerfile: (keyword, arguments), continuation lines
/// joined, comments dropped.
fn instructions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).expect("Dockerfile");
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                joined.push(std::mem::take(&mut current));
            }
        }
    }
    joined
        .into_iter()
        .filter_map(|i| {
            let (keyword, args) = i.trim().split_once(char::is_whitespace)?;
            Some((keyword.to_uppercase(), args.trim().to_string()))
        })
        .collect()
}

/// The instructions of each stage, in order.
fn stages() -> Vec<Vec<(String, String)>> {
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    for instruction in instructions() {
        if instruction.0 == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .expect("the Dockerfile starts with FROM")
            .push(instruction);
    }
    stages
}

fn args<'a>(stage: &'a [(String, String)], keyword: &str) -> Vec<&'a str> {
    stage
        .iter()
        .filter(|(k, _)| k == keyword)
        .map(|(_, a)| a.as_str())
        .collect()
}

fn default_listen_port() -> String {
    use clap::CommandFactory;
    let command = courier::config::Config::command();
    let listen = command
        .get_arguments()
        .find(|a| a.get_id() == "listen")
        .expect("a listen setting");
    let default = listen.get_default_values()[0]
        .to_string_lossy()
        .into_owned();
    default.rsplit_once(':').expect("host:port").1.to_string()
}

#[test]
fn image_is_multi_stage_and_copies_the_crates_binary() {
    let stages = stages();
    assert!(stages.len() >= 2, "multi-stage: build, then runtime");
    let build = &stages[0];
    let runtime = stages.last().expect("runtime stage");
    let binary = Path::new(env!("CARGO_BIN_EXE_courier"))
        .file_name()
        .expect("binary name")
        .to_string_lossy()
        .into_owned();
    let workdir = args(build, "WORKDIR")
        .last()
        .copied()
        .expect("build WORKDIR");
    let built = format!("{workdir}/target/release/{binary}");
    let copy = args(runtime, "COPY")
        .into_iter()
        .find(|a| a.starts_with("--from="))
        .expect("the runtime COPYs from the build stage");
    let source = copy.split_whitespace().nth(1).expect("COPY source");
    assert_eq!(source, built, "the runtime copies the binary cargo builds");
    let destination = copy.split_whitespace().nth(2).expect("COPY destination");
    let entrypoint = args(runtime, "ENTRYPOINT").join(" ");
    assert!(
        entrypoint.contains(destination),
        "ENTRYPOINT {entrypoint} runs {destination}"
    );
}

#[test]
fn builds_are_release_and_locked() {
    let builds: Vec<String> = stages()[0]
        .iter()
        .filter(|(k, a)| k == "RUN" && a.contains("cargo build"))
        .map(|(_, a)| a.clone())
        .collect();
    assert_eq!(builds.len(), 2, "a dependency layer, then courier");
    for build in builds {
        assert!(build.contains("--release"), "{build}");
        assert!(build.contains("--locked"), "{build}");
    }
}

#[test]
fn runtime_is_small_non_root_and_healthchecked_on_the_default_port() {
    let stages = stages();
    let runtime = stages.last().expect("runtime stage");
    let base = args(runtime, "FROM")[0];
    assert!(base.contains("slim"), "small runtime base: {base}");
    let user = args(runtime, "USER")
        .last()
        .copied()
        .expect("the runtime sets USER");
    let name = user.split(':').next().unwrap_or_default();
    assert!(name != "root" && name != "0", "USER {user} is not root");

    let port = default_listen_port();
    assert_eq!(
        args(runtime, "EXPOSE"),
        [port.as_str()],
        "EXPOSE the default port"
    );
    let healthcheck = args(runtime, "HEALTHCHECK").join(" ");
    assert!(
        healthcheck.contains(&format!(":{port}/healthz")),
        "HEALTHCHECK hits /healthz on {port}: {healthcheck}"
    );
    for env in args(runtime, "ENV") {
        if let Some(listen) = env
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("COURIER_LISTEN="))
        {
            assert!(listen.ends_with(&format!(":{port}")), "ENV {listen}");
        }
    }
}

#[test]
fn dockerignore_keeps_what_the_build_copies() {
    let ignore =
        std::fs::read_to_string(Path::new(ROOT).join(".dockerignore")).expect(".dockerignore");
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(patterns.first(), Some(&"*"), "an allowlist");
    for (keyword, copy) in instructions() {
        if keyword != "COPY" || copy.starts_with("--from=") {
            continue;
        }
        let parts: Vec<&str> = copy.split_whitespace().collect();
        for source in &parts[..parts.len() - 1] {
            let allowed = format!("!{}", source.trim_end_matches('/'));
            assert!(
                patterns.contains(&allowed.as_str()),
                "{allowed} in .dockerignore"
            );
        }
    }
}
