//! Start-up configuration: a bad setting stops courier with one line naming it and
//! exit code 2.

use std::process::Command;

fn run(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_courier"))
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run courier");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn assert_refused(env: &[(&str, &str)], names: &str) {
    let (code, stderr) = run(env);
    assert_eq!(code, Some(2), "exit code for {env:?}: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(names), "{stderr:?} should name {names}");
}

#[test]
fn invalid_settings_stop_startup_with_exit_code_2() {
    assert_refused(&[], "COURIER_JWT_SECRET");
    let secret = ("COURIER_JWT_SECRET", "s");
    assert_refused(
        &[secret, ("COURIER_ACK_TIMEOUT_MS", "soon")],
        "COURIER_ACK_TIMEOUT_MS",
    );
    assert_refused(&[secret, ("COURIER_BATCH_MAX", "0")], "COURIER_BATCH_MAX");
    assert_refused(
        &[secret, ("COURIER_POLL_INTERVAL_MS", "5")],
        "COURIER_POLL_INTERVAL_MS",
    );
    assert_refused(
        &[secret, ("COURIER_REDIS_URL", "http://x")],
        "COURIER_REDIS_URL",
    );
    assert_refused(
        &[
            secret,
            ("COURIER_REDIS_URL", "redis+cluster://u:hunter2@a:7000,b"),
        ],
        "COURIER_REDIS_URL",
    );
    let (_, stderr) = run(&[
        secret,
        ("COURIER_REDIS_URL", "redis+cluster://u:hunter2@a:7000,b"),
    ]);
    assert!(!stderr.contains("hunter2"), "password masked: {stderr}");
    assert_refused(&[secret, ("COURIER_LISTEN", "nowhere")], "COURIER_LISTEN");
    assert_refused(
        &[secret, ("COURIER_DELIVER_TO_SENDER", "perhaps")],
        "COURIER_DELIVER_TO_SENDER",
    );
    assert_refused(
        &[("COURIER_JWT_PUBLIC_KEY_FILE", "/nonexistent.pem")],
        "COURIER_JWT_PUBLIC_KEY_FILE",
    );
}

#[test]
fn flags_mirror_the_environment() {
    let output = Command::new(env!("CARGO_BIN_EXE_courier"))
        .arg("--help")
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--listen",
        "--redis-url",
        "--jwt-secret",
        "--ack-timeout-ms",
        "--batch-max",
        "--dedup-window-s",
    ] {
        assert!(help.contains(flag), "--help lists {flag}");
    }
    assert!(
        !help.contains("env: COURIER_JWT_SECRET="),
        "secret values are not echoed"
    );
}

#[test]
fn api_key_value_is_not_echoed_by_help() {
    let output = Command::new(env!("CARGO_BIN_EXE_courier"))
        .arg("--help")
        .env("COURIER_API_KEY", "do-not-print-me")
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("--api-key"), "--help lists --api-key");
    assert!(!help.contains("do-not-print-me"), "the key is not echoed");
}

#[test]
fn readme_documents_every_setting_and_error_code() {
    use clap::CommandFactory;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    for arg in courier::config::Config::command().get_arguments() {
        let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        let row = format!("| `{}` | `--{long}` |", env.to_string_lossy());
        assert!(
            readme.contains(&row),
            "README configuration table lacks {row}"
        );
    }
    for code in courier::protocol::ErrorCode::ALL {
        assert!(
            readme.contains(&format!("`{}`", code.as_str())),
            "README lacks error code {}",
            code.as_str()
        );
    }
}
