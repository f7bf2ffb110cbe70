//! A courier process on a free loopback port, with its log in a file: started and
//! waited for (`/healthz` answers 200), signalled, killed, stopped, and started again
//! on the same port.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::process::{Process, signal_number};
use crate::{SECRET, WAIT, Wait, WsClient, answers_healthz, free_port, ports::START_ATTEMPTS};

/// The courier binary the kit starts unless told otherwise: `$COURIER_BIN`, else
/// `courier` next to the running program (`target/<profile>/`) or one directory up
/// (a test binary runs from `target/<profile>/deps/`).
pub fn find_courier_bin() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("COURIER_BIN") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("courier"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            format!(
                "courier's binary is not next to {}: build it (`cargo build -p courier`) \
                 or set COURIER_BIN",
                exe.display()
            )
        })
}

/// How a [`Courier`] is started: the test defaults (a clean environment, secret
/// [`SECRET`], `RUST_LOG=courier=debug`, a log file in a temporary directory) unless
/// changed here.
#[derive(Debug, Clone)]
pub struct CourierOptions {
    redis_url: String,
    bin: Option<PathBuf>,
    secret: String,
    rust_log: String,
    env: Vec<(String, String)>,
    inherit_env: bool,
    log: Option<PathBuf>,
}

impl CourierOptions {
    /// The binary to run (default: [`find_courier_bin`]).
    pub fn bin(self, bin: impl Into<PathBuf>) -> Self {
        Self {
            bin: Some(bin.into()),
            ..self
        }
    }

    /// `COURIER_JWT_SECRET` (default [`SECRET`]).
    pub fn secret(self, secret: &str) -> Self {
        Self {
            secret: secret.to_string(),
            ..self
        }
    }

    /// `RUST_LOG` (default `courier=debug`).
    pub fn rust_log(self, filter: &str) -> Self {
        Self {
            rust_log: filter.to_string(),
            ..self
        }
    }

    /// One more environment variable (after the kit's own, so it can override them).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// More environment variables.
    pub fn envs(self, vars: &[(&str, &str)]) -> Self {
        vars.iter()
            .fold(self, |options, (name, value)| options.env(name, value))
    }

    /// Keeps this process's environment (default: courier starts with only its
    /// settings, so nothing from the developer's shell changes a test).
    pub fn inherit_env(self) -> Self {
        Self {
            inherit_env: true,
            ..self
        }
    }

    /// Appends courier's output to this file (kept) instead of a temporary one.
    pub fn log_file(self, path: impl Into<PathBuf>) -> Self {
        Self {
            log: Some(path.into()),
            ..self
        }
    }

