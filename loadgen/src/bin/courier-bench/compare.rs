//! `--compare`: Redis's own limit for the commands courier's send path runs, measured
//! with `redis-benchmark` against the same Redis in the same run.
//!
//! The send script's arguments are not written here: courier itself sends a batch of
//! 1 and of 10 messages to a chat of 10 recipients, the script call it makes is read
//! back from `MONITOR`, and `redis-benchmark` replays exactly that call with the
//! batch's `time_key` replaced by `__rand_int__` (a fresh dedup key per call, as a
//! real sender's next batch has). Whatever courier's send path becomes, the limit is
//! measured on what it actually sends.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use courier_client::{CloseCode, ConnectOptions};
use courier_testkit::{Courier, Fixtures, RedisNode, expiry, sign};
use serde_json::json;

/// The `time_key` of the captured batches: a number nothing else in the call has.
const MARKER: &str = "987654321012345";

/// A Redis limit: a name loadgen understands (`xadd`, `send<B>x<F>`) and requests/s.
pub type Limit = (String, f64);

/// Measures `xadd`, `send1x10` and `send10x10` on `node`, where `courier` runs;
/// `requests` per measurement. Each replayed command is kept in
/// `<results>/<name>.command` (one word per line). Leaves Redis empty.
pub fn measure(
    node: &RedisNode,
    courier: &Courier,
    secret: &str,
    requests: usize,
    results: &Path,
) -> Result<Vec<Limit>, String> {
    println!(
        "== redis-benchmark baseline (Redis on :{}, -n {requests} -c 50 -P 16)",
        node.port
    );
    let mut limits = Vec::new();
    node.cmd::<()>(&["FLUSHALL"]);
    let xadd = ["XADD", "bench:s", "MAXLEN", "~", "10000", "*", "f", "v"].map(String::from);
    limits.push(("xadd".into(), benchmark(node, requests, &xadd)?));
    for batch in [1, 10] {
        node.cmd::<()>(&["FLUSHALL"]);
        let call = capture_send(node, courier, secret, batch)?;
        let name = format!("send{batch}x10");
        let _ = std::fs::write(
            results.join(format!("{name}.command")),
            call.join("\n") + "\n",
        );
        limits.push((name, benchmark(node, requests, &call)?));
    }
    node.cmd::<()>(&["FLUSHALL"]);
    for (name, rps) in &limits {
        println!("   {name}: {rps} requests/s");
    }
    Ok(limits)
}

