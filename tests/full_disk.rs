//! A destination whose disk is full (issue 9, point 5): it refuses new messages definitively
//! (`insufficient_storage`, nothing written), so they go to the healthy destination at once
//! instead of being left in doubt; queries keep working. The full disk is a real 8 MiB tmpfs.

mod common;

use std::process::Command;

use common::*;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: std::path::PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&at).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&at)
            .status()
            .expect("mount runs (the tests run as root, as CI does)");
        assert!(st.success(), "mounting a tmpfs at {} failed", at.display());
        Tmpfs(at)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_destination_refuses_definitively_and_the_rest_goes_elsewhere() {
    let tmp = TempDir::new("full-disk");
    let disk = Tmpfs::mount(tmp.path().join("small"), "8m");
    let mut cfg = ServeConfig::on("127.0.0.78");
    cfg.extra
        .extend(["--max-request-size".to_string(), "16777216".to_string()]);
    let (cert, key) =
        drain::tls::write_self_signed(&["127.0.0.78".into()], tmp.path(), "a").unwrap();
    let a = Server::spawn(disk.0.join("a"), cert, key, &cfg, tmp.path().join("a.log"));
    let b = Server::start(&tmp, "b", ServeConfig::on("127.0.0.79"));
    let src = tmp.sub("src");
    let mut originals = std::collections::BTreeMap::new();
    for i in 0..40u32 {
        let body: Vec<u8> = (0..400_000u32)
            .map(|j| (j.wrapping_mul(31) ^ i) as u8)
            .collect();
        let id = spool_add(&src, "queue", 0, None, &body);
        originals.insert(id, ());
    }
    let ca = ca_bundle(&tmp, &[&a, &b]);
    let o = drain(
        &src,
        &[
            "--json",
            "--no-wait-on-events",
            "--ca-cert",
            ca.to_str().unwrap(),
            &a.dest(),
            &b.dest(),
        ],
    );
    assert_eq!(code(&o), 0, "{}", show(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["in_doubt"], 0);
    let failures = report["failures"].to_string();
    assert!(failures.contains("insufficient_storage"), "{failures}");
    assert!(spool_ls(&src).is_empty());
    let all = census(&[&a, &b]);
    assert_eq!(all.len(), originals.len());
    let on_a = a.ls().len();
    assert!(on_a > 0 && on_a < originals.len(), "A took {on_a}");
}
