//! `courier-testenv` speaks TESTENV-SPEC.md: one JSON line when ready, one JSON answer
//! per command, courier started again on the same port, and nothing left running
//! once it exits (on `quit`, on SIGTERM, and when it is itself killed).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use courier_testkit::{Wait, WsClient, answers_healthz, find_courier_bin};
use serde_json::{Value, json};

/// How long starting Redis and courier, or one command, may take.
const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// A running `courier-testenv` and its stdout, line by line.
struct Testenv {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    ready: Value,
}

impl Testenv {
    fn start() -> Self {
        let bin = find_courier_bin().expect("courier's binary (cargo build -p courier)");
        let mut child = Command::new(env!("CARGO_BIN_EXE_courier-testenv"))
            .args(["--courier-bin", &bin.to_string_lossy()])
            .args(["--env", "COURIER_ACK_TIMEOUT_MS=2000"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn courier-testenv");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let mut env = Self {
            child,
            stdin,
            lines,
            ready: Value::Null,
        };
        env.ready = env.next_line("the ready line");
        env
    }

    fn next_line(&mut self, what: &str) -> Value {
        let line = self
            .lines
            .recv_timeout(ANSWER_WITHIN)
            .unwrap_or_else(|_| panic!("courier-testenv sent no {what}"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{what} {line:?}: {e}"))
    }

    /// Sends one command line and returns its answer.
    fn command(&mut self, line: &str) -> Value {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write a command");
        self.next_line(&format!("answer to {line:?}"))
    }

    /// Sends a command that must succeed.
    fn ok(&mut self, line: &str) -> Value {
        let answer = self.command(line);
        assert_eq!(answer["ok"], true, "{line}: {answer}");
        answer
    }

    /// The pids of the Redis servers (they say so themselves; a cluster answers INFO
    /// from every node, as an object by node).
    fn redis_pids(&mut self) -> Vec<u32> {
        let reply = self.ok("redis INFO server")["reply"].clone();
        let infos: Vec<&str> = match &reply {
            Value::String(info) => vec![info.as_str()],
            Value::Object(by_node) => by_node.values().filter_map(Value::as_str).collect(),
            other => panic!("INFO server answered {other}"),
        };
        let pids: Vec<u32> = infos
            .iter()
            .filter_map(|info| info.lines().find_map(|l| l.strip_prefix("process_id:")))
            .filter_map(|pid| pid.trim().parse().ok())
            .collect();
        assert_eq!(pids.len(), infos.len(), "process_id in every INFO server");
        pids
    }

    fn courier_addr(&self) -> std::net::SocketAddr {
        let http = self.ready["http"].as_str().expect("http");
        http.trim_start_matches("http://")
            .parse()
            .expect("an address")
    }

    /// Waits for the process to exit; its exit code.
    fn wait_exit(&mut self) -> Option<i32> {
        let mut status = None;
        Wait::new("courier-testenv to exit").until_blocking(|| {
            status = self.child.try_wait().expect("try_wait");
            status.is_some()
        });
        status.and_then(|s| s.code())
    }
}

impl Drop for Testenv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a process is gone (not even a zombie left unreaped).
fn gone(pid: u32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn wait_until_gone(pids: &[u32]) {
    Wait::new("every process courier-testenv started to be gone")
        .until_blocking(|| pids.iter().all(|&pid| gone(pid)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protocol_runs_courier_and_redis_and_quit_leaves_nothing_behind() {
    let mut env = Testenv::start();
    let ready = env.ready.clone();
    assert_eq!(ready["secret"], "test-secret");
    let ws = ready["ws"].as_str().expect("ws").to_string();
    assert_eq!(ws, format!("ws://{}/ws", env.courier_addr()));
    assert!(ready["redis"].as_str().expect("redis").starts_with("redis"));
    let first_pid = ready["pid"].as_u64().expect("pid") as u32;
    let redis_pids = env.redis_pids();

    let alice = env.ok("token 1 alice")["token"]
        .as_str()
        .expect("token")
        .to_string();
    let bob = env.ok("token 2 bob 600")["token"]
        .as_str()
        .expect("token")
        .to_string();
    env.ok("chat 10 1 2");
    assert_eq!(
        env.ok("redis LRANGE chat:10 0 -1")["reply"],
        json!(["1", "2"])
    );
    assert_eq!(env.ok(r#"redis SET "a key" "two words""#)["reply"], "OK");
    assert_eq!(env.ok(r#"redis GET "a key""#)["reply"], "two words");
    let refused = env.command("redis NOSUCHCOMMAND");
    assert_eq!(refused["ok"], false);
    assert!(
        refused["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{refused}"
    );
    assert_eq!(env.command("bogus")["ok"], false);
    let log = env.ok("log")["path"].as_str().expect("path").to_string();
    assert!(std::path::Path::new(&log).is_file(), "{log}");

    let connect = |token: String| {
        let ws = ws.clone();
        async move {
            WsClient::connect_with_header(&ws, "token", &token)
                .await
                .expect("courier accepts the testenv's token")
        }
    };
    let mut from_alice = connect(alice.clone()).await;
    from_alice.send_acked(1, 1, &[(10, "before")]).await;

    env.ok("kill");
    assert!(gone(first_pid), "kill reaps courier");
    assert!(!answers_healthz(env.courier_addr()), "nothing on the port");
    assert_eq!(env.command("kill")["ok"], false, "nothing left to kill");

    let second_pid = env.ok("start")["pid"].as_u64().expect("pid") as u32;
    assert_ne!(second_pid, first_pid);
    assert!(
        answers_healthz(env.courier_addr()),
        "courier is back on the same port"
    );
    let mut to_bob = connect(bob).await;
    let delivered = to_bob.recv_batch().await;
    assert_eq!(
        delivered.messages[0]["content_text"], "before",
        "Redis kept it"
    );
    let third_pid = env.ok("restart")["pid"].as_u64().expect("pid") as u32;
    assert!(gone(second_pid), "restart killed the previous courier");
    assert_eq!(env.ok("stop")["code"], 0, "SIGTERM: a clean exit");
    assert!(gone(third_pid));
    let fourth_pid = env.ok("start")["pid"].as_u64().expect("pid") as u32;
    let mut from_alice = connect(alice).await;
    from_alice.send_acked(2, 1, &[(10, "after")]).await;

    assert_eq!(env.ok("quit"), json!({"ok": true}));
    assert_eq!(env.wait_exit(), Some(0));
    wait_until_gone(&[vec![fourth_pid], redis_pids].concat());
}

#[test]
fn sigterm_or_sigkill_of_the_testenv_leaves_nothing_behind() {
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        let mut env = Testenv::start();
        let courier_pid = env.ready["pid"].as_u64().expect("pid") as u32;
        let redis_pids = env.redis_pids();
        // SAFETY: kill(2) on the child we spawned and have not reaped.
        assert_eq!(unsafe { libc::kill(env.child.id() as i32, signal) }, 0);
        env.wait_exit();
        wait_until_gone(&[vec![courier_pid], redis_pids].concat());
    }
}

#[test]
fn the_end_of_stdin_stops_everything() {
    let mut env = Testenv::start();
    let courier_pid = env.ready["pid"].as_u64().expect("pid") as u32;
    let redis_pids = env.redis_pids();
    env.stdin = None;
    assert_eq!(env.wait_exit(), Some(0));
    wait_until_gone(&[vec![courier_pid], redis_pids].concat());
}
