//! `courier-testenv`: the test kit as a process, for tests written in other languages
//! (the TypeScript SDK's tests, the browser test). It starts a private Redis and one
//! courier exactly as the Rust tests do, prints where they are as one JSON line, then
//! answers commands on stdin, one JSON line each. Everything it started is killed when
//! it exits: on `quit`, at the end of stdin, on SIGTERM/SIGINT, and (through
//! `PR_SET_PDEATHSIG`) even when it is itself killed with SIGKILL.

mod words;

use std::io::{BufRead, Write};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::ExitCode;

use courier_testkit::{
    Courier, Fixtures, RedisCluster, RedisNode, RedisServer, SECRET, cluster_mode, expiry, process,
    sign,
};
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

const USAGE: &str = "\
usage: courier-testenv [--redis single|cluster] [--courier-bin PATH] [--env K=V]...

Starts a private Redis (default: as COURIER_TEST_REDIS says, else single) and one
courier on free loopback ports, prints one JSON line
  {\"ws\":..,\"http\":..,\"redis\":..,\"secret\":..,\"pid\":..}
then answers each command on stdin with one JSON line ({\"ok\":true,..} or
{\"ok\":false,\"error\":..}):
  kill                      SIGKILL courier (and reap it)
  start                     start courier again on the same port -> pid
  restart                   kill, then start -> pid
  stop                      SIGTERM courier, wait for it -> code (its exit code)
  redis WORD...             one Redis command (a word may be a JSON string) -> reply
  chat ID MEMBER...         create chat:ID with these members
  token ID USERNAME [TTL]   an HS256 token for the secret (TTL s, default 3600) -> token
  log                       courier's log file -> path
  quit                      stop everything and exit 0 (so does the end of stdin)";

/// The command line.
struct Args {
    cluster: bool,
    courier_bin: Option<PathBuf>,
    env: Vec<(String, String)>,
}

impl Args {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut parsed = Self {
            cluster: cluster_mode(),
            courier_bin: None,
            env: Vec::new(),
        };
        while let Some(arg) = args.next() {
            let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
            match arg.as_str() {
                "--redis" => {
                    parsed.cluster = match value("--redis")?.as_str() {
                        "single" => false,
                        "cluster" => true,
                        other => return Err(format!("--redis {other}: single or cluster")),
                    }
                }
                "--courier-bin" => parsed.courier_bin = Some(value("--courier-bin")?.into()),
                "--env" => {
                    let pair = value("--env")?;
                    let (name, setting) = pair
                        .split_once('=')
                        .ok_or(format!("--env {pair}: expected NAME=VALUE"))?;
                    parsed.env.push((name.to_string(), setting.to_string()));
                }
                "-h" | "--help" => return Err(String::new()),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(parsed)
    }
}

/// What the process started.
struct TestEnv {
    redis: RedisServer,
    courier: Courier,
    secret: String,
}

impl TestEnv {
    fn start(args: &Args) -> Self {
        let redis = if args.cluster {
            RedisServer::Cluster(RedisCluster::start())
        } else {
            RedisServer::Single(RedisNode::start())
        };
        let secret = args
            .env
            .iter()
            .rfind(|(name, _)| name == "COURIER_JWT_SECRET")
            .map_or(SECRET, |(_, value)| value.as_str())
            .to_string();
        let mut options = Courier::options(&redis.url()).secret(&secret);
        if let Some(bin) = &args.courier_bin {
            options = options.bin(bin);
        }
        for (name, value) in &args.env {
            options = options.env(name, value);
        }
        let courier = options.start();
        Self {
            redis,
            courier,
            secret,
        }
    }

    fn ready_line(&self) -> Value {
        json!({
            "ws": self.courier.ws_url(),
            "http": self.courier.http_url(""),
            "redis": self.redis.url(),
            "secret": self.secret,
            "pid": self.courier.pid(),
        })
    }

    /// Runs one command: `Ok(its answer)` or `Err(the error)`.
    fn run(&mut self, words: &[String]) -> Result<Value, String> {
        let arg = |i: usize, what: &str| {
            words
                .get(i)
                .map(String::as_str)
                .ok_or(format!("{} needs {what}", words[0]))
        };
        match words[0].as_str() {
            "kill" => {
                self.running()?;
                self.courier.kill();
                Ok(json!({ "ok": true }))
            }
            "start" => Ok(json!({ "ok": true, "pid": self.courier.start_again()? })),
            "restart" => {
                self.courier.kill();
                Ok(json!({ "ok": true, "pid": self.courier.start_again()? }))
            }
            "stop" => {
                self.running()?;
                Ok(json!({ "ok": true, "code": self.courier.stop() }))
            }
            "redis" => {
                let command = words
                    .get(1..)
                    .filter(|w| !w.is_empty())
                    .ok_or("redis needs a command")?;
                let mut cmd = redis::cmd(&command[0]);
                cmd.arg(&command[1..]);
                let reply: redis::Value = cmd
                    .query(&mut self.redis.conn())
                    .map_err(|e| e.to_string())?;
                Ok(json!({ "ok": true, "reply": words::reply_to_json(reply)? }))
            }
            "chat" => {
                let chat: u64 = number(arg(1, "a chat id")?)?;
                let members: Vec<u64> = words[2..]
                    .iter()
                    .map(|m| number(m))
                    .collect::<Result<_, _>>()?;
                if members.is_empty() {
                    return Err("chat needs members".into());
                }
                let key = format!("chat:{chat}");
                redis::pipe()
                    .atomic()
                    .del(&key)
                    .rpush(&key, members)
                    .query::<()>(&mut self.redis.conn())
                    .map_err(|e| e.to_string())?;
                Ok(json!({ "ok": true }))
            }
            "token" => {
                let id: u64 = number(arg(1, "a user id")?)?;
                let username = arg(2, "a username")?;
                let ttl = words.get(3).map_or(Ok(3600), |t| number(t))?;
                let claims = json!({ "id": id, "username": username, "exp": expiry(ttl) });
                Ok(json!({ "ok": true, "token": sign(&self.secret, &claims) }))
            }
            "log" => Ok(json!({ "ok": true, "path": self.courier.log_path() })),
            other => Err(format!("unknown command {other:?} (see --help)")),
        }
    }

    fn running(&mut self) -> Result<(), String> {
        if self.courier.is_running() {
            Ok(())
        } else {
            Err("courier is not running".into())
        }
    }
}

fn number<T: std::str::FromStr>(word: &str) -> Result<T, String> {
    word.parse()
        .map_err(|_| format!("{word:?} is not a number"))
}

/// Prints one JSON line and flushes it (the reader waits for it).
fn answer(value: &Value) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{value}");
    let _ = stdout.flush();
}

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("courier-testenv: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Children are spawned from this thread only (the runtime below is
    // single-threaded and runs here).
    process::end_children_with_this_thread();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("courier-testenv: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(serve(args));
    // The stdin thread may still be blocked in a read: leave without waiting for it.
    std::process::exit(code)
}

/// Starts everything, answers commands until `quit`, the end of stdin or a signal,
/// and stops everything; the exit code.
async fn serve(args: Args) -> i32 {
    let started = std::panic::catch_unwind(AssertUnwindSafe(|| TestEnv::start(&args)));
    let Ok(mut env) = started else {
        eprintln!("courier-testenv: could not start Redis and courier (see above)");
        return 1;
    };
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("courier-testenv: cannot listen for signals");
        return 1;
    };
    answer(&env.ready_line());
    let mut lines = stdin_lines();
    loop {
        let line = tokio::select! {
            line = lines.recv() => line,
            _ = terminate.recv() => return 128 + libc::SIGTERM,
            _ = interrupt.recv() => return 128 + libc::SIGINT,
        };
        let Some(line) = line else { return 0 };
        let words = match words::split(&line) {
            Ok(words) if words.is_empty() => continue,
            Ok(words) => words,
            Err(e) => {
                answer(&json!({ "ok": false, "error": e }));
                continue;
            }
        };
        if words[0] == "quit" {
            answer(&json!({ "ok": true }));
            return 0;
        }
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| env.run(&words)))
            .unwrap_or_else(|_| Err(format!("{} failed (see stderr)", words[0])));
        answer(&result.unwrap_or_else(|e| json!({ "ok": false, "error": e })));
    }
}

/// Lines of stdin, read on a thread of their own (a blocking read cannot be
/// cancelled); the channel closes at the end of stdin.
fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}
