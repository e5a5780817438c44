//! What ships around the binary: the systemd unit in `packaging/levee.service` (checked with
//! `systemd-analyze verify` where the tool exists), shell completions and man pages.

use std::process::Command;

fn unit_text() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../packaging/levee.service");
    std::fs::read_to_string(path).expect("packaging/levee.service")
}

#[test]
fn the_systemd_unit_runs_as_its_own_user_with_a_read_only_system() {
    let unit = unit_text();
    for want in [
        "ExecStart=/usr/local/bin/levee serve",
        "DynamicUser=yes",
        "User=levee",
        "StateDirectory=levee",
        "Environment=LEVEE_DATA_DIR=/var/lib/levee",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(unit.contains(want), "{want:?} missing from levee.service");
    }
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed: verification skipped");
        return;
    };
    assert!(probe.status.success());
    // Verify the unit as shipped, with ExecStart pointing at the binary under test (verify
    // checks that the command exists).
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_text().replace("/usr/local/bin/levee", env!("CARGO_BIN_EXE_levee"));
    let path = dir.path().join("levee.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed: {err}");
    // Unknown or misspelt keys are only warnings to systemd: refuse them here.
    assert!(
        !err.contains("levee.service:"),
        "systemd-analyze warned about the unit: {err}"
    );
}

#[test]
fn completions_and_man_pages_are_generated_from_the_flags() {
    let levee = env!("CARGO_BIN_EXE_levee");
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(levee)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8(out.stdout).unwrap();
        for word in ["publish", "declare", "max-bytes", "allow-drops"] {
            assert!(text.contains(word), "{shell} completion lacks {word}");
        }
        if shell == "bash" {
            // The script is valid bash.
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("levee.bash");
            std::fs::write(&file, &text).unwrap();
            if let Ok(check) = Command::new("bash").arg("-n").arg(&file).output() {
                assert!(
                    check.status.success(),
                    "{}",
                    String::from_utf8_lossy(&check.stderr)
                );
            }
        }
    }
    let out = Command::new(levee).arg("man").output().unwrap();
    assert!(out.status.success());
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH levee 1"), "{page}");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(levee)
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let declare = std::fs::read_to_string(dir.path().join("levee-queue-declare.1")).unwrap();
    assert!(declare.contains("max\\-bytes"), "{declare}");
    assert!(dir.path().join("levee-serve.1").exists());
}
