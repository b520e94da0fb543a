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
mod tests;
