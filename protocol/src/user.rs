//! User ids: what a token's `sub` (or the server API's `from`) may be.
//!
//! A user id is shown to every member of a room (`from`, `joined`,
//! `presence`), so it must not carry text that rewrites how the text
//! around it is displayed or logged: control characters (newlines, escape
//! sequences), bidirectional overrides and isolates ("Trojan Source",
//! CVE-2021-42574), and invisible format characters that let one id pass
//! for another.

/// Longest user id, in bytes.
pub const MAX_USER_LEN: usize = 256;

/// 1 to [`MAX_USER_LEN`] bytes, none of them a character [`is_refused`].
pub fn is_valid_user_id(user: &str) -> bool {
    !user.is_empty() && user.len() <= MAX_USER_LEN && !user.chars().any(is_refused)
}

/// Control characters (Cc), line and paragraph separators, and the format
/// characters (Cf) of Unicode 15 except ZWNJ and ZWJ, which some scripts
/// and emoji sequences need.
fn is_refused(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{0600}'..='\u{0605}'
                | '\u{061C}'
                | '\u{06DD}'
                | '\u{070F}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08E2}'
                | '\u{180E}'
                | '\u{200B}'
                | '\u{200E}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{110BD}'
                | '\u{110CD}'
                | '\u{13430}'..='\u{1343F}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0001}'
                | '\u{E0020}'..='\u{E007F}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_pass() {
        for id in [
            "u1",
            "alice@example.com",
            "Zoë",
            "用户",
            "a b",
            "👩\u{200D}💻",
            "می\u{200C}خواهم",
        ] {
            assert!(is_valid_user_id(id), "{id:?}");
        }
        assert!(is_valid_user_id(&"x".repeat(MAX_USER_LEN)));
    }

    #[test]
    fn controls_bidi_and_invisibles_are_refused() {
        for id in [
            "",
            "a\nb",
            "a\u{0}",
            "\u{1b}[31mred",
            "a\u{7f}",
            "a\u{85}",
            "admin\u{202E}gnp.exe",
            "\u{202A}x",
            "\u{2066}x\u{2069}",
            "x\u{200E}",
            "x\u{200F}",
            "x\u{061C}",
            "ad\u{200B}min",
            "x\u{2028}",
            "\u{FEFF}x",
            "x\u{E0041}",
        ] {
            assert!(!is_valid_user_id(id), "{id:?}");
        }
        assert!(!is_valid_user_id(&"x".repeat(MAX_USER_LEN + 1)));
    }
}
