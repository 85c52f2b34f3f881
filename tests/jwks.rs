//! Remote JWKS against a real HTTPS identity provider of the tests (`support::idp`): its own
//! CA, keys it rotates, an outage on demand, and a count of the fetches it answers. Tokens are
//! signed RS256 by the openssl command line, not by the `jsonwebtoken` crate tollgate
//! verifies with.

mod support;
use support::*;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::idp::{admitted, bearer, ca_and_leaf, jwks, Idp, Key};

/// A gateway config: provider `p` with this `jwks` (flow mapping body), route `/t`.
fn body(jwks: &str, state_dir: &Path) -> String {
    let up = echo("up");
    format!(
        "state_dir: \"{}\"\n\
         upstreams: {{u: {{targets: [\"{up}\"]}}}}\n\
         auth: {{p: {{type: jwt, algorithms: [RS256], jwks: {{{jwks}}}, \
                 forward_claims: {{sub: X-User-ID}}}}}}\n\
         routes: [{{name: t, path_prefix: /t, upstream: u, auth: [p]}}]\n",
        state_dir.display()
    )
}

fn remote(idp: &Idp, more: &str) -> String {
    format!(
        "url: \"{}\", ca: \"{}\"{more}",
        idp.jwks_url(),
        idp.ca.display()
    )
}

const WAIT: Duration = Duration::from_secs(15);

#[test]
fn a_key_added_at_the_idp_is_used_after_a_refresh_and_one_removed_is_refused() {
    let (a, b) = (Key::new("a"), Key::new("b"));
    let idp = Idp::start(&[&a]);
    let state = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&body(
        &remote(&idp, ", refresh: 1s, min_refresh: 1s"),
        state.path(),
    ));
    let token_a = a.token("alice");
    assert!(admitted(&gw, &token_a, "alice"), "{}", gw.logs());
    assert_401(&bearer(&gw, &b.token("bob")), "unknown key");

    idp.serve(&[&a, &b]);
    assert!(
        eventually(WAIT, || admitted(&gw, &b.token("bob"), "bob")),
        "{}",
        gw.logs()
    );
    assert!(
        admitted(&gw, &token_a, "alice"),
        "both keys while both are published"
    );

    // `a` is retired: even the token already verified (and remembered) with it is refused.
    idp.serve(&[&b]);
    assert!(eventually(WAIT, || bearer(&gw, &token_a).status == 401));
    assert_401(&bearer(&gw, &token_a), "unknown key");
    assert!(admitted(&gw, &b.token("bob"), "bob"));
}

#[test]
fn an_unknown_kid_fetches_the_set_at_once_without_waiting_for_the_refresh() {
    let (a, b) = (Key::new("a"), Key::new("b"));
    let idp = Idp::start(&[&a]);
    let state = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&body(
        &remote(&idp, ", refresh: 24h, min_refresh: 1s"),
        state.path(),
    ));
    assert_eq!(idp.calls("/jwks"), 1, "fetched once at start");
    idp.serve(&[&a, &b]);
    // Refused while the fetch it wakes runs; admitted once the new set is in.
    assert_401(&bearer(&gw, &b.token("bob")), "unknown key");
    assert!(
        eventually(WAIT, || admitted(&gw, &b.token("bob"), "bob")),
        "{}",
        gw.logs()
    );
    assert!(idp.calls("/jwks") >= 2);
}

#[test]
fn a_flood_of_made_up_kids_cannot_hammer_the_idp() {
    let (a, b) = (Key::new("a"), Key::new("b"));
    let idp = Idp::start(&[&a]);
    let state = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&body(
        &remote(&idp, ", refresh: 24h, min_refresh: 1h"),
        state.path(),
    ));
    assert_eq!(idp.calls("/jwks"), 1);
    idp.serve(&[&a, &b]);
    std::thread::scope(|s| {
        for t in 0..4 {
            let (gw, a) = (&gw, &a);
            s.spawn(move || {
                for i in 0..50 {
                    let r = bearer(gw, &a.token_as(&format!("made-up-{t}-{i}"), "x"));
                    assert_eq!(r.status, 401);
                }
            });
        }
    });
    // Within min_refresh of the last fetch, not even a real new kid fetches again.
    assert_401(&bearer(&gw, &b.token("bob")), "unknown key");
    assert!(admitted(&gw, &a.token("alice"), "alice"));
    assert_eq!(
        idp.calls("/jwks"),
        1,
        "the identity provider was asked again"
    );
    let m = gw.admin_get("/metrics").body;
    assert!(
        m.lines()
            .any(|l| l.contains("reason=\"unknown_kid\"") && l.ends_with(" 201")),
        "{m}"
    );
}

