//! Property tests of the pieces that read hostile input before anything else: the path
//! normaliser, the router, the framing guard and the config loader never panic, and the
//! normaliser's output is stable and unambiguous. (The cargo-fuzz targets the hardening issue
//! asks for need a nightly toolchain this project's machines do not have; these run in CI.)

use proptest::prelude::*;
use tollgate::path::normalise;

/// Paths built from the characters that matter for traversal and encoding tricks.
fn tricky_path() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        Just("/".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("%2e".to_owned()),
        Just("%2E".to_owned()),
        Just("%2f".to_owned()),
        Just("%5c".to_owned()),
        Just("%25".to_owned()),
        Just("%7e".to_owned()),
        Just("%41".to_owned()),
        Just("%".to_owned()),
        Just(";".to_owned()),
        Just("a".to_owned()),
        Just("private".to_owned()),
        "[a-z0-9._~-]{1,4}".prop_map(|s| s),
    ];
    prop::collection::vec(atom, 0..12).prop_map(|v| format!("/{}", v.concat()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn normalise_is_idempotent_and_unambiguous(p in tricky_path()) {
        if let Ok(n) = normalise(&p) {
            let n = n.into_owned();
            prop_assert!(n.starts_with('/'));
            prop_assert!(!n.contains("//"), "{n}");
            prop_assert!(!n.split('/').any(|s| s == "." || s == ".."), "{n}");
            let lower = n.to_ascii_lowercase();
            for enc in ["%2e", "%2f", "%5c", "%00", "%7e", "%41"] {
                prop_assert!(!lower.contains(enc), "{n} still has {enc}");
            }
            let again = normalise(&n).expect("normal output is accepted");
            prop_assert_eq!(again.as_ref(), n.as_str());
        }
    }

    #[test]
    fn normalise_never_panics_on_any_string(p in "\\PC{0,64}") {
        let _ = normalise(&p);
    }

    #[test]
    fn router_never_panics(host in proptest::option::of("\\PC{0,40}"), p in tricky_path(), m in "[A-Z]{1,8}") {
        let gw = tollgate::config::load_str(
            "upstreams: {u: {targets: [\"127.0.0.1:1\"]}}\nroutes:\n  - {name: a, path_prefix: /a, upstream: u, methods: [GET]}\n  - {name: b, host: \"*.x.org\", path_prefix: /, upstream: u}\n",
        ).unwrap().gateway;
        let method = http::Method::from_bytes(m.as_bytes()).unwrap();
        let _ = gw.router.find(host.as_deref().map(str::as_bytes), &p, &method);
    }

    #[test]
    fn config_loader_never_panics(text in "\\PC{0,200}") {
        let _ = tollgate::config::load_str(&text);
    }

    #[test]
    fn config_loader_never_panics_on_plausible_yaml(
        key in prop::sample::select(vec!["routes", "upstreams", "listen", "limits", "access_log", "threads", "admin"]),
        val in prop::sample::select(vec!["[]", "{}", "1", "-1", "\"x\"", "[{name: a}]", "{a: {targets: [1]}}", "null", "[[[]]]"]),
    ) {
        let _ = tollgate::config::load_str(&format!("{key}: {val}\n"));
    }
}
