//! Build script: the git commit the node is built from, for the
//! `gateway_build_info{commit}` metric (`GATEWAY_COMMIT`), or `unknown`
//! outside a git checkout (a source tarball, a container build without
//! `.git`). Reruns when the checked-out commit changes, or the embedded
//! demo page.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=GATEWAY_COMMIT={commit}");
    // HEAD names the branch; the branch's ref (loose or packed) the commit.
    // `--git-path` finds them in a worktree too.
    // A missing file would rerun this script on every build: only those
    // that exist are watched.
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    for path in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
        if let Some(p) = git(&["rev-parse", "--git-path", path])
            && std::path::Path::new(&p).exists()
        {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
    // The demo page is embedded (src/demo.rs): a file added to or changed
    // in assets/demo rebuilds the binary.
    println!("cargo:rerun-if-changed=assets/demo");
}
