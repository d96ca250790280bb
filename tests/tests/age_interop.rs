//! Our age files against the reference implementation (Debian's `age`, installed by
//! scripts/install-tools): every object we write decrypts with `age -d -i KEY`, our keys are
//! its keys, and what `age` writes without our object binding is refused by our reader.

use std::process::Command;

use pgrepl_testbed::temp_dir;
use pgrepo::age::{decrypt, encrypt, AgeError, Identity, CHUNK};

fn age_bin() -> &'static str {
    for p in ["/usr/bin/age", "/usr/local/bin/age"] {
        if std::path::Path::new(p).exists() {
            return p;
        }
    }
    panic!("the age tool is not installed: run scripts/install-tools (Debian package \"age\")");
}

#[test]
fn age_decrypts_what_we_write_and_we_read_its_keys() {
    let dir = temp_dir("age");
    let id = Identity::generate().unwrap();
    let key_file = dir.join("key.txt");
    std::fs::write(
        &key_file,
        format!("# test key\n{}\n", id.to_secret_string()),
    )
    .unwrap();
    for n in [0usize, 5, CHUNK, CHUNK + 1, 5 * CHUNK + 123] {
        let plain: Vec<u8> = (0..n).map(|i| (i * 7 % 253) as u8).collect();
        let ct = encrypt(&[id.recipient()], "backups/x/pack-00000", &plain).unwrap();
        let f = dir.join(format!("obj{n}"));
        std::fs::write(&f, &ct).unwrap();
        let out = Command::new(age_bin())
            .args(["-d", "-i"])
            .arg(&key_file)
            .arg(&f)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "age -d: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout == plain, "age -d gave other bytes for {n}");
    }
    // a key made by age-keygen is ours too, and its recipient the same
    let kg = dir.join("kg.txt");
    let st = Command::new("/usr/bin/age-keygen")
        .arg("-o")
        .arg(&kg)
        .output()
        .unwrap();
    assert!(st.status.success());
    let text = std::fs::read_to_string(&kg).unwrap();
    let ids = Identity::parse_file(&text).unwrap();
    let public = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap();
    assert_eq!(ids[0].recipient().to_string(), public);
    // what age writes to it: we see the key opens it, and refuse it for lacking our binding
    let plain = b"written by age".to_vec();
    let src = dir.join("plain");
    std::fs::write(&src, &plain).unwrap();
    let enc = dir.join("enc");
    let st = Command::new(age_bin())
        .args(["-r", public, "-o"])
        .arg(&enc)
        .arg(&src)
        .output()
        .unwrap();
    assert!(st.status.success());
    let ct = std::fs::read(&enc).unwrap();
    assert_eq!(decrypt(&ct, &ids, "anything"), Err(AgeError::Unbound));
    let _ = std::fs::remove_dir_all(&dir);
}