/// `redis-benchmark -n requests -c 50 -P 16 --csv -r 1e9 <command>`: requests/s.
fn benchmark(node: &RedisNode, requests: usize, command: &[String]) -> Result<f64, String> {
    let output = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &node.port.to_string()])
        .args(["-n", &requests.to_string(), "-c", "50", "-P", "16", "--csv"])
        .args(["-r", "1000000000"])
        .args(command)
        .output()
        .map_err(|e| format!("redis-benchmark (is redis-tools installed?): {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    requests_per_s(&text).ok_or_else(|| {
        format!(
            "redis-benchmark {}: no result in {text:?} {}",
            command[0],
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// The `rps` of redis-benchmark's CSV result: the 7th field from the end of the last
/// line (the test's name, first, may itself hold commas and quotes).
fn requests_per_s(csv: &str) -> Option<f64> {
    let last = csv.lines().rev().find(|l| !l.trim().is_empty())?;
    let fields: Vec<&str> = last.rsplit(',').collect();
    fields.get(6)?.trim().trim_matches('"').parse().ok()
}

/// Has courier send one batch of `batch` messages from user 1 to chat 1001 (users 1
/// to 11: ten recipients) and returns the script call it made, read from MONITOR,
/// with the batch's time key replaced by `__rand_int__`.
fn capture_send(
    node: &RedisNode,
    courier: &Courier,
    secret: &str,
    batch: usize,
) -> Result<Vec<String>, String> {
    node.create_chat(1001, &(1..=11).collect::<Vec<u64>>());
    let mut monitor = TcpStream::connect(("127.0.0.1", node.port))
        .map_err(|e| format!("MONITOR connection: {e}"))?;
    monitor
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    monitor
        .write_all(b"MONITOR\r\n")
        .map_err(|e| format!("MONITOR: {e}"))?;
    let mut lines = BufReader::new(monitor);
    let mut ok = String::new();
    lines
        .read_line(&mut ok)
        .map_err(|e| format!("MONITOR: {e}"))?;
    if !ok.starts_with("+OK") {
        return Err(format!("MONITOR answered {ok:?}"));
    }

    send_one_batch(courier, secret, batch)?;

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut calls = Vec::new();
    let mut line = String::new();
    while Instant::now() < deadline {
        line.clear();
        match lines.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            // Nothing more within the read timeout.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => return Err(format!("MONITOR: {e}")),
        }
        let Some((source, words)) = parse_monitor_line(line.trim_end()) else {
            continue;
        };
        let is_script = matches!(
            words[0].to_ascii_uppercase().as_str(),
            "EVALSHA" | "EVAL" | "EVALSHA_RO" | "EVAL_RO" | "FCALL"
        );
        if source != "lua" && is_script && words.iter().any(|w| w.contains(MARKER)) {
            calls.push(words);
            // The batch's calls were fed to MONITOR before courier acked it: any other
            // one is already in the buffer.
            lines
                .get_ref()
                .set_read_timeout(Some(Duration::from_millis(300)))
                .map_err(|e| e.to_string())?;
        }
    }
    // The first call on a fresh Redis is answered NOSCRIPT and sent again once the
    // script is loaded: the same words twice are one call.
    calls.dedup();
    match calls.len() {
        1 => Ok(calls
            .remove(0)
            .into_iter()
            .map(|w| w.replace(MARKER, "__rand_int__"))
            .collect()),
        0 => Err(
            "courier's send made no script call carrying the batch's time key \
                  (the dedup key cannot be varied, so --compare cannot replay it)"
                .into(),
        ),
        n => Err(format!(
            "courier's send made {n} script calls; --compare replays one"
        )),
    }
}

/// Sends one batch of `batch` 64-byte messages (loadgen's size) as user 1 and waits
/// for its ack.
fn send_one_batch(courier: &Courier, secret: &str, batch: usize) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let token = sign(
        secret,
        &json!({"id": 1, "username": "bench", "exp": expiry(600)}),
    );
    let text = format!("{:x<64}", "t=0;s=0;q=0;r=0;");
    let messages: Vec<_> = (0..batch)
        .map(|_| json!({"sender_id": 1, "chat_id": 1001, "content_text": text}))
        .collect();
    let frame = format!(
        r#"{{"type":"messages","time_key":{MARKER},"messages":{}}}"#,
        serde_json::Value::from(messages)
    );
    runtime.block_on(async {
        let mut ws = ConnectOptions::new(courier.ws_url())
            .token(token)
            .connect()
            .await
            .map_err(|e| format!("connect to courier: {e}"))?;
        ws.send_text(frame)
            .await
            .map_err(|e| format!("send the captured batch: {e}"))?;
        let answer = ws
            .recv_text(Duration::from_secs(10))
            .await
            .map_err(|e| format!("courier did not answer the captured batch: {e}"))?;
        let _ = ws.close(CloseCode::Normal, Duration::from_secs(3)).await;
        if answer.contains(r#""type":"ack""#) {
            Ok(())
        } else {
            Err(format!("courier refused the captured batch: {answer}"))
        }
    })
}

/// A MONITOR line (`+1700000000.123456 [0 127.0.0.1:5555] "EVALSHA" "ab" ...`): the
/// client's address (`lua` for a script's own calls) and the command's words.
fn parse_monitor_line(line: &str) -> Option<(String, Vec<String>)> {
    let rest = line.strip_prefix('+')?;
    let open = rest.find('[')?;
    let close = open + rest[open..].find(']')?;
    let source = rest[open + 1..close].split(' ').nth(1)?.to_string();
    let words = unquote_words(&rest[close + 1..])?;
    (!words.is_empty()).then_some((source, words))
}

/// The `"..."` words of a MONITOR line, unescaped the way Redis escapes them
/// (`\\`, `\"`, `\n`, `\r`, `\t`, `\a`, `\b`, `\xHH`).
fn unquote_words(text: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut chars = text.bytes().peekable();
    while let Some(byte) = chars.next() {
        match byte {
            b' ' => continue,
            b'"' => {}
            _ => return None,
        }
        let mut word = Vec::new();
        loop {
            match chars.next()? {
                b'"' => break,
                b'\\' => match chars.next()? {
                    b'n' => word.push(b'\n'),
                    b'r' => word.push(b'\r'),
                    b't' => word.push(b'\t'),
                    b'a' => word.push(7),
                    b'b' => word.push(8),
                    b'x' => {
                        let hex = [chars.next()?, chars.next()?];
                        let hex = std::str::from_utf8(&hex).ok()?;
                        word.push(u8::from_str_radix(hex, 16).ok()?);
                    }
                    other => word.push(other),
                },
                other => word.push(other),
            }
        }
        words.push(String::from_utf8_lossy(&word).into_owned());
    }
    Some(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_lines_are_unescaped_as_redis_escapes_them() {
        let line = r#"+1700000000.123456 [0 127.0.0.1:5555] "EVALSHA" "ab" "{\"sender_id\":1}" "a\\b" "\x01\n""#;
        let (source, words) = parse_monitor_line(line).expect("a command");
        assert_eq!(source, "127.0.0.1:5555");
        assert_eq!(
            words,
            ["EVALSHA", "ab", r#"{"sender_id":1}"#, r"a\b", "\u{1}\n"]
        );
        let (source, _) = parse_monitor_line(r#"+1.0 [0 lua] "XADD" "k""#).expect("a command");
        assert_eq!(source, "lua");
        assert!(parse_monitor_line("+OK").is_none());
    }

    #[test]
    fn the_rate_is_read_from_the_end_of_the_csv_line() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
\"EVALSHA ab 1 {\"x\",\"y\"}\",\"4744.50\",\"1.0\",\"0.5\",\"0.9\",\"2.0\",\"3.0\",\"9.0\"\n";
        assert_eq!(requests_per_s(csv), Some(4744.5));
    }
}
