//! The README's REST examples, run exactly as written (issue 6): every ```sh block after a
//! `<!-- rest-smoke -->` line in README.md, in order, as one bash script (`set -euo pipefail`)
//! against a test daemon, with `KMS` and `TOKEN` pointing at it. The blocks hash in the shell,
//! sign over REST with curl, create a key, and verify every signature with `openssl`.

mod common;

use common::{Daemon, TestToken};
use std::path::Path;
use std::process::Command;

const MARKER: &str = "<!-- rest-smoke -->";

/// The marked blocks of `readme`, in order.
fn smoke_blocks(readme: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if line.trim() != MARKER {
            continue;
        }
        let fence = lines.next().unwrap_or_default();
        assert_eq!(
            fence.trim(),
            "```sh",
            "a {MARKER} line must be followed by ```sh"
        );
        let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        blocks.push(block.join("\n"));
    }
    blocks
}

fn require(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} is not installed: the README's REST examples need curl, jq, base64 and openssl \
         (./scripts/test installs them)"
    );
}

#[test]
fn the_readme_curl_examples_run_as_written() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("read README.md");
    let blocks = smoke_blocks(&readme);
    assert!(
        blocks.len() >= 3,
        "README.md has {} rest-smoke blocks",
        blocks.len()
    );
    let script = blocks.join("\n\n");
    // What the README promises to show.
    for needle in [
        ":signHash",
        ":sign\"",
        "/publicKey",
        "openssl dgst -sha256 -binary msg | base64",
        "openssl dgst -sha256 -verify",
        "rsa_padding_mode:pss",
        "-d '{\"folderId\"",
        "/operations/",
    ] {
        assert!(
            script.contains(needle),
            "the README's REST examples lack {needle:?}"
        );
    }
    for tool in ["bash", "curl", "jq", "base64", "openssl"] {
        require(tool);
    }

    let token = TestToken::dev();
    let mut daemon = Daemon::serve(&token, &[]);
    let work = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(work.path())
        .env("KMS", format!("http://{}", daemon.addr()))
        .env("TOKEN", daemon.admin_token())
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the README's REST examples failed ({}):\n--- script ---\n{script}\n--- stdout ---\n\
         {stdout}\n--- stderr ---\n{stderr}\n--- daemon ---\n{}",
        out.status,
        daemon.describe()
    );
    // Four signatures verified by openssl: SignHash, Sign, RSA-PSS Sign, the new key's SignHash.
    assert_eq!(
        stdout.matches("Verified OK").count(),
        4,
        "{stdout}\n{stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines.contains(&"true"),
        "the operation was not done: {stdout}"
    );
    assert!(
        lines.contains(&"INACTIVE"),
        "the key was not deactivated: {stdout}"
    );
    assert_eq!(daemon.sigterm_blocking().code(), Some(0));
}
