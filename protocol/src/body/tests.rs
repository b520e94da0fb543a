//! The body scanner and validator against hand-picked edge cases and,
//! for the grammar, serde_json over mutated inputs.

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
