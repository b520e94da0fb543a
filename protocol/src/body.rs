//! The `body` of a message, as the client wrote it.
//!
//! A body is opaque (PROTOCOL.md): signed or end-to-end encrypted JSON must
//! come back byte for byte, so it is never re-serialised. simd-json
//! rewrites a frame while it parses it (and refuses integers beyond 64
//! bits), so [`find_body`] first finds the body in the frame as it came and
//! validates it, in one pass; the request parser then parses the rest of
//! the frame. The server API checks its body with [`validate`]: one
//! grammar and one depth limit for both.

use std::ops::Range;

/// Deepest nesting of arrays and objects a `body` may have, on WebSocket
/// and on the server API alike: `1` and `"x"` are 0 deep, `[]` is 1 deep,
/// `{"a":[1]}` 2.
pub const MAX_BODY_DEPTH: usize = 64;

// The open containers are kept as bits of one u64.
const _: () = assert!(MAX_BODY_DEPTH <= 64);

/// Why a body cannot be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("malformed JSON")]
    Malformed,
    #[error("\"body\" nests arrays and objects deeper than {MAX_BODY_DEPTH} levels")]
    TooDeep,
    #[error("\"body\" appears twice")]
    Duplicate,
}

/// The byte range of the top-level `"body"` value of a request object (its
/// own bytes, without the whitespace around it), or `None` without one.
/// The body is validated (RFC 8259 grammar, [`MAX_BODY_DEPTH`]; its UTF-8
/// is the caller's to check); the rest of the frame is only skipped, so on
/// a malformed frame the answer means nothing and the caller's parser must
/// still validate it. Never panics.
pub fn find_body(frame: &[u8]) -> Result<Option<Range<usize>>, BodyError> {
    let mut s = Scan { b: frame, i: 0 };
    s.ws();
    if s.peek() != Some(b'{') {
        // Not an object: the parser says what it is.
        return Ok(None);
    }
    s.i += 1;
    s.ws();
    if s.peek() == Some(b'}') {
        return Ok(None);
    }
    let mut found = None;
    loop {
        s.ws();
        let key_start = s.i;
        s.skip_string()?;
        let is_body = is_body_key(&frame[key_start..s.i]);
        s.ws();
        s.expect(b':')?;
        s.ws();
        let start = s.i;
        if is_body {
            if found.is_some() {
                return Err(BodyError::Duplicate);
            }
            s.value()?;
            found = Some(start..s.i);
        } else {
            s.skip_value()?;
        }
        s.ws();
        match s.next() {
            Some(b',') => {}
            Some(b'}') => return Ok(found),
            _ => return Err(BodyError::Malformed),
        }
    }
}

/// Checks that `body` is one JSON value (whitespace around it allowed)
/// within [`MAX_BODY_DEPTH`]: the same rules [`find_body`] applies.
pub fn validate(body: &str) -> Result<(), BodyError> {
    let mut s = Scan {
        b: body.as_bytes(),
        i: 0,
    };
    s.ws();
    s.value()?;
    s.ws();
    if s.i == body.len() {
        Ok(())
    } else {
        Err(BodyError::Malformed)
    }
}

/// `key` (with its quotes) names `body`, escaped or not: the parser
/// unescapes keys, so `"b\u006fdy"` is the body too.
fn is_body_key(key: &[u8]) -> bool {
    key == b"\"body\"" || (key.contains(&b'\\') && serde_json::from_slice::<String>(key).is_ok_and(|k| k == "body"))
}

