//! One summary line per run, read from loadgen's JSON report (parsed, not grepped).

use serde_json::Value;

/// `12.3` or `?` when the field is missing.
fn num(value: &Value, places: usize) -> String {
    value
        .as_f64()
        .map(|n| format!("{n:.places$}"))
        .unwrap_or_else(|| "?".into())
}

/// The figures of one run in one line: the same fields for every scenario, then what
/// only its mode has (traffic, idle cost, storm).
pub fn line(report: &Value) -> String {
    let r = report;
    let mut parts = vec![format!("open={}", r["connections_open"])];
    match r["mode"].as_str() {
        Some("rate" | "max") => {
            parts.push(format!("delivered/s={}", num(&r["delivered_per_s"], 1)));
            parts.push(format!("p50={}ms", num(&r["latency_ms"]["p50"], 3)));
            parts.push(format!("p99={}ms", num(&r["latency_ms"]["p99"], 3)));
            parts.push(format!("lost={} dups={}", r["lost"], r["duplicates"]));
        }
        Some("storm") => {
            let s = &r["storm"];
            parts.push(format!(
                "joins={}/{} gave_up={} joins/s={} first..last={}..{}s join_p99={}ms",
                s["joins"],
                s["connections"],
                s["gave_up"],
                num(&s["joins_per_s"], 0),
                num(&s["first_join_s"], 2),
                num(&s["last_join_s"], 2),
                num(&s["join_ms"]["p99"], 0)
            ));
            parts.push(format!("failed_attempts={}", s["errors"]));
            parts.push(format!(
                "redis_cmds/join={} (idle before: {}/s)",
                num(&s["commands_per_join"], 1),
                num(&s["idle_commands_per_s"], 1)
            ));
        }
        _ => {}
    }
    let courier = &r["courier"];
    parts.push(format!(
        "rss/conn={}B courier_cpu={}%{}",
        courier["rss_per_conn_bytes"],
        num(&courier["cpu_pct"], 1),
        per_msg(&courier["cpu_us_per_delivered"])
    ));
    let redis = &r["redis"];
    parts.push(format!(
        "redis_cpu={}%{} redis_conns={} redis_nodes={}",
        num(&redis["cpu_pct"], 1),
        per_msg(&redis["cpu_us_per_delivered"]),
        redis["courier_connections"],
        redis["nodes"]
    ));
    if r["mode"] == "idle" {
        let open = r["connections_open"].as_f64().unwrap_or(0.0);
        let commands = redis["commands_per_s"].as_f64().unwrap_or(0.0);
        parts.push(format!(
            "redis_cmds/s={commands:.1} ({:.4}/s per conn) {}",
            if open > 0.0 { commands / open } else { 0.0 },
            top_commands(&redis["commands_per_s_by_command"])
        ));
    }
    if matches!(r["mode"].as_str(), Some("rate" | "max")) {
        let errors = &r["errors"];
        if errors.as_object().is_some_and(|e| !e.is_empty()) || r["refused_batches"] != 0 {
            parts.push(format!("errors={errors}"));
        }
        parts.push(format!(
            "batches sent/acked/refused={}/{}/{}",
            r["sent_batches"], r["acked_batches"], r["refused_batches"]
        ));
        parts.push(format!("pending_after_drain={}", r["pending_after_drain"]));
        let counters = &r["courier_counters"];
        parts.push(format!("redelivered={}", counters["redelivered"]));
    }
    if r["memory"].is_object() {
        parts.push(crate::memory::line(&r["memory"]));
        if r["memory"]["dedup_record_bytes"].is_object() {
            parts.push(format!(
                "dedup record B={}",
                r["memory"]["dedup_record_bytes"]
            ));
        }
    }
    if let Some(ratios) = r["ratios"].as_object() {
        for (name, ratio) in ratios {
            let limit = name.strip_prefix("delivered_per_").unwrap_or(name);
            parts.push(format!("÷{limit}={ratio}"));
        }
    }
    parts.join(" ")
}

fn per_msg(value: &Value) -> String {
    value
        .as_f64()
        .map(|us| format!(" ({us}µs/msg)"))
        .unwrap_or_default()
}

/// The five busiest commands, `name=rate`.
fn top_commands(by_command: &Value) -> String {
    let mut rates: Vec<(&String, f64)> = by_command
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k, v.as_f64().unwrap_or(0.0)))
                .collect()
        })
        .unwrap_or_default();
    rates.sort_by(|a, b| b.1.total_cmp(&a.1));
    rates
        .iter()
        .take(5)
        .map(|(name, rate)| format!("{name}={rate}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_traffic_run_reads_as_before_plus_its_edges() {
        let report = json!({
            "mode": "max", "connections_open": 1000, "delivered_per_s": 150000.04,
            "latency_ms": {"p50": 282.1, "p99": 331.0}, "lost": 0, "duplicates": 0,
            "errors": {"unavailable": 3}, "sent_batches": 10, "acked_batches": 7,
            "refused_batches": 3, "pending_after_drain": 0,
            "courier_counters": {"redelivered": 0},
            "courier": {"rss_per_conn_bytes": 7400.0, "cpu_pct": 85.0, "cpu_us_per_delivered": 5.62},
            "redis": {"cpu_pct": 71.0, "cpu_us_per_delivered": 4.7, "courier_connections": 2, "nodes": 1},
            "ratios": {"delivered_per_send10x10": 0.319}
        });
        let line = line(&report);
        assert!(
            line.starts_with(
                "open=1000 delivered/s=150000.0 p50=282.100ms p99=331.000ms lost=0 dups=0"
            ),
            "{line}"
        );
        assert!(line.contains("errors={\"unavailable\":3}"), "{line}");
        assert!(line.contains("batches sent/acked/refused=10/7/3"), "{line}");
        assert!(line.contains("÷send10x10=0.319"), "{line}");
    }

    #[test]
    fn an_idle_run_reports_redis_commands_per_connection() {
        let report = json!({
            "mode": "idle", "connections_open": 1000,
            "courier": {"rss_per_conn_bytes": 7400.0, "cpu_pct": 4.0},
            "redis": {"cpu_pct": 1.4, "courier_connections": 2, "nodes": 1,
                      "commands_per_s": 200.0, "commands_per_s_by_command": {"xreadgroup": 200.0}}
        });
        let line = line(&report);
        assert!(
            line.contains("redis_cmds/s=200.0 (0.2000/s per conn) xreadgroup=200"),
            "{line}"
        );
    }
}
