//! Room names and the `rooms` claim patterns that grant access to them.

/// Longest room name PROTOCOL.md allows.
pub const MAX_ROOM_LEN: usize = 128;

/// `room`: 1 to 128 characters of `[A-Za-z0-9_.:-]`.
pub fn is_valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= MAX_ROOM_LEN
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// One pattern of a `rooms` claim: `*`, an exact name, or a prefix ending
/// in `*` (`team-42:*`).
pub fn pattern_matches(pattern: &str, room: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => room.starts_with(prefix),
        None => pattern == room,
    }
}

/// Whether any pattern of the list grants `room`.
pub fn allowed<S: AsRef<str>>(patterns: &[S], room: &str) -> bool {
    patterns.iter().any(|p| pattern_matches(p.as_ref(), room))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names() {
        assert!(is_valid_room("r1"));
        assert!(is_valid_room("team-42:general.v2_x"));
        assert!(is_valid_room(&"a".repeat(128)));
        assert!(!is_valid_room(""));
        assert!(!is_valid_room(&"a".repeat(129)));
        assert!(!is_valid_room("has space"));
        assert!(!is_valid_room("slash/no"));
        assert!(!is_valid_room("é"));
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("team-42:*", "team-42:general"));
        assert!(!pattern_matches("team-42:*", "team-43:general"));
        assert!(pattern_matches("lobby", "lobby"));
        assert!(!pattern_matches("lobby", "lobby2"));
        assert!(allowed(&["a", "b:*"], "b:c"));
        assert!(!allowed::<&str>(&[], "a"));
    }
}
