//! The `profile` scenario's tools: courier built with frame pointers, `perf record`
//! on courier and Redis while loadgen runs, and the top of `perf report`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

/// Builds courier with frame pointers and line tables into `target/profiling`; its
/// path.
pub fn build_courier() -> Result<PathBuf, String> {
    println!("== building courier with frame pointers and line tables (target/profiling)");
    let status = Command::new("cargo")
        .args(["build", "--release", "--locked", "--quiet", "-p", "courier"])
        .args(["--target-dir", "target/profiling"])
        .env("RUSTFLAGS", "-C force-frame-pointers=yes")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "line-tables-only")
        .status()
        .map_err(|e| format!("cargo: {e}"))?;
    if !status.success() {
        return Err("the profiling build failed".into());
    }
    Ok(PathBuf::from("target/profiling/release/courier"))
}

/// After `delay` (the connections open and the warm-up passes), records `pids` for
/// `seconds` with `perf record -F 499 -g` into `<dir>/perf.data`.
pub fn record_later(pids: Vec<u32>, delay: Duration, seconds: f64, dir: &Path) -> JoinHandle<()> {
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        // A pause in the benchmark's own schedule, not a wait for an event.
        std::thread::sleep(delay);
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let log = std::fs::File::create(dir.join("perf-record.log")).ok();
        let mut command = Command::new("perf");
        command
            .args(["record", "-F", "499", "-g", "-p", &pids.join(",")])
            .arg("-o")
            .arg(dir.join("perf.data"))
            .args(["--", "sleep", &seconds.to_string()]);
        if let Some(log) = log {
            if let Ok(err) = log.try_clone() {
                command.stderr(err);
            }
            command.stdout(log);
        }
        if let Err(e) = command.status() {
            eprintln!("bench: perf record: {e} (install linux-perf)");
        }
    })
}

/// Writes and prints the top of the profile: share by process and object, the top
/// symbols by self time, courier's top frames by inclusive time.
pub fn report(dir: &Path) {
    let data = dir.join("perf.data");
    let sections: [(&str, &[&str], usize, usize); 3] = [
        (
            "-- share of samples by process and object",
            &["--no-children", "--sort", "comm,dso"],
            12,
            usize::MAX,
        ),
        (
            "-- self time, top symbols (courier and redis-server)",
            &["--no-children", "--sort", "comm,symbol", "-g", "none"],
            30,
            usize::MAX,
        ),
        (
            "-- courier, inclusive time (children), top frames",
            &[
                "--children",
                "--comm",
                "tokio-rt-worker",
                "--sort",
                "symbol",
                "-g",
                "none",
            ],
            60,
            160,
        ),
    ];
    let mut text = String::new();
    for (title, args, lines, width) in sections {
        text.push_str(title);
        text.push('\n');
        let output = Command::new("perf")
            .arg("report")
            .arg("-i")
            .arg(&data)
            .args(args)
            .arg("--stdio")
            .stderr(Stdio::null())
            .output();
        let out = output.map(|o| o.stdout).unwrap_or_default();
        for line in String::from_utf8_lossy(&out)
            .lines()
            .filter(|l| is_sample_line(l))
            .take(lines)
        {
            text.push_str(&tidy(line).chars().take(width).collect::<String>());
            text.push('\n');
        }
    }
    print!("{text}");
    let _ = std::fs::write(dir.join("perf-top.txt"), &text);
    println!("(full profile: perf report -i {})", data.display());
}

/// A line of figures in `perf report --stdio` (leading spaces, then a digit).
fn is_sample_line(line: &str) -> bool {
    let trimmed = line.trim_start();
    trimmed.len() < line.len() && trimmed.starts_with(|c: char| c.is_ascii_digit())
}

/// Without the trailing ` - -` columns and with runs of spaces shortened to two.
fn tidy(line: &str) -> String {
    let line = line.trim_end();
    let line = line
        .strip_suffix('-')
        .map(str::trim_end)
        .and_then(|l| l.strip_suffix('-'))
        .map_or(line, str::trim_end);
    let mut out = String::with_capacity(line.len());
    let mut spaces = 0;
    for c in line.chars() {
        if c == ' ' {
            spaces += 1;
            if spaces <= 2 {
                out.push(c);
            }
        } else {
            spaces = 0;
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_are_tidied() {
        assert!(is_sample_line(
            "    12.50%  courier  courier        [.] foo"
        ));
        assert!(!is_sample_line("# Overhead  Command"));
        assert_eq!(
            tidy("    12.50%  courier      courier    [.] foo     -  -   "),
            "  12.50%  courier  courier  [.] foo"
        );
    }
}
