//! The shipped unit file is valid for systemd (checked with `systemd-analyze verify` where the
//! machine has it), runs tollgate in the foreground as `Type=notify` (what it sends:
//! tests/notify.rs), and wires reload to `tollgate reload`.

mod support;

#[test]
fn unit_file_verifies_and_wires_reload_and_hardening() {
    let unit = include_str!("../systemd/tollgate.service");
    for needle in [
        "ExecReload=/usr/bin/tollgate reload -c /etc/tollgate/tollgate.yaml --pid $MAINPID",
        "ExecStartPre=/usr/bin/tollgate -t -c",
        "ExecStart=/usr/bin/tollgate -c /etc/tollgate/tollgate.yaml\n",
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
    std::fs::write(&path, unit.replace("/usr/bin/tollgate", support::bin())).unwrap();
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

/// The package's `/etc/tollgate/tollgate.yaml` (`debian/tollgate.yaml`, a conffile) passes
/// `tollgate -t`, serves on loopback only, trusts no proxy and holds no secret; the package
/// neither enables nor starts the unit.
#[test]
fn the_packaged_config_is_valid_and_safe_and_the_package_starts_nothing() {
    let yaml = include_str!("../debian/tollgate.yaml");
    let (code, out) = support::check_config(yaml);
    assert_eq!(code, 0, "{out}");
    let v: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
    for l in v["listen"].as_sequence().unwrap() {
        assert!(l.as_str().unwrap().starts_with("127.0.0.1:"), "{l:?}");
    }
    assert!(v["admin"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(v["trusted_proxies"].as_sequence().map(Vec::len), Some(0));
    assert!(v["upgrade_sock"]
        .as_str()
        .unwrap()
        .starts_with("/run/tollgate/"));
    for secret in ["secret", "api_keys", "token", "password"] {
        assert!(
            !yaml.contains(&format!("{secret}:")),
            "{secret} in the packaged config"
        );
    }

    let cargo = include_str!("../Cargo.toml");
    let deb = cargo
        .split("[package.metadata.deb]")
        .nth(1)
        .expect("Cargo.toml has [package.metadata.deb]");
    for needle in [
        r#"["target/release/tollgate", "usr/bin/", "755"]"#,
        r#"["debian/tollgate.yaml", "etc/tollgate/tollgate.yaml", "644"]"#,
        "enable = false, start = false",
    ] {
        assert!(
            deb.contains(needle),
            "[package.metadata.deb] lacks {needle}"
        );
    }
    let postinst = include_str!("../debian/postinst");
    assert!(postinst.contains("#DEBHELPER#"));
    for verb in ["enable", "start", "restart"] {
        assert!(
            !postinst
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .any(|l| l.contains(&format!("systemctl {verb}"))
                    || l.contains(&format!("deb-systemd-invoke {verb}"))),
            "postinst must not {verb} the service"
        );
    }
}
