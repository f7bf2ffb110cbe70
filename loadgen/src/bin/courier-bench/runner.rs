//! One run: an empty Redis, a fresh courier (the kit's `Courier`, on a free port),
//! loadgen as a child process whose output is shown and kept (`<name>.txt`, `.err`,
//! `.json`, `all.jsonl`), and a summary line read from its JSON report.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use courier_testkit::process::Process;
use courier_testkit::{Courier, RedisServer};
use serde_json::Value;

use crate::compare::Limit;
use crate::profile;
use crate::scenarios::{Kind, Run, StormSignal};
use crate::summary;

/// What loadgen prints on stderr when its connections are open and it waits for `go`.
const STORM_READY: &str = "loadgen: storm ready";

/// A courier binary to benchmark, and its label in run names.
#[derive(Debug, Clone)]
pub struct CourierBin {
    pub label: String,
    pub path: PathBuf,
    /// Environment of this binary's couriers (`--courier-env`), over the defaults.
    pub env: Vec<(String, String)>,
}

/// The benchmark's shared state: where results go, the Redis, the settings every run
/// uses, and the summary so far.
pub struct Bench {
    pub results: PathBuf,
    pub redis: RedisServer,
    /// The JWT secret courier and loadgen share (random per benchmark).
    pub secret: String,
    pub loadgen: PathBuf,
    pub threads: usize,
    pub rust_log: String,
    /// `LD_PRELOAD` for courier only (an allocator, say).
    pub preload: Option<String>,
    /// `--compare`'s Redis limits, handed to loadgen for ratios.
    pub baseline: Vec<Limit>,
    pub warmup: f64,
    pub profile_seconds: f64,
    pub summary: Vec<String>,
}

impl Bench {
    /// Starts courier on a free port against the benchmark's Redis, appending its
    /// output to `courier.log`.
    pub fn start_courier(&self, bin: &Path, env: &[(String, String)]) -> Result<Courier, String> {
        let mut options = Courier::options(&self.redis.url())
            .bin(bin)
            .secret(&self.secret)
            .rust_log(&self.rust_log)
            .inherit_env()
            .log_file(self.results.join("courier.log"));
        if let Some(preload) = &self.preload {
            options = options.env("LD_PRELOAD", preload);
        }
        for (name, value) in env {
            options = options.env(name, value);
        }
        options.try_start()
    }

