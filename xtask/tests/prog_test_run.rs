//! Skein's programs under `BPF_PROG_TEST_RUN`: frames built with etherparse go through
//! the real, verifier-accepted programs; verdicts, output frames and counters are checked.
//! Needs root (loading BPF programs); run by `cargo xtask test`.

use std::os::fd::AsFd;

use agent::dataplane::{self, test_run::test_run, Counters, PinDirs};
use aya::programs::{SchedClassifier, Xdp};
use dataplane_ebpf::{
    counters::{Counter, Verdict},
    names,
};
use etherparse::PacketBuilder;
use xtask::testbed::{Testbed, TestbedConfig};

const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;

/// Frames of every kind the underlay will see, plus garbage.
fn frames() -> Vec<(&'static str, Vec<u8>)> {
    let mac_a = [0x02, 0, 0, 0, 0, 0x0a];
    let mac_b = [0x02, 0, 0, 0, 0, 0x0b];
    let mut out = Vec::new();

    let inner = {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(mac_a, mac_b)
            .ipv4([10, 0, 1, 2], [10, 0, 1, 3], 64)
            .udp(5000, 53)
            .write(&mut frame, b"inner payload")
            .expect("inner frame");
        frame
    };
    // VXLAN (RFC 7348): flags 0x08, 24-bit VNI 4096, then the inner frame.
    let mut vxlan = vec![0x08, 0, 0, 0, 0x00, 0x10, 0x00, 0];
    vxlan.extend_from_slice(&inner);
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(mac_a, mac_b)
        .ipv4([192, 168, 0, 1], [192, 168, 0, 2], 64)
        .udp(49152, 4789)
        .write(&mut frame, &vxlan)
        .expect("vxlan frame");
    out.push(("vxlan", frame));

    let mut frame = Vec::new();
    PacketBuilder::ethernet2(mac_a, mac_b)
        .ipv4([192, 168, 0, 9], [192, 168, 0, 2], 64)
        .tcp(40000, 8080, 1, 65535)
        .syn()
        .write(&mut frame, &[])
        .expect("tcp frame");
    out.push(("tcp syn", frame));

    let mut frame = Vec::new();
    PacketBuilder::ethernet2(mac_a, mac_b)
        .ipv4([192, 168, 0, 9], [192, 168, 0, 2], 64)
        .udp(40000, 7946)
        .write(&mut frame, &[0xab; 1200])
        .expect("udp frame");
    out.push(("large udp", frame));

    // Ethernet header only, and an ARP-typed frame with a truncated body.
    let mut runt = [mac_b, mac_a].concat();
    runt.extend_from_slice(&[0x08, 0x00]);
    out.push(("ethernet header only", runt));
    let mut arp = [[0xff; 6], mac_a].concat();
    arp.extend_from_slice(&[0x08, 0x06, 0x00, 0x01]);
    out.push(("truncated arp", arp));

    // Deterministic garbage (xorshift), so a failure reproduces.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let garbage: Vec<u8> = (0..64)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    out.push(("random bytes", garbage));
    out
}

fn pass_counter(counters: &Counters, program: &str) -> Counter {
    counters
        .read()
        .into_iter()
        .find(|(p, v, _)| *p == program && *v == Verdict::PASS)
        .map(|(_, _, c)| c)
        .expect("pass counter exists")
}

#[test]
fn programs_pass_every_frame_unchanged_and_count_it() {
    let bed = Testbed::new(
        "progrun",
        TestbedConfig {
            hosts: 1,
            ..Default::default()
        },
    )
    .expect("testbed with one host (for its bpffs)");
    let pins = PinDirs::new(bed.host(0).bpf_dir());
    let mut ebpf = dataplane::load(&pins).expect("object loads and passes the verifier");
    let counters = Counters::open(&pins).expect("counters maps are pinned");
    let frames = frames();
    let total_bytes: u64 = frames.iter().map(|(_, f)| f.len() as u64).sum();

    let xdp: &mut Xdp = ebpf
        .program_mut(names::XDP_UNDERLAY)
        .expect("xdp program")
        .try_into()
        .expect("xdp type");
    let xdp_fd = xdp.fd().expect("loaded");
    for (what, frame) in &frames {
        let out = test_run(xdp_fd.as_fd(), frame, 1).expect("test run");
        assert_eq!(out.retval, XDP_PASS, "xdp_underlay verdict for {what}");
        assert_eq!(
            &out.data_out, frame,
            "xdp_underlay changed the {what} frame"
        );
    }
    let xdp_pass = pass_counter(&counters, names::XDP_UNDERLAY);
    assert_eq!(
        xdp_pass,
        Counter {
            packets: frames.len() as u64,
            bytes: total_bytes
        },
        "xdp_underlay pass counter"
    );

    let tc: &mut SchedClassifier = ebpf
        .program_mut(names::TC_ENDPOINT_INGRESS)
        .expect("tc program")
        .try_into()
        .expect("tc type");
    let tc_fd = tc.fd().expect("loaded");
    // The kernel's skb test runner refuses a bare Ethernet header (EINVAL); such a frame
    // never reaches tc on a real veth either.
    let skb_frames: Vec<_> = frames.iter().filter(|(_, f)| f.len() > 14).collect();
    let skb_bytes: u64 = skb_frames.iter().map(|(_, f)| f.len() as u64).sum();
    for (what, frame) in &skb_frames {
        let out =
            test_run(tc_fd.as_fd(), frame, 1).unwrap_or_else(|e| panic!("test run on {what}: {e}"));
        assert_eq!(
            out.retval, TC_ACT_OK,
            "tc_endpoint_ingress verdict for {what}"
        );
        assert_eq!(
            &out.data_out, frame,
            "tc_endpoint_ingress changed the {what} frame"
        );
    }
    let tc_pass = pass_counter(&counters, names::TC_ENDPOINT_INGRESS);
    assert_eq!(
        tc_pass.packets,
        skb_frames.len() as u64,
        "tc_endpoint_ingress pass packets"
    );
    assert_eq!(tc_pass.bytes, skb_bytes, "tc_endpoint_ingress pass bytes");

    // Every other verdict stayed at zero: nothing was dropped or redirected.
    for (program, verdict, counter) in counters.read() {
        if verdict != Verdict::PASS {
            assert_eq!(counter, Counter::default(), "{program} {}", verdict.name());
        }
    }

    // A second load adopts the pinned maps: the counts continue rather than reset.
    drop(ebpf);
    let mut again = dataplane::load(&pins).expect("second load adopts the pins");
    let xdp: &mut Xdp = again
        .program_mut(names::XDP_UNDERLAY)
        .expect("xdp program")
        .try_into()
        .expect("xdp type");
    test_run(xdp.fd().expect("loaded").as_fd(), &frames[0].1, 1).expect("test run");
    assert_eq!(
        pass_counter(&counters, names::XDP_UNDERLAY).packets,
        frames.len() as u64 + 1,
        "counters continue across loads"
    );
}
