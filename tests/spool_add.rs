//! `drain spool add` takes exactly what the operator typed (issue "nothing lost, nothing hangs",
//! point 9): one address per `--to`, the file positional anywhere, addresses checked, and no
//! silent wait on a terminal.

mod common;

use std::process::Command;

use common::*;

/// `--to b@y message.eml`: the file is the body, not a second recipient.
#[test]
fn the_file_after_to_is_the_body_not_a_recipient() {
    let t = TempDir::new("spool-add-to");
    let dir = &t.sub("data");
    let file = t.path().join("message.eml");
    std::fs::write(&file, b"Subject: hi\r\n\r\nbody\r\n").unwrap();
    let f = file.to_string_lossy().into_owned();
    let args = [
        "spool",
        "add",
        "--queue",
        "queue",
        "--from",
        "a@x.example",
        "--to",
        "b@y.example",
        &f,
    ];
    let o = drain(dir, &args);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let cat = drain(dir, &["spool", "cat", &id]);
    assert_eq!(cat.stdout, b"Subject: hi\r\n\r\nbody\r\n");
    let ls = drain(dir, &["spool", "ls", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(v["to"], serde_json::json!(["b@y.example"]));

    // The file first, then repeated --to: two recipients, same body.
    let args = [
        "spool",
        "add",
        &f,
        "--queue",
        "queue",
        "--from",
        "",
        "--to",
        "b@y.example",
        "--to",
        "c@z.example",
    ];
    let o = drain(dir, &args);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let id2 = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert_eq!(drain(dir, &["spool", "cat", &id2]).stdout, cat.stdout);
    assert_eq!(spool_ls(dir).len(), 2);
}

#[test]
fn a_recipient_that_is_not_an_address_is_refused_and_nothing_is_stored() {
    let t = TempDir::new("spool-add-bad");
    let dir = &t.sub("data");
    let file = t.path().join("m.eml");
    std::fs::write(&file, b"x").unwrap();
    let f = file.to_string_lossy().into_owned();
    for (flag, value) in [
        ("--to", "nobody"),
        ("--to", "a b@x"),
        ("--to", "@x"),
        ("--from", "<a@x>"),
    ] {
        let mut args = vec!["spool", "add", "--queue", "queue", &f];
        args.extend(if flag == "--from" {
            ["--to", "b@y"]
        } else {
            ["--from", "a@x"]
        });
        args.extend([flag, value]);
        let o = drain(dir, &args);
        assert_ne!(code(&o), 0, "{flag} {value}: {}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("{flag} {value:?}")),
            "{flag} {value}: {err}"
        );
    }
    assert!(spool_ls(dir).is_empty());
}

/// With no file and standard input a terminal, `spool add` fails at once instead of waiting
/// for input nobody will type. `script` gives the command a real pseudo-terminal.
#[test]
fn no_file_and_a_terminal_on_stdin_is_an_error_not_a_wait() {
    let t = TempDir::new("spool-add-tty");
    let dir = t.path();
    let cmd = format!(
        "{} --data-dir {} spool add --queue queue --from a@x --to b@y",
        env!("CARGO_BIN_EXE_drain"),
        dir.display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs");
    let status = wait_up_to(&mut child, std::time::Duration::from_secs(60));
    let _ = child.kill();
    assert!(
        status.is_some_and(|c| c != 0),
        "spool add waited on a terminal"
    );
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(out.contains("standard input is a terminal"), "{out}");
    assert!(spool_ls(dir).is_empty());
}
