//! `tollgate explain` tells, without sending anything, what the gateway would do.

mod support;

fn explain(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(support::bin())
        .args([
            "explain",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/conf/tollgate.yaml"),
        ])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn explains_the_matching_route_the_others_and_the_forwarded_target() {
    let (code, out) = explain(&["GET", "http://example.com/private/./v1//items?x=1"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("normalised to /private/v1/items"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("private") && l.ends_with("MATCH")),
        "{out}"
    );
    assert!(
        out.lines().any(
            |l| l.trim_start().starts_with("public") && l.contains("path is not under /public")
        ),
        "{out}"
    );
    assert!(out.contains("forward:  GET /v1/items?x=1"), "{out}");
    assert!(out.contains("backends: 127.0.0.1:8082"), "{out}");
}

#[test]
fn explains_405_404_and_400() {
    let (_, out) = explain(&["POST", "/public/x"]);
    assert!(
        out.contains("answer:   405 method_not_allowed (Allow: GET, HEAD)"),
        "{out}"
    );
    assert!(out.contains("method POST not in [GET, HEAD]"), "{out}");
    let (_, out) = explain(&["GET", "/elsewhere"]);
    assert!(out.contains("answer:   404 no_route"), "{out}");
    let (_, out) = explain(&["GET", "/public/%2fetc"]);
    assert!(out.contains("answer:   400 bad_request"), "{out}");
}