    /// Runs `run` as `name` against courier `bin` (with `env`); its summary line
    /// joins the others.
    pub fn run(&mut self, run: &Run, name: &str, bin: &Path, env: &[(String, String)]) {
        println!("== {name}: loadgen {}", run.args.join(" "));
        self.redis.flush_all();
        let mut courier = match self.start_courier(bin, env) {
            Ok(courier) => courier,
            Err(e) => {
                eprintln!("bench: {name}: {e}");
                self.summary
                    .push(format!("{name}: FAILED (courier did not start)"));
                return;
            }
        };
        let outcome = self.drive_loadgen(run, name, &mut courier);
        // A courier that is gone before it is stopped was stopped by something else
        // (loadgen then sees close code 1001 or resets on every connection).
        let gone = if courier.is_running() {
            ""
        } else {
            eprintln!("bench: {name}: courier exited during the run: see courier.log");
            " (courier exited during the run: see courier.log)"
        };
        courier.stop();
        match outcome {
            Ok(report) => {
                let json = report.to_string();
                let _ = std::fs::write(
                    self.results.join(format!("{name}.json")),
                    format!("{json}\n"),
                );
                let all = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.results.join("all.jsonl"));
                if let Ok(mut all) = all {
                    let _ = writeln!(all, "{json}");
                }
                self.summary
                    .push(format!("{name}: {}{gone}", summary::line(&report)));
            }
            Err(e) => {
                eprintln!("bench: {name}: {e}");
                self.summary.push(format!("{name}: FAILED ({e}){gone}"));
            }
        }
    }

    /// Starts loadgen against `courier`, drives a storm or a profile if the run is
    /// one, waits for it and returns its JSON report.
    fn drive_loadgen(&self, run: &Run, name: &str, courier: &mut Courier) -> Result<Value, String> {
        let courier_pid = courier.pid().ok_or("courier is not running")?;
        let baseline: Vec<String> = self
            .baseline
            .iter()
            .map(|(limit, rps)| format!("{limit}={rps}"))
            .collect();
        let mut command = Command::new(&self.loadgen);
        command
            .args(&run.args)
            .args(["--url", &courier.ws_url(), "--redis", &self.redis.url()])
            .args(["--courier-pid", &courier_pid.to_string()])
            .args(["--threads", &self.threads.to_string(), "--scenario", name])
            .args(["--baseline", &baseline.join(",")])
            .env("COURIER_JWT_SECRET", &self.secret)
            .stdin(if matches!(run.kind, Kind::Storm(_)) {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut loadgen = Process::spawn(command, "loadgen")
            .map_err(|e| format!("spawn {}: {e}", self.loadgen.display()))?;
        let (stdin, stdout, stderr) = loadgen.take_stdio();
        let (ready_tx, ready) = mpsc::channel();
        let out = tee(
            stdout,
            self.results.join(format!("{name}.txt")),
            false,
            None,
        );
        let err = tee(
            stderr,
            self.results.join(format!("{name}.err")),
            true,
            Some(ready_tx),
        );
        let perf = (run.kind == Kind::Profile).then(|| {
            let mut pids = vec![courier_pid];
            pids.extend(self.redis.pids());
            let delay = Duration::from_secs_f64(self.warmup + 2.0);
            profile::record_later(pids, delay, self.profile_seconds, &self.results)
        });
        if let Kind::Storm(signal) = run.kind {
            // Loadgen says when its connections are open; it exits (closing the
            // channel) if it cannot open them.
            if ready.recv().is_ok() {
                storm(courier, signal, stdin)?;
            }
        }
        let status = loadgen
            .wait_exit(Duration::from_secs(5 * 3600))
            .ok_or("loadgen did not exit")?;
        let last_line = out.join().ok().flatten();
        let _ = err.join();
        if let Some(perf) = perf {
            let _ = perf.join();
            profile::report(&self.results);
        }
        if !status.success() {
            return Err(format!("loadgen failed ({status})"));
        }
        let line = last_line.ok_or("loadgen printed nothing")?;
        serde_json::from_str(&line).map_err(|e| format!("loadgen's last line is not JSON: {e}"))
    }
}

/// The storm itself: courier goes away (SIGKILL, or SIGTERM and its drain), comes back
/// on the same port, and loadgen is told `go <pid>`.
fn storm(
    courier: &mut Courier,
    signal: StormSignal,
    stdin: Option<std::process::ChildStdin>,
) -> Result<(), String> {
    match signal {
        StormSignal::Kill => courier.kill(),
        StormSignal::Term => {
            courier.stop();
        }
    }
    let pid = courier.start_again()?;
    println!(
        "bench: courier restarted (pid {pid}) on {}; go",
        courier.addr
    );
    let mut stdin = stdin.ok_or("loadgen's stdin is not piped")?;
    writeln!(stdin, "go {pid}").map_err(|e| format!("telling loadgen to go: {e}"))
}

/// Copies a child's output line by line to this process's stdout (or stderr) and to
/// `file`; returns the last line. With `ready`, says when the storm-ready line passes.
fn tee(
    stream: Option<impl Read + Send + 'static>,
    file: PathBuf,
    to_stderr: bool,
    ready: Option<mpsc::Sender<()>>,
) -> JoinHandle<Option<String>> {
    std::thread::spawn(move || {
        let stream = stream?;
        let mut file = File::create(&file).ok();
        let mut last = None;
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if to_stderr {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
            if let Some(file) = file.as_mut() {
                let _ = writeln!(file, "{line}");
            }
            if line.starts_with(STORM_READY)
                && let Some(ready) = &ready
            {
                let _ = ready.send(());
            }
            if !line.trim().is_empty() {
                last = Some(line);
            }
        }
        last
    })
}