    /// Starts courier and waits until it answers `/healthz`; panics with courier's
    /// log if it cannot start.
    pub fn start(self) -> Courier {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::start`], with the reason as an error instead of a panic.
    pub fn try_start(self) -> Result<Courier, String> {
        let dir = match &self.log {
            Some(_) => None,
            None => Some(tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?),
        };
        let log = match (&self.log, &dir) {
            (Some(path), _) => path.clone(),
            (None, Some(dir)) => dir.path().join("courier.log"),
            (None, None) => unreachable!("a temporary directory when no log file is given"),
        };
        let mut courier = Courier {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            options: self,
            process: None,
            _dir: dir,
        };
        for _ in 0..START_ATTEMPTS {
            courier.addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            match courier.spawn()? {
                Spawned::Listening => return Ok(courier),
                Spawned::PortTaken => continue,
            }
        }
        Err(format!(
            "courier did not start on {START_ATTEMPTS} free ports"
        ))
    }
}

/// What became of one start.
enum Spawned {
    Listening,
    /// It exited because its port was taken: try another.
    PortTaken,
}

/// A courier process on a free port; killed and reaped on drop (with the end of its
/// log printed if the test is failing).
pub struct Courier {
    pub addr: SocketAddr,
    /// Its log file (stderr and stdout).
    pub log: PathBuf,
    options: CourierOptions,
    /// `None` once it has exited or was killed.
    process: Option<Process>,
    /// Holds the log file when no path was given.
    _dir: Option<tempfile::TempDir>,
}

impl Courier {
    /// Starts courier against `redis_url` with test defaults and extra settings,
    /// on another free port if the first one turns out to be taken.
    pub fn start(redis_url: &str, env: &[(&str, &str)]) -> Self {
        Self::options(redis_url).envs(env).start()
    }

    /// Options for starting courier against `redis_url`.
    pub fn options(redis_url: &str) -> CourierOptions {
        CourierOptions {
            redis_url: redis_url.to_string(),
            bin: None,
            secret: SECRET.to_string(),
            rust_log: "courier=debug".to_string(),
            env: Vec::new(),
            inherit_env: false,
            log: None,
        }
    }

    /// Starts the process on `self.addr` and waits until it answers `/healthz` (an
    /// answer from the port alone could be a socket connected to itself).
    fn spawn(&mut self) -> Result<Spawned, String> {
        let options = &self.options;
        let bin = match &options.bin {
            Some(bin) => bin.clone(),
            None => find_courier_bin()?,
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("courier's log {}: {e}", self.log.display()))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or_default();
        let mut command = Command::new(&bin);
        if !options.inherit_env {
            command.env_clear();
        }
        command
            .env("COURIER_LISTEN", self.addr.to_string())
            .env("COURIER_REDIS_URL", &options.redis_url)
            .env("COURIER_JWT_SECRET", &options.secret)
            .env("RUST_LOG", &options.rust_log)
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| format!("log file: {e}"))?)
            .stderr(log);
        let mut process = Process::spawn(command, "courier")
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let mut exited = false;
        let addr = self.addr;
        Wait::new("courier to answer /healthz")
            .within(WAIT)
            .try_until_blocking(|| {
                exited = process.exit_status().is_some();
                exited || answers_healthz(addr)
            })?;
        if !exited {
            self.process = Some(process);
            return Ok(Spawned::Listening);
        }
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let said = text.get(log_start as usize..).unwrap_or(&text);
        if said.contains("Address already in use") {
            return Ok(Spawned::PortTaken);
        }
        Err(format!("courier exited at start on {addr}:\n{said}"))
    }

    /// Starts courier again on the same port and settings after it was killed or
    /// stopped; the log file goes on. An error if the port is taken or it cannot start.
    pub fn start_again(&mut self) -> Result<u32, String> {
        if self.process.is_some() {
            return Err("courier is running".into());
        }
        match self.spawn()? {
            Spawned::Listening => Ok(self.pid().unwrap_or_default()),
            Spawned::PortTaken => Err(format!("port {} is taken", self.addr.port())),
        }
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    /// Whether it is running (it may have exited on its own: asked, not assumed).
    pub fn is_running(&mut self) -> bool {
        if self
            .process
            .as_mut()
            .is_some_and(|p| p.exit_status().is_some())
        {
            self.process = None;
        }
        self.process.is_some()
    }

    /// SIGKILL, then reap: when this returns, courier is gone.
    pub fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill();
        }
    }

    /// SIGTERM, then waits for courier to exit (it drains its connections first);
    /// its exit code (`None` if it had to be killed after the wait).
    pub fn stop(&mut self) -> Option<i32> {
        self.process.take()?.terminate(WAIT * 3)
    }

    /// `ws://addr/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// `http://addr<path>`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Connects user `id` with the default device.
    pub async fn connect(&self, id: u64) -> WsClient {
        self.connect_device(id, "default").await
    }

    /// Connects user `id` as `device`.
    pub async fn connect_device(&self, id: u64, device: &str) -> WsClient {
        let url = format!("{}?device={device}", self.ws_url());
        WsClient::connect_with_header(&url, "token", &crate::token(id))
            .await
            .expect("websocket connect")
    }

    /// Sends a signal (`"TERM"`, `"KILL"`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        let number = signal_number(signal).unwrap_or_else(|| panic!("unknown signal {signal}"));
        let process = self.process.as_ref().expect("courier is running");
        process
            .signal(number)
            .unwrap_or_else(|e| panic!("kill -{signal} courier: {e}"));
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let mut process = self.process.take().expect("courier is running");
        let status = process
            .wait_exit(WAIT * 3)
            .unwrap_or_else(|| panic!("courier did not exit"));
        status.code()
    }

    /// The process's log so far (for assertions and failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Path of the log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for Courier {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            // The test failed: what courier said last is the first clue.
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            eprintln!("--- last lines of courier {} ---\n{tail}", self.addr);
        }
    }
}
