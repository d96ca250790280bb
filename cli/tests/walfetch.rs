//! `pgrepl wal-fetch` as restore_command sees it.

use std::process::Command;

use pgrepl_testbed::temp_dir;
use pgwal::writer::{RecordSpec, WalWriter};
use pgwal::{segment_file_name, Lsn, SegmentNo, TimelineId, WalSegSize, WalVersion};

fn fetch(archive: &std::path::Path, name: &str, dest: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pgrepl"))
        .arg("wal-fetch")
        .arg(archive)
        .arg(name)
        .arg(dest)
        .output()
        .unwrap()
}

fn segment(seg: WalSegSize, n: u64) -> Vec<u8> {
    let mut w = WalWriter::new(
        Lsn(n * seg.bytes()),
        seg,
        TimelineId(1),
        99,
        WalVersion::V18,
    );
    for _ in 0..20 {
        w.append(&RecordSpec {
            rmid: 10,
            main_data: vec![n as u8; 30_000],
            ..Default::default()
        });
    }
    let (_, mut bytes) = w.finish();
    bytes.resize(seg.bytes() as usize, 0);
    bytes
}

#[test]
fn serves_plain_compressed_partial_and_history_files() {
    let seg = WalSegSize::new(1 << 20).unwrap();
    let dir = temp_dir("wf");
    let archive = dir.join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let name = |n: u64| segment_file_name(TimelineId(1), SegmentNo(n), seg);
    let (s1, s2, s3) = (segment(seg, 1), segment(seg, 2), segment(seg, 3));
    std::fs::write(archive.join(name(1)), &s1).unwrap();
    std::fs::write(
        archive.join(format!("{}.zst", name(2))),
        zstd::encode_all(&s2[..], 3).unwrap(),
    )
    .unwrap();
    std::fs::write(archive.join(format!("{}.partial", name(3))), &s3[..100_000]).unwrap();
    std::fs::write(
        archive.join("00000002.history"),
        b"1\t0/300000\tno recovery target specified\n",
    )
    .unwrap();

    let dest = dir.join("RECOVERYXLOG");
    for (n, want) in [(1, &s1), (2, &s2)] {
        let out = fetch(&archive, &name(n), &dest);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(std::fs::read(&dest).unwrap() == *want, "segment {n}");
    }
    // the newest segment only exists as .partial: served padded to a full segment
    let out = fetch(&archive, &name(3), &dest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = std::fs::read(&dest).unwrap();
    assert_eq!(got.len(), 1 << 20);
    assert!(got[..100_000] == s3[..100_000] && got[100_000..].iter().all(|&b| b == 0));
    // history files
    let out = fetch(&archive, "00000002.history", &dest);
    assert!(out.status.success());
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        b"1\t0/300000\tno recovery target specified\n"
    );

    // missing: exit 1, nothing written
    let missing = dir.join("MISSING");
    let out = fetch(&archive, &name(4), &missing);
    assert_eq!(out.status.code(), Some(1));
    assert!(!missing.exists());
    let out = fetch(&archive, "00000003.history", &missing);
    assert_eq!(out.status.code(), Some(1));

    // a damaged compressed segment is an error that names the file
    std::fs::write(archive.join(format!("{}.zst", name(5))), b"garbage").unwrap();
    let out = fetch(&archive, &name(5), &missing);
    // not "missing" (1): recovery must stop rather than end early
    assert_eq!(out.status.code(), Some(126));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&name(5)) && err.starts_with("pgrepl: error:"),
        "{err}"
    );
    assert!(!missing.exists());
    // names with a path are refused
    let out = fetch(&archive, "../etc/passwd", &missing);
    assert_ne!(out.status.code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}
