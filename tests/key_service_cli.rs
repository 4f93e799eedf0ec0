//! `p11kms keys create|get|list|update|delete|undelete|operations` against a running daemon,
//! in table and `--json` form, and the CLI's error reporting.

mod common;
mod key_service_support;

use common::{assert_status, Daemon, Exited, Launch};
use key_service_support::{managed_token, Clients};
use serde_json::Value;
use tonic::Code;

/// Runs `p11kms keys --endpoint <daemon> <args…>` with the daemon's admin token in
/// `P11KMS_TOKEN` (a `--token-file` among `args` wins over it).
fn keys(daemon: &Daemon, args: &[&str]) -> Exited {
    let mut launch = Launch::new(["keys", "--endpoint"])
        .arg(daemon.endpoint())
        .env("P11KMS_TOKEN", daemon.admin_token());
    for a in args {
        launch = launch.arg(a);
    }
    launch.output()
}

#[track_caller]
fn ok(out: Exited) -> String {
    assert!(out.status.success(), "p11kms keys failed:\n{out}");
    out.stdout
}

#[track_caller]
fn json(out: Exited) -> Value {
    let text = ok(out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

#[track_caller]
fn fails(out: Exited, needles: &[&str]) {
    assert!(!out.status.success(), "expected a failure:\n{out}");
    for n in needles {
        assert!(out.stderr.contains(n), "stderr lacks {n:?}:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_cli_round_trip_in_tables_and_json() {
    let token = managed_token(&[]);
    let daemon = Daemon::serve(&token, &[]);
    let mut c = Clients::connect(&daemon).await;

    // create, --json: the key, proto3 JSON names.
    let created = json(keys(
        &daemon,
        &[
            "--json",
            "create",
            "--folder-id",
            "cli",
            "--algorithm",
            "ecdsa-nist-p256-sha-256",
            "--name",
            "first",
            "--description",
            "made by the CLI",
            "--label",
            "env=dev",
            "--label",
            "team=pki",
            "--deletion-protection",
        ],
    ));
    let id = created["id"].as_str().expect("id").to_string();
    assert_eq!(id.len(), 20);
    assert_eq!(created["folderId"], "cli");
    assert_eq!(created["name"], "first");
    assert_eq!(created["description"], "made by the CLI");
    assert_eq!(created["labels"]["env"], "dev");
    assert_eq!(created["labels"]["team"], "pki");
    assert_eq!(created["status"], "ACTIVE");
    assert_eq!(created["signatureAlgorithm"], "ECDSA_NIST_P256_SHA_256");
    assert_eq!(created["deletionProtection"], true);
    assert!(created["createdAt"].as_str().unwrap().ends_with('Z'));
    // The key is real: it signs through the crypto service.
    let key = c.get(&id).await.unwrap();
    c.sign_verified(&key).await.unwrap();

    // create, table: one field per line.
    let table = ok(keys(
        &daemon,
        &[
            "create",
            "--folder-id",
            "cli",
            "--algorithm",
            "ECDSA_NIST_P384_SHA_384",
        ],
    ));
    let second = table
        .lines()
        .find_map(|l| l.strip_prefix("id"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no id line:\n{table}"));
    assert!(table.contains("ECDSA_NIST_P384_SHA_384"), "{table}");
    assert!(table.contains("ACTIVE"), "{table}");

    // get: table and JSON agree with create.
    let shown = ok(keys(&daemon, &["get", &id]));
    for needle in [
        &id[..],
        "first",
        "made by the CLI",
        "env=dev,team=pki",
        "true",
    ] {
        assert!(shown.contains(needle), "get lacks {needle:?}:\n{shown}");
    }
    assert_eq!(json(keys(&daemon, &["--json", "get", &id])), created);

    // list: a table with a header and both keys in id order; JSON; one page at a time.
    let listed = ok(keys(&daemon, &["list", "--folder-id", "cli"]));
    let lines: Vec<&str> = listed.lines().collect();
    assert!(lines[0].starts_with("ID"), "{listed}");
    assert!(lines[0].contains("SIGNATURE ALGORITHM") && lines[0].contains("STATUS"));
    let mut both = vec![id.clone(), second.clone()];
    both.sort();
    let rows: Vec<String> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    assert_eq!(rows, both);
    let as_json = json(keys(&daemon, &["--json", "list", "--folder-id", "cli"]));
    let json_ids: Vec<&str> = as_json["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(json_ids, both);
    let first_page = json(keys(
        &daemon,
        &[
            "--json",
            "list",
            "--folder-id",
            "cli",
            "--page-size",
            "1",
            "--one-page",
        ],
    ));
    assert_eq!(first_page["keys"].as_array().unwrap().len(), 1);
    let next = first_page["nextPageToken"].as_str().unwrap();
    assert!(!next.is_empty());
    let second_page = json(keys(
        &daemon,
        &[
            "--json",
            "list",
            "--folder-id",
            "cli",
            "--page-size",
            "1",
            "--page-token",
            next,
        ],
    ));
    assert_eq!(second_page["keys"][0]["id"], both[1].as_str());
    let table_page = ok(keys(
        &daemon,
        &[
            "list",
            "--folder-id",
            "cli",
            "--page-size",
            "1",
            "--one-page",
        ],
    ));
    assert!(table_page.contains("next page token: "), "{table_page}");

    // update: several fields at once; the key is INACTIVE for signing.
    let updated = json(keys(
        &daemon,
        &[
            "--json",
            "update",
            &id,
            "--status",
            "inactive",
            "--name",
            "renamed",
            "--clear-labels",
        ],
    ));
    assert_eq!(updated["status"], "INACTIVE");
    assert_eq!(updated["name"], "renamed");
    assert_eq!(updated["labels"], serde_json::json!({}));
    assert_eq!(updated["description"], "made by the CLI");
    assert_status(
        c.kms.sign(&id, b"x").await,
        Code::FailedPrecondition,
        &["INACTIVE"],
    );
    ok(keys(&daemon, &["update", &id, "--status", "ACTIVE"]));
    c.sign_verified(&key).await.unwrap();

    // delete: refused while protected; then deleted, gone, and restored by undelete.
    fails(
        keys(&daemon, &["delete", &id]),
        &["FailedPrecondition", "deletion protection"],
    );
    ok(keys(
        &daemon,
        &["update", &id, "--deletion-protection", "false"],
    ));
    let deleted = ok(keys(&daemon, &["delete", &id]));
    assert!(
        deleted.contains("deleted") && deleted.contains(&id),
        "{deleted}"
    );
    fails(keys(&daemon, &["get", &id]), &["NotFound", &id]);
    assert_status(c.kms.sign(&id, b"x").await, Code::NotFound, &[]);
    let restored = json(keys(&daemon, &["--json", "undelete", &id]));
    assert_eq!(restored["id"], id.as_str());
    assert_eq!(restored["status"], "ACTIVE");
    c.sign_verified(&key).await.unwrap();

    // operations: newest first, table and JSON.
    let ops = json(keys(&daemon, &["--json", "operations", &id]));
    let descriptions: Vec<&str> = ops["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["description"].as_str().unwrap())
        .collect();
    assert_eq!(
        descriptions,
        [
            "Undelete asymmetric signature key",
            "Delete asymmetric signature key",
            "Update asymmetric signature key",
            "Update asymmetric signature key",
            "Update asymmetric signature key",
            "Create asymmetric signature key",
        ]
    );
    assert_eq!(
        ops["operations"][5]["metadata"]["@type"],
        "type.googleapis.com/yandex.cloud.kms.v1.asymmetricsignature.CreateAsymmetricSignatureKeyMetadata"
    );
    assert_eq!(ops["operations"][5]["response"]["id"], id.as_str());
    let ops_table = ok(keys(&daemon, &["operations", &id]));
    assert!(ops_table.starts_with("ID"), "{ops_table}");
    assert_eq!(ops_table.lines().count(), 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_cli_reports_errors_clearly() {
    let token = managed_token(&[]);
    let daemon = Daemon::serve(&token, &[]);

    fails(
        keys(
            &daemon,
            &["create", "--folder-id", "f", "--algorithm", "rsa-1024"],
        ),
        &["--algorithm", "rsa-1024", "ECDSA_NIST_P256_SHA_256"],
    );
    fails(
        keys(&daemon, &["update", "somekey"]),
        &["nothing to change"],
    );
    fails(
        keys(&daemon, &["update", "somekey", "--status", "creating"]),
        &["ACTIVE or INACTIVE"],
    );
    fails(
        keys(
            &daemon,
            &[
                "create",
                "--folder-id",
                "f",
                "--algorithm",
                "ecdsa-nist-p256-sha-256",
                "--label",
                "novalue",
            ],
        ),
        &["KEY=VALUE"],
    );
    // Server-side validation comes back with its code and message.
    fails(
        keys(
            &daemon,
            &[
                "create",
                "--folder-id",
                "f",
                "--algorithm",
                "ecdsa-nist-p256-sha-256",
                "--label",
                "Bad=x",
            ],
        ),
        &["InvalidArgument", "labels"],
    );
    fails(
        keys(
            &daemon,
            &["update", "dev-ecdsa-nist-p256-sha-256", "--name", "x"],
        ),
        &["FailedPrecondition", "managed by the config file"],
    );
    fails(
        keys(&daemon, &["get", "nosuchkey"]),
        &["NotFound", "nosuchkey"],
    );
    // The token comes from a file (or P11KMS_TOKEN), never from a flag value.
    fails(
        keys(&daemon, &["--token-file", "/nonexistent/token", "get", "x"]),
        &["cannot read --token-file", "/nonexistent/token"],
    );
    // The token is sent: the admin token from a file works, a wrong one (from a file or the
    // environment) is refused, and so is none at all.
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{}\n", daemon.admin_token())).unwrap();
    ok(keys(
        &daemon,
        &[
            "--token-file",
            token_file.to_str().unwrap(),
            "list",
            "--folder-id",
            "f",
        ],
    ));
    let wrong_file = dir.path().join("wrong");
    std::fs::write(&wrong_file, "t0ken\n").unwrap();
    fails(
        keys(
            &daemon,
            &[
                "--token-file",
                wrong_file.to_str().unwrap(),
                "list",
                "--folder-id",
                "f",
            ],
        ),
        &["Unauthenticated"],
    );
    let with_env = Launch::new(["keys", "--endpoint"])
        .arg(daemon.endpoint())
        .env("P11KMS_TOKEN", daemon.admin_token())
        .arg("list")
        .arg("--folder-id")
        .arg("p11kms-config")
        .output();
    assert!(ok(with_env).contains("dev-ecdsa-nist-p256-sha-256"));
    for token in [Some("t0ken"), None] {
        let mut launch = Launch::new(["keys", "--endpoint"]).arg(daemon.endpoint());
        if let Some(t) = token {
            launch = launch.env("P11KMS_TOKEN", t);
        }
        fails(
            launch
                .arg("list")
                .arg("--folder-id")
                .arg("p11kms-config")
                .output(),
            &["Unauthenticated"],
        );
    }
    let help = Launch::new(["keys", "--help"]).output();
    assert!(
        !help.stdout.contains("--token "),
        "no flag takes the token itself:\n{help}"
    );

    // Nothing listens on the endpoint.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = unused.local_addr().unwrap().port();
    drop(unused);
    let out = Launch::new(["keys", "--endpoint"])
        .arg(format!("http://127.0.0.1:{port}"))
        .arg("get")
        .arg("x")
        .output();
    fails(out, &["cannot connect to"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_mode_serves_the_key_service() {
    let state = common::TestToken::dev();
    let daemon = Daemon::dev(state.state_dir(), &[]);
    let banner = daemon.stdout();
    assert!(
        banner.contains("p11kms keys"),
        "the banner shows the keys CLI:\n{banner}"
    );
    let created = json(keys(
        &daemon,
        &[
            "--json",
            "create",
            "--folder-id",
            "dev",
            "--algorithm",
            "ecdsa-secp256-k1-sha-256",
        ],
    ));
    let id = created["id"].as_str().unwrap().to_string();
    let mut c = Clients::connect(&daemon).await;
    let key = c.get(&id).await.unwrap();
    c.sign_verified(&key).await.unwrap();
    // The 13 dev keys stay config-declared, listed and read-only.
    let listed = json(keys(
        &daemon,
        &["--json", "list", "--folder-id", "p11kms-config"],
    ));
    assert_eq!(listed["keys"].as_array().unwrap().len(), 13);
    fails(
        keys(&daemon, &["delete", "dev-rsa-2048-sign-pss-sha-256"]),
        &["managed by the config file"],
    );
}