/// The first byte of `text` that ends a run of plain string content: `"`,
/// `\` or a control character. Eight bytes at a time: message text and
/// base64 ciphertext are mostly long strings.
fn find_special(text: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    let mut chunks = text.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let w = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        // A byte's high bit is set where it is zero, or below 0x20; bytes
        // above a true hit may be false hits, so the lowest one is right.
        let hits = (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (w.wrapping_sub(ONES * 0x20) & !w);
        let hits = hits & HIGH;
        if hits != 0 {
            return Some(at + hits.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    let tail = chunks.remainder();
    tail.iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|p| at + p)
}

/// A cursor over JSON text.
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scan<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek();
        self.i += 1;
        c
    }

    fn expect(&mut self, c: u8) -> Result<(), BodyError> {
        if self.next() == Some(c) {
            Ok(())
        } else {
            Err(BodyError::Malformed)
        }
    }

    /// Skips JSON whitespace (RFC 8259: space, tab, LF, CR).
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// At an opening quote: moves past the closing one, unchecked. A
    /// backslash escapes the byte after it (`\"`, `\\`).
    fn skip_string(&mut self) -> Result<(), BodyError> {
        self.expect(b'"')?;
        loop {
            let rest = self.b.get(self.i..).unwrap_or_default();
            let Some(at) = find_special(rest) else {
                return Err(BodyError::Malformed);
            };
            self.i += at + 1;
            match rest[at] {
                b'"' => return Ok(()),
                b'\\' => self.i += 1,
                _ => {}
            }
        }
    }

    /// Moves past one value of a field other than the body, unchecked:
    /// brackets are counted, not matched by kind.
    fn skip_value(&mut self) -> Result<(), BodyError> {
        match self.peek() {
            Some(b'"') => self.skip_string(),
            Some(b'[' | b'{') => {
                let mut depth = 0usize;
                loop {
                    match self.next() {
                        None => return Err(BodyError::Malformed),
                        Some(b'"') => {
                            self.i -= 1;
                            self.skip_string()?;
                        }
                        Some(b'[' | b'{') => depth += 1,
                        Some(b']' | b'}') => {
                            depth -= 1;
                            if depth == 0 {
                                return Ok(());
                            }
                        }
                        Some(_) => {}
                    }
                }
            }
            // A number or a literal, up to what ends it (an empty one is
            // left to the parser to refuse).
            _ => {
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                ) {
                    self.i += 1;
                }
                Ok(())
            }
        }
    }

    /// Moves past one value, checking it: RFC 8259's grammar (with UTF-16
    /// surrogate escapes in pairs, as I-JSON asks) and [`MAX_BODY_DEPTH`].
    fn value(&mut self) -> Result<(), BodyError> {
        // Bit n is set when the container n+1 deep is an object.
        let mut objects: u64 = 0;
        let mut depth = 0usize;
        loop {
            // A value is expected here.
            self.ws();
            match self.peek() {
                Some(c @ (b'{' | b'[')) => {
                    if depth == MAX_BODY_DEPTH {
                        return Err(BodyError::TooDeep);
                    }
                    self.i += 1;
                    let object = c == b'{';
                    objects = (objects & !(1 << depth)) | (u64::from(object) << depth);
                    depth += 1;
                    self.ws();
                    if self.peek() == Some(if object { b'}' } else { b']' }) {
                        self.i += 1;
                        depth -= 1;
                    } else {
                        if object {
                            self.key()?;
                        }
                        continue;
                    }
                }
                Some(b'"') => self.string()?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                _ => return Err(BodyError::Malformed),
            }
            // A value ended: close containers until one wants another.
            loop {
                if depth == 0 {
                    return Ok(());
                }
                let object = objects & (1 << (depth - 1)) != 0;
                self.ws();
                match self.next() {
                    Some(b',') => {
                        if object {
                            self.key()?;
                        }
                        break;
                    }
                    Some(b'}') if object => depth -= 1,
                    Some(b']') if !object => depth -= 1,
                    _ => return Err(BodyError::Malformed),
                }
            }
        }
    }

    /// An object's key and its colon, whitespace around them.
    fn key(&mut self) -> Result<(), BodyError> {
        self.ws();
        self.string()?;
        self.ws();
        self.expect(b':')
    }

    /// A string: no raw control characters, only the escapes RFC 8259
    /// names, surrogate escapes in pairs.
    fn string(&mut self) -> Result<(), BodyError> {
        self.expect(b'"')?;
        loop {
            let rest = self.b.get(self.i..).unwrap_or_default();
            let Some(at) = find_special(rest) else {
                return Err(BodyError::Malformed);
            };
            self.i += at + 1;
            match rest[at] {
                b'"' => return Ok(()),
                b'\\' => self.escape()?,
                _ => return Err(BodyError::Malformed),
            }
        }
    }

    /// After a backslash.
    fn escape(&mut self) -> Result<(), BodyError> {
        match self.next() {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(()),
            Some(b'u') => match self.hex4()? {
                0xD800..=0xDBFF => {
                    // A high surrogate: a low one must follow.
                    if self.next() != Some(b'\\') || self.next() != Some(b'u') {
                        return Err(BodyError::Malformed);
                    }
                    match self.hex4()? {
                        0xDC00..=0xDFFF => Ok(()),
                        _ => Err(BodyError::Malformed),
                    }
                }
                0xDC00..=0xDFFF => Err(BodyError::Malformed),
                _ => Ok(()),
            },
            _ => Err(BodyError::Malformed),
        }
    }

    fn hex4(&mut self) -> Result<u16, BodyError> {
        let mut n = 0u16;
        for _ in 0..4 {
            let d = match self.next() {
                Some(c @ b'0'..=b'9') => c - b'0',
                Some(c @ b'a'..=b'f') => c - b'a' + 10,
                Some(c @ b'A'..=b'F') => c - b'A' + 10,
                _ => return Err(BodyError::Malformed),
            };
            n = n << 4 | u16::from(d);
        }
        Ok(n)
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, any length.
    fn number(&mut self) -> Result<(), BodyError> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.next() {
            Some(b'0') => {}
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(BodyError::Malformed),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.digits1()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            self.digits1()?;
        }
        Ok(())
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
    }

    fn digits1(&mut self) -> Result<(), BodyError> {
        let start = self.i;
        self.digits();
        if self.i == start {
            Err(BodyError::Malformed)
        } else {
            Ok(())
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), BodyError> {
        if self.b.get(self.i..).is_some_and(|rest| rest.starts_with(word)) {
            self.i += word.len();
            Ok(())
        } else {
            Err(BodyError::Malformed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(frame: &str) -> Result<Option<&str>, BodyError> {
        find_body(frame.as_bytes()).map(|r| r.map(|r| &frame[r]))
    }

    fn nested(n: usize) -> String {
        format!("{}{}", "[".repeat(n), "]".repeat(n))
    }

    #[test]
    fn finds_the_body_as_written() {
        for (frame, want) in [
            (r#"{"op":"send","body":{"a":1}}"#, r#"{"a":1}"#),
            (r#"{"body":1}"#, "1"),
            (r#"{"body":-0}"#, "-0"),
            (r#"{"body":1E2 }"#, "1E2"),
            (
                r#"{"body":0.10000000000000000555,"op":"send"}"#,
                "0.10000000000000000555",
            ),
            (
                r#"{"body":123456789012345678901234567890}"#,
                "123456789012345678901234567890",
            ),
            (r#"{"body":true}"#, "true"),
            (r#"{"body":null,"x":1}"#, "null"),
            (
                " {\r\n\t\"body\" :\n [ 1 , { \"a\" : [ ] } ] \n} ",
                "[ 1 , { \"a\" : [ ] } ]",
            ),
            // Escapes holding quotes and backslashes, brackets inside strings.
            (r#"{"body":"a\"b\\","op":"x"}"#, r#""a\"b\\""#),
            (r#"{"body":"\\"}"#, r#""\\""#),
            (
                r#"{"body":["]}\"[{",{"k}":"v]"}],"z":"}"}"#,
                r#"["]}\"[{",{"k}":"v]"}]"#,
            ),
            (r#"{"body":"\u00e9\/\ud83d\ude00"}"#, r#""\u00e9\/\ud83d\ude00""#),
            // Keys that look like body, or hold it escaped.
            (r#"{"x":{"body":1},"bod":2,"body":3}"#, "3"),
            (r#"{"b\u006fdy":[2]}"#, "[2]"),
            (r#"{"a\"body":1,"body":"b"}"#, r#""b""#),
        ] {
            assert_eq!(body(frame), Ok(Some(want)), "{frame}");
        }
    }

    #[test]
    fn no_body_or_a_repeated_one() {
        assert_eq!(body(r#"{}"#), Ok(None));
        assert_eq!(body(r#"{"op":"ping","id":1}"#), Ok(None));
        assert_eq!(body(r#"{"x":{"body":1}}"#), Ok(None));
        assert_eq!(body(r#"{"body":1,"body":2}"#), Err(BodyError::Duplicate));
        assert_eq!(body(r#"{"body":1,"b\u006fdy":2}"#), Err(BodyError::Duplicate));
    }

    #[test]
    fn depth_is_limited_in_the_body_only() {
        let ok = nested(MAX_BODY_DEPTH);
        assert_eq!(body(&format!(r#"{{"body":{ok}}}"#)), Ok(Some(ok.as_str())));
        let deep = nested(MAX_BODY_DEPTH + 1);
        assert_eq!(body(&format!(r#"{{"body":{deep}}}"#)), Err(BodyError::TooDeep));
        assert_eq!(body(&format!(r#"{{"x":{deep},"body":1}}"#)), Ok(Some("1")));
        // Brackets in strings do not count.
        let s = format!(r#""{}""#, "[".repeat(1000));
        assert_eq!(validate(&s), Ok(()));
        assert_eq!(validate(&ok), Ok(()));
        assert_eq!(validate(" 5 "), Ok(()));
        assert_eq!(validate(&deep), Err(BodyError::TooDeep));
        let objects = format!(
            "{}1{}",
            r#"{"a":"#.repeat(MAX_BODY_DEPTH + 1),
            "}".repeat(MAX_BODY_DEPTH + 1)
        );
        assert_eq!(validate(&objects), Err(BodyError::TooDeep));
    }

    #[test]
    fn find_special_finds_the_first_stop() {
        let naive = |t: &[u8]| t.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
        let mut text: Vec<u8> = (0..40).map(|i| b'a' + (i % 26) as u8).collect();
        text.extend_from_slice("é€😀".as_bytes());
        assert_eq!(find_special(&text), None);
        for stop in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
            for at in 0..text.len() {
                let mut t = text.clone();
                t[at] = stop;
                // A second stop after the first must not hide it.
                if at + 3 < t.len() {
                    t[at + 3] = b'"';
                }
                for len in 0..=t.len() {
                    assert_eq!(find_special(&t[..len]), naive(&t[..len]), "{stop} at {at}, len {len}");
                }
            }
        }
        // 0x20 and 0x7f and high bytes are plain content.
        assert_eq!(find_special(b" \x7f\x80\xff !#[]{}abcdefgh"), None);
    }

    #[test]
    fn other_fields_are_skipped_whatever_they_hold() {
        for (frame, want) in [
            (r#"{"x":"]}\"","body":1}"#, "1"),
            (r#"{"x":"\\","body":2}"#, "2"),
            (r#"{"x":[{"a":"}"},[]],"body":3}"#, "3"),
            (r#"{"id":12,"body":4}"#, "4"),
            (r#"{"body":5,"id":12}"#, "5"),
            (r#"{"t":true,"n":null,"body":6 ,"e":-1.5e+3}"#, "6"),
        ] {
            assert_eq!(body(frame), Ok(Some(want)), "{frame}");
        }
    }

    /// What serde_json (the oracle) thinks of `text`: `None` where the two
    /// rules differ on purpose (serde_json refuses numbers beyond f64).
    fn oracle(text: &str) -> Option<bool> {
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(_) => Some(true),
            Err(e) if e.to_string().contains("number out of range") => None,
            Err(_) => Some(false),
        }
    }

    const VALID: &[&str] = &[
        "0",
        "-0",
        "-0.0e-0",
        "1E2",
        "12.5e+10",
        "123456789012345678901234567890",
        "0.10000000000000000555",
        "true",
        "false",
        "null",
        r#""""#,
        r#""a\"b\\c\/d\b\f\n\r\t\u00e9\uD83D\uDE00""#,
        "[]",
        "{}",
        " [ 1 , [ ] , { } , \"x\" ] ",
        r#"{"a":{"b":[1,{"c":null}]},"d":"]}"}"#,
    ];

    #[test]
    fn grammar_agrees_with_serde_json() {
        for text in VALID {
            assert_eq!(validate(text), Ok(()), "{text}");
        }
        for text in [
            "",
            " ",
            "01",
            "-",
            "-01",
            "1.",
            ".5",
            "1e",
            "1e+",
            "+1",
            "0x10",
            "1 2",
            "tru",
            "nul",
            "True",
            "[1,]",
            "[,1]",
            "{,}",
            r#"{"a"}"#,
            r#"{"a":}"#,
            r#"{"a":1,}"#,
            r#"{1:2}"#,
            "[1}",
            "{]",
            "[[]",
            r#""\x""#,
            r#""\u12""#,
            r#""\u12G4""#,
            "\"\u{1}\"",
            "\"a\nb\"",
            r#""\uD800""#,
            r#""\uDC00""#,
            r#""\uD800\u0041""#,
            r#""unterminated"#,
            r#""\"#,
        ] {
            assert_eq!(validate(text), Err(BodyError::Malformed), "{text:?}");
            assert_eq!(oracle(text), Some(false), "oracle: {text:?}");
        }
        // Mutations of the valid ones: both must agree on every one.
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut rand = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let alphabet = b"{}[]\",:\\ 0123456789eE+-.tfnulrsaxu/\x01";
        for _ in 0..50_000 {
            let mut text = VALID[rand(VALID.len())].as_bytes().to_vec();
            for _ in 0..1 + rand(3) {
                let at = rand(text.len() + 1);
                match rand(3) {
                    0 if at < text.len() => {
                        text.remove(at);
                    }
                    1 if at < text.len() => text[at] = alphabet[rand(alphabet.len())],
                    _ => text.insert(at, alphabet[rand(alphabet.len())]),
                }
            }
            let text = String::from_utf8(text).unwrap();
            if let Some(valid) = oracle(&text) {
                assert_eq!(validate(&text).is_ok(), valid, "{text:?}");
                // The same text as a body, found in a frame.
                let frame = format!(r#"{{"op":"send","body":{text}}}"#);
                if valid {
                    assert_eq!(
                        body(&frame),
                        Ok(Some(text.trim_matches([' ', '\t', '\n', '\r']))),
                        "{frame}"
                    );
                } else if oracle(&frame) == Some(true) {
                    panic!("frame valid with an invalid body? {frame}");
                }
            }
        }
    }

    #[test]
    fn malformed_input_never_panics() {
        assert_eq!(body("[1]"), Ok(None));
        assert_eq!(body(""), Ok(None));
        for frame in [
            "{",
            r#"{"body""#,
            r#"{"body":"#,
            r#"{"body":"abc"#,
            r#"{"body":"abc\"#,
            r#"{"body":[1,2"#,
            r#"{"body":]]]}"#,
            r#"{"body":1"#,
            r#"{"body" 1}"#,
            r#"{body:1}"#,
            r#"{"a":1,}"#,
            r#"{"body":1 2}"#,
        ] {
            assert!(find_body(frame.as_bytes()).is_err(), "{frame}");
        }
    }
}
