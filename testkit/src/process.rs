//! A child process the kit owns: signalled by pid (never by name), killed with
//! SIGKILL and reaped on drop, so a failing test leaves nothing running.

use std::io;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Set by [`end_children_with_this_thread`]: children get `PR_SET_PDEATHSIG`.
static TIED_TO_PARENT: AtomicBool = AtomicBool::new(false);

/// Makes every process the kit spawns from now on receive SIGKILL when the thread
/// that spawned it ends (Linux `PR_SET_PDEATHSIG`), so nothing outlives a program
/// that is itself killed with SIGKILL. Only for programs that spawn from one
/// long-lived thread (`courier-testenv`, `courier-bench`): a child spawned from a
/// short-lived thread (tokio's blocking pool) would die with that thread.
pub fn end_children_with_this_thread() {
    TIED_TO_PARENT.store(true, Ordering::Relaxed);
}

/// Raises this process's soft `RLIMIT_NOFILE` to the hard limit (children inherit
/// it: a courier or load generator holding 20,000 connections needs it); returns
/// `(soft, hard)` after the change, `(0, 0)` if the limit cannot be read.
pub fn raise_fd_limit() -> (u64, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for getrlimit/setrlimit to read and write.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return (0, 0);
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    (limit.rlim_cur, limit.rlim_max)
}

/// A signal the kit sends, by its usual name.
pub fn signal_number(name: &str) -> Option<i32> {
    Some(match name.trim_start_matches("SIG") {
        "KILL" => libc::SIGKILL,
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "HUP" => libc::SIGHUP,
        "QUIT" => libc::SIGQUIT,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        _ => return None,
    })
}

/// A running child process, killed (SIGKILL) and reaped when dropped.
pub struct Process {
    child: Child,
    /// What it is, for messages ("redis-server", "courier").
    name: String,
}

impl Process {
    /// Spawns `command`.
    pub fn spawn(mut command: Command, name: &str) -> io::Result<Self> {
        if TIED_TO_PARENT.load(Ordering::Relaxed) {
            let parent = std::process::id();
            use std::os::unix::process::CommandExt;
            // SAFETY: the closure runs between fork and exec and only makes
            // async-signal-safe calls (prctl, getppid) without allocating.
            unsafe {
                command.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // The parent may have died before the prctl.
                    if libc::getppid() as u32 != parent {
                        return Err(io::Error::from_raw_os_error(libc::ESRCH));
                    }
                    Ok(())
                });
            }
        }
        let child = command.spawn()?;
        Ok(Self {
            child,
            name: name.to_string(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its piped standard streams (once each; `None` if not piped).
    pub fn take_stdio(
        &mut self,
    ) -> (
        Option<std::process::ChildStdin>,
        Option<std::process::ChildStdout>,
        Option<std::process::ChildStderr>,
    ) {
        (
            self.child.stdin.take(),
            self.child.stdout.take(),
            self.child.stderr.take(),
        )
    }

    /// Sends a signal by number; an error if the process is gone.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        // SAFETY: kill(2) with a pid we spawned and have not reaped yet (reaping takes
        // `self` or happens in `exit_status`, after which no signal is sent).
        if unsafe { libc::kill(self.child.id() as libc::pid_t, signal) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Its exit status if it has exited (reaping it), `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for it to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, then reap: when this returns, the process is gone.
    pub fn kill(mut self) {
        self.kill_and_reap();
    }

    /// SIGTERM, then waits up to `grace` for it to exit (SIGKILL after that); its exit
    /// code, `None` if it had to be killed or died by a signal.
    pub fn terminate(mut self, grace: Duration) -> Option<i32> {
        let _ = self.signal(libc::SIGTERM);
        match self.wait_exit(grace) {
            Some(status) => status.code(),
            None => {
                eprintln!("{} did not exit within {grace:?} of SIGTERM", self.name);
                None
            }
        }
    }

    fn kill_and_reap(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_process_is_killed_and_reaped() {
        let mut sleeper = Command::new("sleep");
        sleeper.arg("60");
        let process = Process::spawn(sleeper, "sleep").expect("spawn sleep");
        let pid = process.pid();
        drop(process);
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "sleep {pid} is still there"
        );
    }

    #[test]
    fn terminate_returns_the_exit_code() {
        let mut shell = Command::new("sh");
        shell
            .args([
                "-c",
                "trap 'exit 7' TERM; echo ready; while :; do sleep 0.01; done",
            ])
            .stdout(std::process::Stdio::piped());
        let mut process = Process::spawn(shell, "sh").expect("spawn sh");
        let stdout = process.take_stdio().1.expect("piped stdout");
        let mut ready = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .read_line(&mut ready)
            .expect("read the trap's readiness");
        assert_eq!(ready, "ready\n", "the trap is installed");
        assert_eq!(process.terminate(Duration::from_secs(5)), Some(7));
        assert_eq!(signal_number("SIGKILL"), Some(libc::SIGKILL));
        assert_eq!(signal_number("NOPE"), None);
    }
}
