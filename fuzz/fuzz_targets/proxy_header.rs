//! PROXY protocol header codec (proto/proxy_header.rs): parse arbitrary bytes
//! as a listener with `proxy_protocol` does before anything else. A complete
//! header consumes no more than the input and the size limits; every strict
//! prefix of it asks for more (a header split over TCP segments must parse);
//! a buffer at the size limit is never "need more"; reasons are printable.
//! The first bytes also seed addresses for the builders, whose output must
//! parse back to the same addresses.
#![no_main]
use kumoproxy::proto::proxy_header::{
    build_v1, build_v2, build_v2_local, parse, Command, Parse, Version, MAX_LEN, V1_MAX_LEN,
};
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

fn addr(b: &[u8]) -> SocketAddr {
    let mut x = [0u8; 19];
    let n = b.len().min(19);
    x[..n].copy_from_slice(&b[..n]);
    let port = u16::from_be_bytes([x[17], x[18]]);
    let ip = if x[0] & 1 == 0 {
        IpAddr::V4(Ipv4Addr::new(x[1], x[2], x[3], x[4]))
    } else {
        let mut o = [0u8; 16];
        o.copy_from_slice(&x[1..17]);
        IpAddr::V6(Ipv6Addr::from(o)).to_canonical()
    };
    SocketAddr::new(ip, port)
}

fn builders(data: &[u8]) {
    let (a, b) = data.split_at(data.len().min(19));
    let (src, dst) = (addr(a), addr(b));
    let same_family = src.is_ipv4() == dst.is_ipv4();
    let v1 = build_v1(src, dst);
    match parse(&v1) {
        Parse::Complete { header, consumed } => {
            assert_eq!(consumed, v1.len());
            assert_eq!(header.version, Version::V1);
            let want = if same_family { Some((src, dst)) } else { None };
            assert_eq!(header.addresses, want);
        }
        other => panic!("v1 {src} {dst}: {other:?}"),
    }
    let tlv = &data[data.len().min(38)..];
    let tlv = &tlv[..tlv.len().min(255)];
    let v2 = build_v2(src, dst, &[(0x02, tlv)]).unwrap();
    match parse(&v2) {
        Parse::Complete { header, consumed } => {
            assert_eq!(consumed, v2.len());
            assert_eq!((header.command, header.addresses), (Command::Proxy, Some((src, dst))));
        }
        other => panic!("v2 {src} {dst}: {other:?}"),
    }
    assert!(matches!(parse(&build_v2_local()), Parse::Complete { consumed: 16, .. }));
}

fuzz_target!(|data: &[u8]| {
    builders(data);
    match parse(data) {
        Parse::Complete { header, consumed } => {
            assert!(consumed <= data.len() && consumed <= MAX_LEN);
            if header.version == Version::V1 {
                assert!(consumed <= V1_MAX_LEN);
            }
            for k in [consumed - 1, consumed / 2, 1] {
                if k < consumed {
                    assert_eq!(parse(&data[..k]), Parse::NeedMore, "prefix {k} of {consumed}");
                }
            }
            for (k, _) in header.tlvs.iter() {
                assert!(k.bytes().all(|c| c.is_ascii_graphic()), "{k:?}");
            }
        }
        Parse::NeedMore => assert!(data.len() < MAX_LEN),
        Parse::Invalid(why) => {
            let r = why.reason();
            assert!(!r.is_empty() && r.chars().all(|c| c.is_ascii() && !c.is_control()), "{r:?}");
        }
    }
});
