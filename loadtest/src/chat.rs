//! The `chat` scenario's mix (protocol 1.1): each of a sender's ticks is a
//! `send`, an `edit` of its last message in the room, a `react` or
//! `unreact` on it (five keys, cycled: react all, then give them back),
//! or a `read` marker on it, in the shares `--edit-share`, `--react-share`
//! and `--read-share` (the rest sends), spread evenly over the ticks.
//!
//! Edits, deletions and reactions are room events with their own ids:
//! members count them as deliveries and check their ids ascend like
//! messages'. An op acknowledged with an id is a stored entry every
//! member must get; one acknowledged without (a reaction already held,
//! an unreaction of one not held, a read marker) is not.

use crate::args::Args;

/// What a sender does on one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Send,
    Edit,
    React,
    Read,
}

impl Op {
    /// Its acknowledgement latency's name in the report (`ack` is sends').
    pub(crate) fn latency_name(self) -> &'static str {
        match self {
            Op::Send => "ack",
            Op::Edit => "ack_edit",
            Op::React => "ack_react",
            Op::Read => "ack_read",
        }
    }

    /// Index among the non-send ops (their latency histograms).
    pub(crate) fn index(self) -> Option<usize> {
        match self {
            Op::Send => None,
            Op::Edit => Some(0),
            Op::React => Some(1),
            Op::Read => Some(2),
        }
    }

    pub(crate) const OTHERS: [Op; 3] = [Op::Edit, Op::React, Op::Read];
}

/// The op of tick `n` (0-based) of a sender: a low-discrepancy sequence,
/// so every stretch of ticks has about the configured shares.
pub(crate) fn pick(args: &Args, n: u64) -> Op {
    // The fractional part of n times the golden ratio spreads evenly.
    let x = (n as f64 * 0.618_033_988_749_895).fract();
    let (e, r, d) = (args.edit_share, args.react_share, args.read_share);
    if x < e {
        Op::Edit
    } else if x < e + r {
        Op::React
    } else if x < e + r + d {
        Op::Read
    } else {
        Op::Send
    }
}

/// The request for a non-send op on message `target` of `room`; `n` is
/// the sender's count of reactions so far (which key, react or give back),
/// `body` an edit's new body.
pub(crate) fn frame(op: Op, id: u64, room: &str, target: u64, n: u64, body: &str) -> String {
    match op {
        Op::Send => unreachable!("sends are framed by the protocol"),
        Op::Edit => format!(r#"{{"op":"edit","id":{id},"room":"{room}","msg":"{target}","body":{body}}}"#),
        Op::React => {
            let verb = if (n / 5).is_multiple_of(2) { "react" } else { "unreact" };
            format!(
                r#"{{"op":"{verb}","id":{id},"room":"{room}","msg":"{target}","key":"k{}"}}"#,
                n % 5
            )
        }
        Op::Read => format!(r#"{{"op":"read","id":{id},"room":"{room}","msg":"{target}"}}"#),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn shares_hold_over_any_stretch() {
        let args = Args::parse_from([
            "loadtest",
            "--url",
            "ws://127.0.0.1:1/ws",
            "--scenario",
            "chat",
            "--edit-share",
            "0.1",
            "--react-share",
            "0.3",
            "--read-share",
            "0.1",
        ]);
        let mut counts = [0usize; 4];
        for n in 1000..2000 {
            counts[pick(&args, n) as usize] += 1;
        }
        // send, edit, react, read
        assert!((480..=520).contains(&counts[0]), "{counts:?}");
        assert!((90..=110).contains(&counts[1]), "{counts:?}");
        assert!((280..=320).contains(&counts[2]), "{counts:?}");
        assert!((90..=110).contains(&counts[3]), "{counts:?}");
        assert!(frame(Op::React, 1, "r", 9, 7, "").contains(r#""op":"unreact""#));
        assert!(frame(Op::React, 1, "r", 9, 2, "").contains(r#""key":"k2""#));
    }
}
