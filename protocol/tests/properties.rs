//! Properties of room names, `rooms` claim patterns and message ids, over
//! generated inputs (proptest).

use proptest::prelude::*;
use protocol::id::{self, SEQ_MAX};
use protocol::room::{MAX_ROOM_LEN, allowed, is_valid_room, pattern_matches};

/// The characters PROTOCOL.md allows in a room name.
const ROOM_CHARS: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-";

fn in_room_chars(c: char) -> bool {
    ROOM_CHARS.contains(c)
}

/// A valid room name: 1 to 128 characters of `[A-Za-z0-9_.:-]`.
fn room() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.:-]{1,128}"
}

/// Short names from few characters, so prefixes and equal names are common.
fn short_room() -> impl Strategy<Value = String> {
    "[ab:-]{1,6}"
}

/// Milliseconds that fit the 42 bits an id leaves them (till the year 2109).
const MS_MAX: u64 = (1 << 42) - 1;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn generated_names_are_valid(name in room()) {
        prop_assert!(is_valid_room(&name));
    }

    #[test]
    fn validity_is_length_and_alphabet(name in any::<String>()) {
        let expected = (1..=MAX_ROOM_LEN).contains(&name.len()) && name.chars().all(in_room_chars);
        prop_assert_eq!(is_valid_room(&name), expected);
    }

    #[test]
    fn one_foreign_character_or_length_makes_a_name_invalid(
        name in room(),
        at in any::<prop::sample::Index>(),
        bad in any::<char>().prop_filter("outside the alphabet", |c| !in_room_chars(*c)),
    ) {
        let mut chars: Vec<char> = name.chars().collect();
        chars.insert(at.index(chars.len() + 1), bad);
        let with_bad: String = chars.into_iter().collect();
        prop_assert!(!is_valid_room(&with_bad), "{:?}", with_bad);
        let padded = format!("{name}{}", "a".repeat(MAX_ROOM_LEN + 1 - name.len()));
        prop_assert_eq!(padded.len(), MAX_ROOM_LEN + 1);
        prop_assert!(!is_valid_room(&padded));
        prop_assert!(is_valid_room(&padded[..MAX_ROOM_LEN]));
    }

    #[test]
    fn star_matches_every_valid_name(name in room()) {
        prop_assert!(pattern_matches("*", &name));
        prop_assert!(allowed(&["*"], &name));
    }

    #[test]
    fn a_prefix_pattern_matches_exactly_the_names_starting_with_it(
        prefix in "[ab:-]{0,4}",
        name in short_room(),
        suffix in room(),
    ) {
        let pattern = format!("{prefix}*");
        prop_assert_eq!(pattern_matches(&pattern, &name), name.starts_with(&prefix));
        let extended = format!("{prefix}{suffix}");
        prop_assert!(pattern_matches(&pattern, &extended));
    }

    #[test]
    fn an_exact_pattern_matches_only_itself(pattern in short_room(), name in short_room()) {
        prop_assert_eq!(pattern_matches(&pattern, &name), pattern == name);
        prop_assert!(pattern_matches(&pattern, &pattern));
    }

    #[test]
    fn a_star_inside_a_pattern_matches_no_valid_name(
        head in "[ab]{0,3}",
        tail in "[ab:]{1,3}",
        name in short_room(),
    ) {
        // Only a trailing `*` is a wildcard: `a*b` is a name no room can have.
        let pattern = format!("{head}*{tail}");
        prop_assert!(!pattern_matches(&pattern, &name));
    }

    #[test]
    fn allowed_is_any_pattern_matching(
        patterns in prop::collection::vec(prop_oneof![short_room(), "[ab:-]{0,3}\\*"], 0..5),
        name in short_room(),
    ) {
        let any = patterns.iter().any(|p| pattern_matches(p, &name));
        prop_assert_eq!(allowed(&patterns, &name), any);
    }

    #[test]
    fn pack_round_trips(ms in 0..=MS_MAX, seq in 0..=SEQ_MAX) {
        let packed = id::pack(ms, seq);
        prop_assert_eq!(id::millis(packed), ms);
        prop_assert_eq!(id::seq(packed), seq);
        prop_assert_eq!(id::pack(id::millis(packed), id::seq(packed)), packed);
    }

    #[test]
    fn packed_ids_order_as_ms_then_seq(
        a in (0..=MS_MAX, 0..=SEQ_MAX),
        b in prop_oneof![(0..=MS_MAX, 0..=SEQ_MAX), (0..=3u64, 0..=3u64)],
    ) {
        prop_assert_eq!(id::pack(a.0, a.1).cmp(&id::pack(b.0, b.1)), a.cmp(&b));
        // Neighbours: the same millisecond, or the next one's first id.
        let a_id = id::pack(a.0, a.1);
        if a.1 < SEQ_MAX {
            prop_assert_eq!(id::pack(a.0, a.1 + 1), a_id + 1);
        } else if a.0 < MS_MAX {
            prop_assert_eq!(id::pack(a.0 + 1, 0), a_id + 1);
        }
    }

    #[test]
    fn next_after_is_strictly_increasing_whatever_the_clock_does(
        start_ms in 0..=(1u64 << 41),
        start_seq in prop_oneof![Just(0), Just(SEQ_MAX), (SEQ_MAX - 5)..=SEQ_MAX, 0..=SEQ_MAX],
        // Each reading is the last one moved by -1000..=1000 ms (or a jump).
        moves in prop::collection::vec(prop_oneof![
            4 => -1000i64..=1000,
            1 => Just(0i64),
            1 => -(1i64 << 30)..=(1i64 << 30),
        ], 1..200),
    ) {
        let mut last = id::pack(start_ms, start_seq);
        let mut clock = start_ms;
        for m in moves {
            clock = clock.saturating_add_signed(m).min(1 << 41);
            let next = id::next_after(last, clock);
            prop_assert!(next > last, "{} after {} at {}", next, last, clock);
            // Never behind the clock, and no further ahead than it needs:
            // the clock's first id, or the one after the last.
            prop_assert!(id::millis(next) >= clock);
            prop_assert!(
                next == last + 1 || (id::millis(next) == clock && id::seq(next) == 0),
                "{} after {} at {}", next, last, clock
            );
            last = next;
        }
    }
}
