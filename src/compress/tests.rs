use super::*;

fn headers(ae: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in ae {
        h.append(ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
    }
    h
}

#[test]
fn q_values() {
    assert_eq!(accepted(&headers(&[])), (0, 0));
    assert_eq!(accepted(&headers(&["gzip"])), (1000, 0));
    assert_eq!(accepted(&headers(&["gzip;q=0, br"])), (0, 1000));
    assert_eq!(
        accepted(&headers(&["GZIP; Q=0.5", "br;q=0.25"])),
        (500, 250)
    );
    assert_eq!(accepted(&headers(&["*;q=0.1, br;q=0"])), (100, 0));
    assert_eq!(accepted(&headers(&["gzip;q=2"])), (0, 0), "malformed q");
    assert_eq!(accepted(&headers(&["identity"])), (0, 0));
    assert_eq!(qvalue("1.000"), Some(1000));
    assert_eq!(qvalue("0.001"), Some(1));
    assert_eq!(qvalue("1.5"), None);
    assert_eq!(qvalue("0.1234"), None);
}

fn both() -> Compression {
    let mut errs = ConfigErrors::default();
    compile(
        "c",
        CompressionFile {
            enabled: true,
            ..Default::default()
        },
        &mut errs,
    )
    .unwrap()
}

#[test]
fn preference() {
    let c = both();
    assert_eq!(c.choose(&headers(&["gzip, br"])), Some(Coding::Brotli(4)));
    assert_eq!(
        c.choose(&headers(&["gzip, br;q=0.5"])),
        Some(Coding::Gzip(6))
    );
    assert_eq!(c.choose(&headers(&["deflate"])), None);
    let gzip_only = Compression {
        brotli: None,
        ..both()
    };
    assert_eq!(
        gzip_only.choose(&headers(&["br, gzip;q=0.1"])),
        Some(Coding::Gzip(6))
    );
}

fn resp(status: u16, ct: &str, len: Option<usize>) -> ResponseHeader {
    let mut r = ResponseHeader::build(status, None).unwrap();
    r.insert_header("content-type", ct).unwrap();
    if let Some(l) = len {
        r.insert_header("content-length", l).unwrap();
    }
    r
}

fn get(ae: &str) -> RequestHeader {
    let mut r = RequestHeader::build("GET", b"/", None).unwrap();
    r.insert_header("accept-encoding", ae).unwrap();
    r
}

#[test]
fn eligibility() {
    let c = both();
    let req = get("gzip");
    assert!(c.eligible(
        &req,
        &resp(200, "application/json; charset=utf-8", Some(1000))
    ));
    assert!(c.eligible(&req, &resp(404, "text/html", None)));
    assert!(!c.eligible(&req, &resp(200, "image/png", Some(1000))));
    assert!(!c.eligible(&req, &resp(200, "text/event-stream", None)));
    assert!(!c.eligible(&req, &resp(200, "text/plain", Some(255))));
    for status in [101, 204, 206, 304] {
        assert!(!c.eligible(&req, &resp(status, "text/plain", Some(1000))));
    }
    let mut r = resp(200, "text/plain", Some(1000));
    r.insert_header("cache-control", "public, No-Transform")
        .unwrap();
    assert!(!c.eligible(&req, &r));
    let mut r = resp(200, "text/plain", Some(1000));
    r.insert_header("content-encoding", "gzip").unwrap();
    assert!(!c.eligible(&req, &r));
    let head = RequestHeader::build("HEAD", b"/", None).unwrap();
    assert!(!c.eligible(&head, &resp(200, "text/plain", Some(1000))));
}

#[test]
fn head_rewrite_and_vary() {
    let c = both();
    let mut r = resp(200, "text/plain", Some(1000));
    r.insert_header("etag", "\"abc\"").unwrap();
    r.insert_header("vary", "Origin").unwrap();
    assert!(c.start(&get("gzip"), &mut r).unwrap().is_some());
    assert_eq!(r.headers["content-encoding"], "gzip");
    assert_eq!(r.headers["etag"], "W/\"abc\"");
    assert_eq!(r.headers["vary"], "Origin, Accept-Encoding");
    assert!(r.headers.get("content-length").is_none());

    let mut r = resp(200, "text/plain", Some(1000));
    assert!(c.start(&get("gzip;q=0"), &mut r).unwrap().is_none());
    assert_eq!(r.headers["vary"], "Accept-Encoding");
    assert_eq!(r.headers["content-length"], "1000");
}

#[test]
fn encoders_round_trip() {
    use std::io::Read;
    let body: Vec<u8> = (0..20_000u32)
        .flat_map(|i| format!("{{\"n\":{i}}},").into_bytes())
        .collect();
    for coding in [Coding::Gzip(6), Coding::Brotli(4)] {
        let mut enc = Encoder::new(coding);
        let mut out = Vec::new();
        for chunk in body.chunks(7000) {
            out.extend_from_slice(&enc.encode(chunk, false).unwrap());
        }
        out.extend_from_slice(&enc.encode(&[], true).unwrap());
        let mut back = Vec::new();
        match coding {
            Coding::Gzip(_) => flate2::read::GzDecoder::new(&out[..])
                .read_to_end(&mut back)
                .unwrap(),
            Coding::Brotli(_) => brotli::Decompressor::new(&out[..], 4096)
                .read_to_end(&mut back)
                .unwrap(),
        };
        assert_eq!(back, body, "{coding:?}");
        assert!(out.len() < body.len() / 4, "{coding:?}: {}", out.len());
    }
}

#[test]
fn config_errors_name_the_key() {
    let mut errs = ConfigErrors::default();
    let f = CompressionFile {
        enabled: true,
        gzip: Some(10),
        brotli: Some(0),
        min_size: None,
        types: Some(vec!["json".into(), "text/*".into(), "*/*".into()]),
    };
    assert!(compile("routes[0].compression", f, &mut errs).is_none());
    let paths: Vec<_> = errs.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "routes[0].compression.gzip",
            "routes[0].compression.brotli",
            "routes[0].compression.types[0]",
            "routes[0].compression.types[2]",
        ]
    );
}