#[test]
fn the_last_good_keys_keep_working_while_the_idp_is_down() {
    let a = Key::new("a");
    let idp = Idp::start(&[&a]);
    let state = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&body(
        &remote(&idp, ", refresh: 1s, min_refresh: 1s"),
        state.path(),
    ));
    assert!(admitted(&gw, &a.token("alice"), "alice"));
    idp.down();
    let before = idp.calls("/jwks");
    assert!(eventually(WAIT, || idp.calls("/jwks") >= before + 2));
    // A token never seen before: verified with the keys held, not remembered from earlier.
    assert!(admitted(&gw, &a.token("carol"), "carol"), "{}", gw.logs());
    assert!(gw.logs().contains("keeping the 1 held"), "{}", gw.logs());
}

#[test]
fn a_restart_while_the_idp_is_down_uses_the_set_kept_in_the_state_dir() {
    let a = Key::new("a");
    let idp = Idp::start(&[&a]);
    let state = tempfile::tempdir().unwrap();
    let conf = body(&remote(&idp, ""), state.path());
    drop(Gateway::start(&conf));
    let kept: Vec<_> = std::fs::read_dir(state.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        std::fs::read_to_string(&kept[0]).unwrap(),
        jwks(&[&a]),
        "the set as served"
    );

    idp.down();
    let gw = Gateway::start(&conf);
    assert!(admitted(&gw, &a.token("alice"), "alice"), "{}", gw.logs());
    assert!(
        gw.logs().contains("using the set cached in"),
        "{}",
        gw.logs()
    );

    // `tollgate explain` is offline: it reads the same copy, and says so.
    let out = Command::new(bin())
        .args(["explain", "-c"])
        .arg(gw.conf_path())
        .args(["GET", "http://gw/t/x", "-H"])
        .arg(format!("Authorization: Bearer {}", a.token("alice")))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "keys from {}, as cached in {}",
            idp.jwks_url(),
            kept[0].display()
        )),
        "{text}"
    );
    assert!(text.contains("kid a"), "{text}");

    // With neither the identity provider nor a kept set, the start fails and says why.
    let empty = tempfile::tempdir().unwrap();
    let err = start_fails(&body(&remote(&idp, ""), empty.path()));
    assert!(
        err.contains(&format!(
            "auth.p.jwks: cannot fetch the keys from {}: answered 503",
            idp.jwks_url()
        )) && err.contains("no cached set"),
        "{err}"
    );
}

#[test]
fn an_idp_certificate_from_another_ca_is_refused() {
    let a = Key::new("a");
    let idp = Idp::start(&[&a]);
    let (other, _) = ca_and_leaf(idp.dir.path(), "other");
    let state = tempfile::tempdir().unwrap();
    let err = start_fails(&body(
        &format!("url: \"{}\", ca: \"{}\"", idp.jwks_url(), other.display()),
        state.path(),
    ));
    assert!(
        err.contains("auth.p.jwks: cannot fetch the keys from") && err.contains("certificate"),
        "{err}"
    );
    // Nor do the system roots know the test CA.
    let err = start_fails(&body(&format!("url: \"{}\"", idp.jwks_url()), state.path()));
    assert!(err.contains("certificate"), "{err}");
    assert_eq!(std::fs::read_dir(state.path()).unwrap().count(), 0);
}

