//! The encrypted-object reader (age) fed arbitrary bytes, and real age files cut, extended and
//! flipped where the input says: never a panic; an altered file never decrypts to anything but
//! an error (or, when the change was a no-op, the original plaintext).
#![no_main]

use agefile::{decrypt, encrypt, parse_header, Identity, Layout};
use libfuzzer_sys::fuzz_target;

fn identity() -> Identity {
    // one key per run: the fuzzer reaches past the header only through files made with it
    static ID: std::sync::OnceLock<Identity> = std::sync::OnceLock::new();
    ID.get_or_init(|| Identity::generate().expect("an identity")).clone()
}

fuzz_target!(|data: &[u8]| {
    let id = identity();
    let ids = [id.clone()];
    // raw bytes as a stored object
    let _ = parse_header(data);
    let _ = Layout::open(data, data.len() as u64, &ids, "k");
    let _ = decrypt(data, &ids, "k");
    // a real file, then the input's edits
    if data.len() < 4 {
        return;
    }
    let n = u16::from_le_bytes([data[0], data[1]]) as usize * 8;
    let plain: Vec<u8> = (0..n).map(|i| (i % 251) as u8 ^ data[2]).collect();
    let Ok(ct) = encrypt(&[id.recipient()], "k", &plain) else {
        return;
    };
    assert_eq!(decrypt(&ct, &ids, "k").as_deref().ok(), Some(&plain[..]));
    let mut edited = ct.clone();
    for e in data[3..].chunks(4) {
        if e.len() < 4 || edited.is_empty() {
            break;
        }
        let at = u16::from_le_bytes([e[1], e[2]]) as usize % edited.len();
        match e[0] % 3 {
            0 => edited[at] ^= e[3] | 1,
            1 => edited.truncate(at),
            _ => {
                let from = at.min(edited.len());
                let piece = edited[from..].to_vec();
                edited.extend_from_slice(&piece[..piece.len().min(70_000)]);
            }
        }
    }
    match decrypt(&edited, &ids, "k") {
        Ok(p) => assert!(edited == ct && p == plain, "an altered file decrypted"),
        Err(_) => {}
    }
});
