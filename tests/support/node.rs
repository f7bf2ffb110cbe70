//! One private `redis-server` process on a free loopback port.

use std::process::{Child, Command, Stdio};

use super::{START_ATTEMPTS, free_port, process_id_in, wait_for_own_redis};

/// A private `redis-server` on a free port, in its own temporary directory.
pub struct RedisNode {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    appendonly: bool,
}

impl RedisNode {
    /// Starts a server without persistence.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Starts a server with AOF (`appendfsync always`) so restarts keep the data.
    pub fn start_persistent() -> Self {
        Self::start_with(true)
    }

    fn start_with(appendonly: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = Self {
            port: 0,
            dir,
            child: None,
            appendonly,
        };
        for _ in 0..START_ATTEMPTS {
            server.port = free_port();
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on {START_ATTEMPTS} free ports");
    }

    /// Starts redis-server on `self.port`; false if the port turned out to be taken.
    fn spawn(&mut self) -> bool {
        let mut command = Command::new("redis-server");
        command
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--dir", &self.dir.path().to_string_lossy()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.appendonly {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        let mut child = command
            .spawn()
            .expect("spawn redis-server (is it installed?)");
        let url = self.url();
        let ours = wait_for_own_redis(&mut child, || {
            let info: String = redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("INFO").arg("server").query(&mut c))
                .ok()?;
            process_id_in(&info)
        });
        self.child = Some(child);
        ours
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A synchronous connection for assertions and fixtures.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("connect to test redis")
    }

    /// Kills the server (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Appends a command to the AOF of a stopped persistent server, as if it had run
    /// just before the stop (Redis 7 multi-part AOF: the `.incr.aof` file).
    pub fn append_to_aof(&self, args: &[&str]) {
        assert!(
            self.child.is_none() && self.appendonly,
            "only on a stopped persistent server"
        );
        append_to_aof_in(self.dir.path(), args);
    }

    /// Starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "redis-server could not restart on port {}",
            self.port
        );
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Appends a command to the AOF in a stopped server's directory `dir`, as if it had
/// run just before the stop (Redis 7 multi-part AOF: the `.incr.aof` file).
pub fn append_to_aof_in(dir: &std::path::Path, args: &[&str]) {
    let incr = std::fs::read_dir(dir.join("appendonlydir"))
        .expect("appendonlydir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".incr.aof"))
        .expect("an incr AOF file");
    let mut resp = format!("*{}\r\n", args.len());
    for arg in args {
        resp.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(incr)
        .expect("open AOF");
    file.write_all(resp.as_bytes()).expect("append to AOF");
}
