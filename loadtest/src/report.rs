//! The [`Report`] (JSON) made from a [`Tally`], and the thresholds
//! ([`check`]) that make a run fail.
//!
//! Loss is computed here, once, from the merged tally: only the whole run
//! knows every room's members across workers.

use serde_json::json;

use crate::args::Args;
use crate::stats;
use crate::tally::Tally;

/// The outcome of one run.
pub type Report = serde_json::Value;

impl Tally {
    pub fn report(&self, args: &Args) -> Report {
        let expected = self.expected();
        let delivered = self.delivered;
        let loss = if expected == 0 {
            0.0
        } else {
            expected.saturating_sub(delivered) as f64 / expected as f64
        };
        let secs = self.duration_seconds;
        let per_second = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let error_replies = self.errors.values().sum::<u64>();
        let latency: serde_json::Map<String, serde_json::Value> = self
            .latency
            .iter()
            .map(|(name, pairs)| (name.clone(), stats::summary(&stats::from_recorded(pairs))))
            .collect();
        json!({
            "scenario": format!("{:?}", args.scenario).to_lowercase(),
            "urls": args.urls,
            "workers": args.workers,
            "connections": args.connections,
            "connected": self.connected,
            "failed_connects": self.failed_connects,
            "rooms": args.rooms,
            "senders": args.senders,
            "rate_target": args.rate,
            "ramp_seconds": self.ramp_seconds,
            "duration_seconds": secs,
            "sent": self.sent,
            "acked": self.acked,
            "acked_without_entry": self.unstored,
            "send_errors": self.send_errors,
            "error_replies": error_replies,
            "unacknowledged": self.sent.saturating_sub(self.acked + self.unstored + error_replies),
            "expected_deliveries": expected,
            "delivered": delivered,
            "loss": loss,
            "duplicates": self.duplicates,
            "reconnected": self.reconnected,
            "reconnect_failures": self.reconnect_failures,
            "not_recovered": self.not_recovered,
            "churned": self.churned,
            "churn_failures": self.churn_failures,
            "deliveries_per_second": per_second(delivered),
            "acks_per_second": per_second(self.acked),
            "latency_ms": latency,
            "errors": self.errors,
            "close_codes": self.closes,
        })
    }
}

/// The threshold a report fails, if any.
pub fn check(args: &Args, report: &Report) -> Option<String> {
    if let Some(max) = args.max_p99_ms {
        let p99 = report["latency_ms"]["delivery"]["p99"]
            .as_f64()
            .unwrap_or(f64::INFINITY);
        if p99 > max {
            return Some(format!("delivery p99 {p99:.2} ms is over --max-p99-ms {max}"));
        }
    }
    if let Some(max) = args.max_loss {
        let loss = report["loss"].as_f64().unwrap_or(1.0);
        if loss > max {
            return Some(format!("loss {loss:.6} is over --max-loss {max}"));
        }
    }
    if args.max_loss.is_some() {
        // Loss is measured against acknowledged sends: sends never answered
        // and connections that failed or were closed count as failures.
        for key in [
            "failed_connects",
            "unacknowledged",
            "send_errors",
            "duplicates",
            "reconnect_failures",
            "not_recovered",
            "churn_failures",
        ] {
            if report[key].as_u64().unwrap_or(0) > 0 {
                return Some(format!("{key}: {}", report[key]));
            }
        }
        if report["close_codes"].as_object().is_some_and(|m| !m.is_empty()) {
            return Some(format!("connections closed during the run: {}", report["close_codes"]));
        }
    }
    None
}
