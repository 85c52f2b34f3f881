//! The shipped unit file is valid for systemd (checked with `systemd-analyze verify` where the
//! machine has it) and wires reload to `tollgate reload`.

mod support;

#[test]
fn unit_file_verifies_and_wires_reload_and_hardening() {
    let unit = include_str!("../systemd/tollgate.service");
    for needle in [
        "ExecReload=/usr/local/bin/tollgate reload -c /etc/tollgate/tollgate.yaml --pid $MAINPID",
        "ExecStartPre=/usr/local/bin/tollgate -t -c",
        "Type=forking",
        "PIDFile=/run/tollgate/tollgate.pid",
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
