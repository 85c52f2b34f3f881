//! The shipped unit file is valid for systemd (checked with `systemd-analyze verify` where the
//! machine has it), runs tollgate in the foreground as `Type=notify` (what it sends:
//! tests/notify.rs), and wires reload to `tollgate reload`.

mod support;

#[test]
fn unit_file_verifies_and_wires_reload_and_hardening() {
    let unit = include_str!("../systemd/tollgate.service");
    for needle in [
        "ExecReload=/usr/local/bin/tollgate reload -c /etc/tollgate/tollgate.yaml --pid $MAINPID",
        "ExecStartPre=/usr/local/bin/tollgate -t -c",
        "ExecStart=/usr/local/bin/tollgate -c /etc/tollgate/tollgate.yaml\n",
        "Type=notify\n",
        "NotifyAccess=all\n",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "DynamicUser=yes",
        "LimitNOFILE=",
        "TimeoutStopSec=",
        "StateDirectory=tollgate",
    ] {
        assert!(unit.contains(needle), "unit lacks {needle}");
    }
    // Foreground under Type=notify: no daemonizing, no pid file to follow.
    let settings: Vec<&str> = unit.lines().filter(|l| !l.starts_with('#')).collect();
    for gone in ["PIDFile=", "Type=forking", " -d "] {
        assert!(
            !settings.iter().any(|l| l.contains(gone)),
            "unit still has {gone}"
        );
    }
    if std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze not installed: skipping `systemd-analyze verify`");
        return;
    }
    // Point the unit at this build's binary so verify can check the executables exist.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/tollgate", support::bin()),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<_> = text
        .lines()
        .filter(|l| l.contains("tollgate.service"))
        .collect();
    assert!(
        out.status.success() && problems.is_empty(),
        "systemd-analyze verify: {text}"
    );
}
