//! The `gateway` binary's command line: exit codes and messages.

use std::process::Command;

fn gateway(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn bad_configuration_exits_64_naming_the_setting() {
    for (args, env, needle) in [
        (vec!["--listen", "0.0.0.0:0"], vec![], "without authentication"),
        (vec!["--max-body-bytes", "999999999"], vec![], "max_body_bytes"),
        (vec!["--ping-interval", "often"], vec![], "ping-interval"),
        (vec![], vec![("GATEWAY_NODE_ID", "bad id!")], "node_id"),
        (vec!["--no-such-flag"], vec![], "no-such-flag"),
        (
            vec!["--config", "/nonexistent/gateway.toml"],
            vec![],
            "/nonexistent/gateway.toml",
        ),
    ] {
        let (code, _, err) = gateway(&args, &env);
        assert_eq!(code, 64, "{args:?} {env:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn check_config_and_help_exit_0() {
    let (code, out, err) = gateway(&["--check-config", "--jwt-secret", "0123456789abcdef0123"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("configuration ok"), "{out}");
    assert!(!out.contains("0123456789abcdef0123"), "secrets are not printed: {out}");
    let (code, out, _) = gateway(&["--help"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("GATEWAY_LISTEN"), "{out}");
}
