//! What SRTP costs the relay per packet: a 20 ms G.711 packet (12-byte header, 160 bytes of
//! payload) unprotected from one leg and protected for the other, as `media::relay` does for a
//! call with SRTP on both legs, per suite. Prints a table; run with
//! `cargo bench -p csps --bench srtp`.

use std::time::Instant;

use csps::media::srtp::{MASTER_LEN, SrtpKeys, SrtpSession, Suite};

const PACKETS: u32 = 200_000;

fn main() {
    println!("| suite | step | ns/packet | packets |");
    println!("|---|---|---|---|");
    for suite in Suite::ALL {
        let keys = |local: u8, remote: u8| SrtpKeys {
            suite,
            local: [local; MASTER_LEN],
            remote: [remote; MASTER_LEN],
            remote_mki: 0,
        };
        // The phone (sender), and the gateway side that receives from it.
        let mut phone = SrtpSession::new(&keys(1, 2)).expect("phone");
        let mut gw_in = SrtpSession::new(&keys(2, 1)).expect("gateway");
        // The gateway side facing the other leg.
        let mut gw_out = SrtpSession::new(&keys(3, 4)).expect("gateway");
        let mut packet = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78];
        packet.extend_from_slice(&[0xd5; 160]);
        let wire: Vec<_> = (0..PACKETS)
            .map(|i| {
                packet[2..4].copy_from_slice(&(i as u16).to_be_bytes());
                packet[4..8].copy_from_slice(&(i * 160).to_be_bytes());
                phone.protect(&packet, false).expect("protect").to_vec()
            })
            .collect();
        let t = Instant::now();
        let plain: Vec<_> = wire
            .iter()
            .map(|p| gw_in.unprotect(p, false).expect("unprotect"))
            .collect();
        let unprotect = t.elapsed();
        let t = Instant::now();
        let mut bytes = 0usize;
        for p in &plain {
            bytes += gw_out.protect(p, false).expect("protect").len();
        }
        let protect = t.elapsed();
        assert!(bytes > 0);
        let ns = |d: std::time::Duration| d.as_nanos() as f64 / f64::from(PACKETS);
        println!(
            "| {} | unprotect (from a leg) | {:.0} | {PACKETS} |",
            suite.name(),
            ns(unprotect)
        );
        println!(
            "| {} | protect (to a leg) | {:.0} | {PACKETS} |",
            suite.name(),
            ns(protect)
        );
    }
}