#[test]
fn on_unavailable_deny_serves_401_until_the_keys_arrive() {
    let a = Key::new("a");
    let idp = Idp::start(&[&a]);
    idp.down();
    let state = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&body(
        &remote(&idp, ", refresh: 1s, min_refresh: 1s, on_unavailable: deny"),
        state.path(),
    ));
    assert_401(
        &bearer(&gw, &a.token("alice")),
        "keys are not available yet",
    );
    assert!(gw.logs().contains("on_unavailable: deny"), "{}", gw.logs());
    idp.serve(&[&a]);
    assert!(
        eventually(WAIT, || admitted(&gw, &a.token("alice"), "alice")),
        "{}",
        gw.logs()
    );
}

#[test]
fn check_config_reads_files_but_never_the_network_and_names_each_bad_key() {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path();
    // Nothing listens on port 1: `-t` passes because it does not try.
    let (code, out) = check_config(&body("url: \"https://localhost:1/jwks\"", dir));
    assert_eq!(code, 0, "{out}");

    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    for (jwks, path, says) in [
        (
            "url: \"http://idp/jwks\"",
            "auth.p.jwks.url",
            "must be an https:// URL",
        ),
        (
            "url: \"https://idp/k\", refresh: 0s",
            "auth.p.jwks.refresh",
            "between 1s and 24h",
        ),
        (
            "url: \"https://idp/k\", refresh: 2d",
            "auth.p.jwks.refresh",
            "between 1s and 24h",
        ),
        (
            "url: \"https://idp/k\", refresh: 1m, min_refresh: 5m",
            "auth.p.jwks.min_refresh",
            "must not be longer than refresh (1m)",
        ),
        (
            "url: \"https://idp/k\", ca: /nonexistent.pem",
            "auth.p.jwks.ca",
            "cannot read",
        ),
        (
            &format!("url: \"https://idp/k\", ca: \"{}\"", not_pem.display()),
            "auth.p.jwks.ca",
            "holds no PEM certificate",
        ),
        (
            "url: \"https://idp/k\", on_unavailable: maybe",
            "auth.p.jwks.on_unavailable",
            "unknown variant",
        ),
        (
            "url: \"https://idp/k\", refesh: 1m",
            "auth.p.jwks.refesh",
            "unknown field `refesh`",
        ),
    ] {
        let (code, out) = check_config(&body(jwks, dir));
        assert_eq!(code, 1, "{jwks}: {out}");
        assert!(
            out.contains(&format!("{path}: ")) && out.contains(says),
            "{jwks}: {out}"
        );
        assert!(
            out.contains("invalid config: 1 error\n"),
            "one error, at its key: {out}"
        );
    }
    let (code, out) = check_config(
        &body("url: \"https://idp/k\"", dir).replace("algorithms: [RS256]", "algorithms: [HS256]"),
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("auth.p.algorithms: a remote JWKS publishes public keys"),
        "{out}"
    );
    let (code, out) = check_config(&body("url: \"https://idp/k\"", dir).replace(
        &format!("state_dir: \"{}\"", dir.display()),
        "state_dir: \"\"",
    ));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("state_dir: must not be empty"), "{out}");
}

#[test]
fn the_new_process_of_an_upgrade_fetches_the_keys_before_it_serves() {
    let (a, b) = (Key::new("a"), Key::new("b"));
    let idp = Idp::start(&[&a]);
    let state = tempfile::tempdir().unwrap();
    let conf = body(
        &remote(&idp, ", refresh: 24h, min_refresh: 1h"),
        state.path(),
    );
    let gw = Gateway::start(&conf);
    assert_eq!(idp.calls("/jwks"), 1);
    // Rotated at the identity provider: the running process will not ask again for an hour.
    idp.serve(&[&b]);
    let mut next = gw.upgrade(&conf);
    assert!(eventually(WAIT, || idp.calls("/jwks") == 2));
    // Once the old process has drained, every answer is the new one's, with the new set.
    assert!(
        eventually(WAIT, || admitted(&gw, &b.token("bob"), "bob")
            && bearer(&gw, &a.token("alice")).status == 401),
        "{}",
        gw.logs()
    );
    let _ = next.kill();
}
